"""`nsm-local`: an embedded NSM control plane (registry, manager, kernel forwarder) for one host.

nsm-local serve [--listen URL]         run it (foreground; SIGTERM stops it, links stay for a restart)
nsm-local apply -f FILE                register the NetworkServices in a YAML file
nsm-local delete -f FILE               unregister them
nsm-local list                         show services, endpoints and connections

Secure by default: `serve` runs a development SPIFFE Workload API (its own CA) and speaks mTLS; the
other commands get their SVID from it. `--insecure` (or NSM_INSECURE=true) turns all of that off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from nsm_local import cli_client
from nsm_local.attestation import DEFAULT_SVID_TTL
from nsm_local.manifests import ManifestError, load_network_services
from nsm_local.server import DEFAULT_STATE_DIR, ServeSettings, serve_control_plane
from nsm_sdk.agent.lifecycle import run_agent
from nsm_sdk.agent.logs import setup_logging
from nsm_sdk.protocol.durations import parse_positive_duration
from nsm_sdk.protocol.envvalues import DEFAULT_SPIFFE_ENDPOINT, SecuritySettings, boolean
from nsm_sdk.protocol.errors import ConfigError, NsmError
from nsm_sdk.protocol.nsurl import parse_socket_url

DEFAULT_URL = "unix:///var/lib/networkservicemesh/nsm.io.sock"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsm-local", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the control plane")
    serve.add_argument(
        "--listen",
        default=os.environ.get("NSM_LISTEN_ON", DEFAULT_URL),
        help="unix:// URL to serve on (env NSM_LISTEN_ON; default %(default)s)",
    )
    serve.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"services, connection owners and the CA, 0700 (default {DEFAULT_STATE_DIR})",
    )
    serve.add_argument("--registration-expiry", default="60s", help="Go duration (default %(default)s)")
    serve.add_argument(
        "--workload-api",
        default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", str(DEFAULT_SPIFFE_ENDPOINT)),
        help="unix:// URL of the development SPIFFE Workload API to serve (env SPIFFE_ENDPOINT_SOCKET; "
        "default %(default)s, where the sidecars look by default)",
    )
    serve.add_argument(
        "--trust-domain", default="nsm.local", help="SPIFFE trust domain (default %(default)s)"
    )
    serve.add_argument(
        "--svid-ttl",
        default=f"{DEFAULT_SVID_TTL:.0f}s",
        help="lifetime of the X.509-SVIDs it issues, rotated at half (default %(default)s)",
    )
    serve.add_argument("--log-level", default=os.environ.get("NSM_LOG_LEVEL", "INFO"))
    for name in ("apply", "delete"):
        sub = commands.add_parser(name, help=f"{name} NetworkServices from a YAML file")
        sub.add_argument("-f", "--filename", required=True)
    commands.add_parser("list", help="show services, endpoints and connections")
    for sub in commands.choices.values():
        sub.add_argument(
            "--insecure",
            action="store_true",
            default=None,
            help="no mTLS, no SPIFFE: plaintext for quick experiments (env NSM_INSECURE=true)",
        )
        if sub.prog.endswith("serve"):
            continue
        sub.add_argument(
            "--connect-to",
            default=os.environ.get("NSM_CONNECT_TO", DEFAULT_URL),
            help="nsm-local's URL (env NSM_CONNECT_TO; default %(default)s)",
        )
    return parser


def _insecure(flag: bool | None) -> bool:
    return True if flag else boolean(os.environ, "NSM_INSECURE", default=False)


def _fail(message: str) -> None:
    print(f"nsm-local: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        insecure = _insecure(args.insecure)
        if args.command == "serve":
            url = parse_socket_url("--listen", args.listen, allow_tcp=False)
            settings = ServeSettings(
                socket_path=url.path,
                state_dir=args.state_dir,
                registration_expiry=parse_positive_duration(
                    "--registration-expiry", args.registration_expiry
                ),
                insecure=insecure,
                trust_domain=args.trust_domain,
                workload_api_path=parse_socket_url("--workload-api", args.workload_api, allow_tcp=False).path,
                svid_ttl=parse_positive_duration("--svid-ttl", args.svid_ttl),
            )
            setup_logging("nsm-local", args.log_level)
            asyncio.run(run_agent(lambda stop: serve_control_plane(settings, stop), backstop=10.0))
            return
        target = str(parse_socket_url("--connect-to", args.connect_to))
        security = SecuritySettings.from_env(os.environ)
        security = SecuritySettings(insecure=insecure, spiffe_endpoint=security.spiffe_endpoint)
        if args.command == "list":
            asyncio.run(cli_client.show(target, security))
            return
        path = Path(args.filename)
        try:
            text = sys.stdin.read() if args.filename == "-" else path.read_text()
        except OSError as exc:
            _fail(f"-f {args.filename}: cannot read: {exc.strerror}")
        services = load_network_services(text, args.filename)
        action = cli_client.apply if args.command == "apply" else cli_client.delete
        asyncio.run(action(target, services, security))
    except (ConfigError, ManifestError) as exc:
        _fail(str(exc))
    except NsmError as exc:  # runtime faults (an RPC, no SVID, a CA or a socket in the way): not bad input
        print(f"nsm-local: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
