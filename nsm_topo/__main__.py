"""`nsm-topo`: k8s-topo topology files for NSM v1.

nsm-topo random N EXTRA [--seed S] [--prefix P] [-o DIR] [--name NAME]
    a random network of N routers (spanning tree + EXTRA links) with FRR configurations
nsm-topo show FILE
    what the file wires: the NetworkService's matches and every device's sidecar environment

Bad input (arguments or files): one line naming what is wrong, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from nsm_topo.builder import DEFAULT_PREFIX, BuilderError, build, write
from nsm_topo.topology import TopologyError, load_topology
from nsm_topo.wiring import wire


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsm-topo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    random_ = commands.add_parser("random", help="write a random network of routers")
    random_.add_argument("routers", type=int, help="number of routers (2..768)")
    random_.add_argument("extra", type=int, help="links beyond the spanning tree")
    random_.add_argument("--seed", type=int, default=None, help="the same seed gives the same files")
    random_.add_argument(
        "--prefix", nargs="+", default=[DEFAULT_PREFIX], help="router name prefix(es), round-robin"
    )
    random_.add_argument("-o", "--output", type=Path, default=Path("."), help="directory (default: .)")
    random_.add_argument("--name", default="random", help="topology name and file stem (default: random)")
    show = commands.add_parser("show", help="print what a topology file wires")
    show.add_argument("file", type=Path)
    return parser


def _fail(message: str) -> None:
    print(f"nsm-topo: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "random":
            network = build(args.routers, args.extra, args.seed, tuple(args.prefix))
            path = write(network, args.output, args.name)
            print(
                f"{path}: {len(network.routers)} routers, {len(network.links)} links; "
                f"configurations in {args.output / ('config-' + args.name)}"
            )
            return
        wiring = wire(load_topology(args.file))
        shown = {
            "networkservice": wiring.network_service(),
            "devices": {
                device.name: {
                    "nse-sidecar": device.nse_env,
                    **({"nsc-sidecar": device.nsc_env} if device.nsc_env else {}),
                }
                for device in wiring.devices
            },
        }
        print(yaml.safe_dump(shown, sort_keys=False), end="")
    except (BuilderError, TopologyError) as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
