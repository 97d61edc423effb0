"""`nsm-local`: an embedded NSM control plane (registry, manager, kernel forwarder) for one host.

nsm-local serve [--listen URL]         run it (foreground; SIGTERM stops it, links stay for a restart)
nsm-local serve --kubernetes           the same as the NSM of one Kubernetes node (NODE_NAME): pods get
                                       identities by pod, NetworkService objects are served
nsm-local apply -f FILE                register the NetworkServices in a YAML file
nsm-local delete -f FILE               unregister them
nsm-local list                         show services, endpoints and connections
nsm-local kube-manifest [-n NS]        the objects that run it in a cluster (YAML for kubectl apply -f -)

Secure by default: `serve` runs a development SPIFFE Workload API (its own CA) and speaks mTLS; the
other commands get their SVID from it. `--insecure` (or NSM_INSECURE=true) turns all of that off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from nsm_local import cli_client
from nsm_local.attestation import DEFAULT_SVID_TTL
from nsm_local.manifests import ManifestError, load_network_services
from nsm_local.server import DEFAULT_STATE_DIR, ServeSettings, serve_control_plane
from nsm_sdk.agent.lifecycle import run_agent
from nsm_sdk.agent.logs import setup_logging
from nsm_sdk.agent.metrics import LISTEN_VARIABLE, MetricsEndpoint, parse_listen_address
from nsm_sdk.protocol.durations import parse_positive_duration
from nsm_sdk.protocol.envvalues import DEFAULT_SPIFFE_ENDPOINT, SecuritySettings, boolean
from nsm_sdk.protocol.errors import ConfigError, NsmError
from nsm_sdk.protocol.nsurl import parse_socket_url
from nsm_sdk.version import version_line

if TYPE_CHECKING:
    from nsm_local.kube.node import KubeNode, KubeSettings

DEFAULT_URL = "unix:///var/lib/networkservicemesh/nsm.io.sock"
_DNS_LABEL = "lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsm-local", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line("nsm-local"))
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
    serve.add_argument(
        "--prometheus-listen-on",
        default=os.environ.get(LISTEN_VARIABLE, ""),
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (env {LISTEN_VARIABLE}; default: off)",
    )
    kube = serve.add_argument_group("Kubernetes mode (docs/kubernetes.md)")
    kube.add_argument(
        "--kubernetes",
        action="store_true",
        default=None,
        help="be the NSM of one Kubernetes node: callers are attested by pod, NetworkService objects are "
        "served (env NSM_KUBERNETES=true)",
    )
    kube.add_argument(
        "--node-name",
        default=None,
        help="this node, whose pods may get identities (env NODE_NAME, from the downward API)",
    )
    kube.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: the pod's service account inside a pod, else KUBECONFIG or "
        "~/.kube/config)",
    )
    kube.add_argument("--kube-context", default=None, help="kubeconfig context (default: its current one)")
    kube.add_argument(
        "--services-namespace",
        default=None,
        help="read the NetworkServices of this namespace only (env NSM_SERVICES_NAMESPACE; default: all)",
    )
    kube.add_argument(
        "--install-crd",
        action="store_true",
        default=None,
        help="create NSM's NetworkService CRD if it is absent (needs the right to create CRDs)",
    )
    for name in ("apply", "delete"):
        sub = commands.add_parser(name, help=f"{name} NetworkServices from a YAML file")
        sub.add_argument("-f", "--filename", required=True)
    commands.add_parser("list", help="show services, endpoints and connections")
    manifest = commands.add_parser(
        "kube-manifest", help="print the objects that run nsm-local on every node of a cluster (YAML)"
    )
    manifest.add_argument(
        "-n", "--namespace", default="nsm-system", help="namespace of the DaemonSet (default %(default)s)"
    )
    manifest.add_argument(
        "--image", default=None, help="default localhost/nsm-local:<version> (images/build.sh)"
    )
    manifest.add_argument("--pull-policy", default="Never", help="imagePullPolicy (default %(default)s)")
    manifest.add_argument(
        "--services-namespace",
        default=None,
        help="read NetworkServices of this namespace only (default: all)",
    )
    manifest.add_argument(
        "--install-crd",
        action="store_true",
        help="let nsm-local create the CRD (grants it that right) instead of shipping the CRD object",
    )
    manifest.add_argument(
        "--trust-domain", default="nsm.local", help="SPIFFE trust domain (default %(default)s)"
    )
    manifest.add_argument("--log-level", default="INFO", help="nsm-local's log level (default %(default)s)")
    for sub in commands.choices.values():
        if sub.prog.endswith("kube-manifest"):
            continue
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


def _dns_label(variable: str, value: str) -> str:
    from nsm_local.kube.manifests import name_problem

    problem = name_problem(value)
    if problem is not None:
        raise ConfigError(variable, value, f"not a namespace name: {problem}")
    return value


def _node_name(variable: str, value: str | None) -> str:
    import re

    if not value:
        raise ConfigError(variable, value, "required with --kubernetes: the node this nsm-local serves")
    if len(value) > 253 or not re.fullmatch(
        r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", value
    ):
        raise ConfigError(variable, value, "not a node name (lowercase DNS subdomain)")
    return value


def kube_settings(args: argparse.Namespace, env: Mapping[str, str]) -> KubeSettings | None:
    """`serve`'s Kubernetes settings from flags and environment; None when not in Kubernetes mode.
    ConfigError (exit 2) for a bad value, or a Kubernetes flag without --kubernetes."""
    from nsm_local.kube.node import KubeSettings

    enabled = True if args.kubernetes else boolean(env, "NSM_KUBERNETES", default=False)
    if not enabled:
        for flag, value in (
            ("--node-name", args.node_name),
            ("--kubeconfig", args.kubeconfig),
            ("--kube-context", args.kube_context),
            ("--services-namespace", args.services_namespace),
            ("--install-crd", args.install_crd),
        ):
            if value is not None:
                raise ConfigError(flag, str(value), "only with --kubernetes (or NSM_KUBERNETES=true)")
        return None
    node = (
        _node_name("--node-name", args.node_name)
        if args.node_name is not None
        else _node_name("NODE_NAME", env.get("NODE_NAME"))
    )
    namespace = args.services_namespace
    variable = "--services-namespace"
    if namespace is None:
        namespace, variable = env.get("NSM_SERVICES_NAMESPACE") or None, "NSM_SERVICES_NAMESPACE"
    if namespace is not None:
        _dns_label(variable, namespace)
    if args.kubeconfig is not None and not Path(args.kubeconfig).is_file():
        raise ConfigError("--kubeconfig", args.kubeconfig, "no such file")
    return KubeSettings(
        node_name=node,
        kubeconfig=args.kubeconfig,
        context=args.kube_context,
        services_namespace=namespace,
        install_crd=bool(args.install_crd),
    )


def _kube_node(settings: KubeSettings, trust_domain: str) -> KubeNode:
    """Connect before serving, so that a configuration that cannot work is a usage error (exit 2)."""
    from nsm_local.kube.errors import KubeConfigError
    from nsm_local.kube.node import connect_node, host_pid_problem
    from nsm_sdk.agent.logs import EventLog

    problem = host_pid_problem()
    if problem is not None:
        raise ConfigError("--kubernetes", "true", problem)
    variable, value = (
        ("--kubeconfig", settings.kubeconfig)
        if settings.kubeconfig
        else ("KUBECONFIG", os.environ.get("KUBECONFIG"))
    )
    try:
        return connect_node(settings, trust_domain, EventLog("nsm_local.kube"))
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "--kubernetes",
            "true",
            f"the Kubernetes client is not installed ({exc.name}): pip install '.[kube]'",
        ) from None
    except KubeConfigError as exc:
        raise ConfigError(variable, value, str(exc)) from None


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one, as Go's runtime does for nsmgr: every connection
    holds its client's netns fd, and 1024 (a common soft default) is a few hundred links."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _metrics(listen_on: str) -> MetricsEndpoint | None:
    """The metrics endpoint, listening, if asked for (ConfigError for a bad or busy address)."""
    if not listen_on.strip():
        return None
    return MetricsEndpoint(
        parse_listen_address("--prometheus-listen-on", listen_on), "--prometheus-listen-on"
    )


def _print_manifest(args: argparse.Namespace) -> None:
    from nsm_local.kube.manifests import PULL_POLICIES, ManifestOptions, manifests, project_version, to_yaml

    _dns_label("--namespace", args.namespace)
    if args.services_namespace is not None:
        _dns_label("--services-namespace", args.services_namespace)
    if args.pull_policy not in PULL_POLICIES:
        raise ConfigError("--pull-policy", args.pull_policy, f"not one of {', '.join(PULL_POLICIES)}")
    if args.image is not None and (not args.image or any(c.isspace() for c in args.image)):
        raise ConfigError("--image", args.image, "not an image reference")
    options = ManifestOptions(
        namespace=args.namespace,
        image=args.image or f"localhost/nsm-local:{project_version()}",
        pull_policy=args.pull_policy,
        services_namespace=args.services_namespace,
        install_crd=args.install_crd,
        trust_domain=args.trust_domain,
        log_level=args.log_level,
    )
    sys.stdout.write(to_yaml(manifests(options)))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "kube-manifest":
            _print_manifest(args)
            return
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
                kubernetes=kube_settings(args, os.environ),
            )
            metrics = _metrics(args.prometheus_listen_on)
            raise_fd_limit()
            setup_logging("nsm-local", args.log_level)
            try:
                if metrics is not None:
                    metrics.count_events()
                node = _kube_node(settings.kubernetes, settings.trust_domain) if settings.kubernetes else None
                control_plane = partial(serve_control_plane, settings, node=node)
                asyncio.run(run_agent(control_plane, backstop=10.0, metrics=metrics))
            finally:
                if metrics is not None:
                    metrics.close()
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
