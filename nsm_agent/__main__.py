"""`nsm-agent`: a router's client and endpoint in one process, or (`--routers FILE`) many routers' agents.

Without arguments it is one router, configured from the environment like the two sidecars together
(`nsm_agent.router`). With `--routers FILE` it is an agent host (`nsm_agent.host`).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from nsm_agent.host import HostSettings, run_host
from nsm_agent.router import RouterSettings, run_router
from nsm_sdk.agent.lifecycle import agent_main, readiness
from nsm_sdk.transport.fdpass import open_netns_fd
from nsm_sdk.version import version_line


async def run(settings: RouterSettings, stop: asyncio.Event) -> None:
    netns_fd = open_netns_fd()
    try:
        with readiness(settings.readiness_file) as marker:
            await run_router(settings, netns_fd, stop, marker.set, delegated=False)
    finally:
        os.close(netns_fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nsm-agent",
        description="Both NSM agent roles of a router in one process: its client (the links it requests) "
        "and its endpoint (the service it serves). Configured from the environment like nsc-sidecar and "
        "nse-sidecar together, or, with --routers, the agents of many routers of a local lab.",
        epilog="environment: the variables of nsc-sidecar and nse-sidecar (`nsc-sidecar --help`, "
        "`nse-sidecar --help`); a role runs when its service variable is set. NSM_LABELS, which the two "
        "read differently, is refused: use ENDPOINT_LABELS, and labels in the link URLs. Example: "
        "ENDPOINT_NETWORK_SERVICE=p2p ENDPOINT_LABELS=device=r2 IP_ADDRESS=10.60.1.0/24 "
        "NS_NETWORKSERVICEMESH_IO='p2p/eth21?link=net-1&peerif=eth12' nsm-agent",
    )
    parser.add_argument("--version", action="version", version=version_line("nsm-agent"))
    parser.add_argument("--routers", metavar="FILE", help="JSON file of routers to host (nsm-topo writes it)")
    parser.add_argument("--status", metavar="FILE", help="with --routers: keep a JSON readiness summary here")
    args = parser.parse_args(argv)
    if args.routers is None:
        if args.status is not None:
            parser.error("--status needs --routers")
        agent_main("nsm-agent", RouterSettings.from_env, run)
    else:
        agent_main(
            "nsm-agent",
            lambda env: HostSettings.load(args.routers, args.status, env),
            run_host,
            backstop=lambda settings: settings.shutdown_backstop,
        )


if __name__ == "__main__":
    main()
