"""`nsm-topo`: k8s-topo topology files for NSM v1, as labs on this host.

nsm-topo random N EXTRA [--seed S] [--prefix P] [-o DIR] [--name NAME]
    a random network of N routers (spanning tree + EXTRA links) with FRR configurations
nsm-topo show FILE
    what the file wires: the NetworkService's matches and every device's sidecar environment
nsm-topo up FILE        one network namespace per device, sidecars (and FRR for routers), wired by nsm-local
nsm-topo status FILE    every device and link, with its state and addresses
nsm-topo check FILE [--from DEVICE]    ping every router's loopback; non-zero exit on any loss
nsm-topo exec FILE DEVICE -- CMD...    run a command inside a device (`vtysh` reaches its FRR)
nsm-topo down FILE      remove everything `up` created (safe to repeat, also after a crash)
nsm-topo graph FILE [-o PAGE]    one self-contained HTML page of the topology (default <name>.html);
    with the lab up (as root), each link's state and addresses
nsm-topo manifest FILE [-o DIR|-]    the Kubernetes objects for NSM v1 (NetworkService, ConfigMaps, Pods)
nsm-topo apply FILE / delete FILE    create-or-update / delete them in a cluster (kubeconfig or in-cluster)

Bad input (arguments or files): one line naming what is wrong, exit code 2. A lab that does not come up,
or a check with loss: exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from nsm_sdk.protocol.envvalues import DEFAULT_SPIFFE_ENDPOINT
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, parse_socket_url
from nsm_sdk.version import version_line
from nsm_topo.builder import DEFAULT_PREFIX, BuilderError, build, write
from nsm_topo.local.controlplane import RUN_DIR, ControlPlane
from nsm_topo.topology import Topology, TopologyError, load_topology
from nsm_topo.wiring import Wiring, wire

_err = Console(stderr=True)
BIG_LAB = 64
"""Devices beyond which `up` without --agents suggests agent mode (two processes a device add up)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsm-topo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line("nsm-topo"))
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
    for name, text in (
        ("show", "print what a topology file wires"),
        ("up", "bring a lab up on this host"),
        ("status", "show a lab's devices and links"),
        ("down", "remove a lab"),
        ("check", "ping every router's loopback from one router"),
        ("exec", "run a command inside a device"),
        ("graph", "write an HTML page of the topology (with link states when its lab is up)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("file", type=Path)
        if name != "show":
            sub.add_argument(
                "--connect-to",
                default=os.environ.get("NSM_CONNECT_TO", str(DEFAULT_NSMGR_URL)),
                help="nsm-local's socket, started there if nothing listens (env NSM_CONNECT_TO)",
            )
            sub.add_argument(
                "--workload-api",
                default=os.environ.get("SPIFFE_ENDPOINT_SOCKET", str(DEFAULT_SPIFFE_ENDPOINT)),
                help="its Workload API socket (env SPIFFE_ENDPOINT_SOCKET)",
            )
            sub.add_argument(
                "--state-dir",
                type=Path,
                default=Path(os.environ.get("NSM_TOPO_STATE_DIR", RUN_DIR)),
                help=f"labs' records (env NSM_TOPO_STATE_DIR, default {RUN_DIR})",
            )
        if name == "up":
            sub.add_argument(
                "--timeout", type=float, default=120.0, help="seconds for every link (default 120)"
            )
            sub.add_argument("--insecure", action="store_true", help="plaintext nsm-local and sidecars")
            sub.add_argument(
                "--agents",
                type=_agent_hosts,
                default=0,
                metavar="N",
                help="agent mode for big labs: N nsm-agent processes host the client and endpoint of every "
                "device (default 0: an nsc-sidecar and an nse-sidecar process per device, as in pods)",
            )
        if name == "check":
            sub.add_argument(
                "--from", dest="source", default=None, help="the router to ping from (default: the first)"
            )
            sub.add_argument(
                "--timeout", type=float, default=90.0, help="seconds for routing to converge (default 90)"
            )
        if name == "exec":
            sub.add_argument("device")
            sub.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
        if name == "graph":
            sub.add_argument(
                "-o", "--output", type=Path, default=None, help="the page (default: <name>.html)"
            )
    _kube_parsers(commands)
    return parser


def _kube_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from nsm_topo.kube.manifests import (
        CONTROL_PLANES,
        DEFAULT_FRR_IMAGE,
        DEFAULT_HOST_IMAGE,
        PULL_POLICIES,
        SIDECAR_LAYOUTS,
        SPIRE_VOLUMES,
    )

    for name, text in (
        ("manifest", "write the Kubernetes objects (NSM v1) of a topology"),
        ("apply", "create or update them in a cluster"),
        ("delete", "delete them from a cluster (waits until the pods are gone)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("file", type=Path)
        sub.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
        if name == "manifest":
            sub.add_argument(
                "-o", "--output", default="-", help="a directory (one file per object) or - (default: stdout)"
            )
        if name in ("manifest", "apply"):
            sub.add_argument(
                "--image-prefix",
                default="",
                help="registry/path before the sidecar image names (build.sh --prefix)",
            )
            sub.add_argument("--tag", default=None, help="sidecar image tag (default: the project version)")
            sub.add_argument(
                "--frr-image", default=DEFAULT_FRR_IMAGE, help=f"routers (default {DEFAULT_FRR_IMAGE})"
            )
            sub.add_argument(
                "--host-image", default=DEFAULT_HOST_IMAGE, help=f"other devices ({DEFAULT_HOST_IMAGE})"
            )
            sub.add_argument(
                "--pull-policy",
                choices=PULL_POLICIES,
                default="IfNotPresent",
                help="Never: images imported into the node's runtime (default IfNotPresent)",
            )
            sub.add_argument(
                "--control-plane",
                choices=CONTROL_PLANES,
                default="nsm",
                help="nsm: NSM v1 and SPIRE in the cluster (default); nsm-local: `nsm-local serve "
                "--kubernetes` on a one-node cluster (its Workload API from the node)",
            )
            sub.add_argument(
                "--spire-volume",
                choices=SPIRE_VOLUMES,
                default=None,
                help="with --control-plane nsm: SPIRE agent socket via the SPIFFE CSI driver (default) or a "
                "hostPath",
            )
            sub.add_argument(
                "--sidecars",
                choices=SIDECAR_LAYOUTS,
                default="native",
                help="native: init containers with restartPolicy Always, started before the router "
                "(Kubernetes >= 1.29, default); classic: plain containers beside it (older clusters)",
            )
        if name in ("apply", "delete"):
            sub.add_argument(
                "--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, ~/.kube)"
            )
            sub.add_argument("--context", default=None, help="kubeconfig context (default: its current one)")
            sub.add_argument(
                "--timeout", type=float, default=120.0, help="seconds to wait for pods to go (default 120)"
            )


def _agent_hosts(text: str) -> int:
    try:
        hosts = int(text)
    except ValueError:
        hosts = -1
    if not 0 <= hosts <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of agent processes from 0 to 64")
    return hosts


def _fail(message: str, code: int = 2) -> None:
    print(f"nsm-topo: {message}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on a terminal, plain lines otherwise; yields progress(event, done, total)."""
    if _err.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err,
            transient=False,
        ) as bar:
            tasks: dict[str, TaskID] = {}

            def report(event: str, done: int, total: int) -> None:
                kind = event.split()[0]
                if kind not in tasks:
                    tasks[kind] = bar.add_task(f"{title}: {kind}", total=total)
                bar.update(tasks[kind], completed=done)

            yield report
    else:

        def plain(event: str, done: int, total: int) -> None:
            print(f"nsm-topo: {title}: {event} [{done}/{total}]", file=sys.stderr, flush=True)

        yield plain


def _require_root() -> None:
    if os.geteuid() != 0:
        _fail("labs need root (network namespaces, veth, FRR): run it with sudo", 2)


def _status(topology: Topology, plane: ControlPlane) -> None:
    from nsm_topo.local.lab import (
        LabRecord,
        hosted_devices,
        lab_container_states,
        lab_dir,
        link_views,
        netns_name,
    )
    from nsm_topo.local.processes import alive

    record = LabRecord.load(lab_dir(topology, plane) / "lab.json")
    hosts = hosted_devices(lab_dir(topology, plane))
    # piped output keeps whole names and addresses (rich would squeeze the tables into 80 columns)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if record is None:
        console.print(f"lab [bold]{topology.name}[/] is not up")
    devices = Table(title=f"{topology.name}: devices")
    for column in ("device", "namespace", "processes", "ready"):
        devices.add_column(column)
    boxes = lab_container_states(topology, record)
    for device in topology.devices:
        name = netns_name(topology, device)
        exists = Path("/run/netns", name).exists()
        host = hosts.get(name)
        procs = [p for p in (record.processes if record else []) if p.device in (device, host)]
        shown = (
            ", ".join(
                f"{p.role}{f' ({p.device})' if p.device == host else ''}{'' if alive(p) else ' (gone)'}"
                for p in procs
            )
            or "-"
        )
        ready = all(alive(p) for p in procs) and bool(procs)
        if device in boxes:  # a device that runs as a container
            box = boxes[device]
            shown = f"container {box.image} ({box.state}), {shown}"
            ready = ready and box.running
        devices.add_row(device, name if exists else "-", shown, "yes" if ready else "no")
    console.print(devices)
    links = Table(title=f"{topology.name}: links")
    for column in ("link", "client", "addresses", "endpoint", "addresses ", "state"):
        links.add_column(column)
    for view in link_views(topology):
        client = ",".join(sorted(view.client.addresses)) if view.client else "-"
        endpoint = ",".join(sorted(view.endpoint.addresses)) if view.endpoint else "-"
        state = "[green]up[/]" if view.up else "[red]down[/]"
        links.add_row(view.link.name, str(view.link.client), client, str(view.link.endpoint), endpoint, state)
    console.print(links)


def _graph(args: argparse.Namespace, topology: Topology) -> None:
    """The page: the planned wiring, or with the lab up (and root to read its namespaces) its links."""
    from nsm_sdk.kernel import LinkState
    from nsm_topo.graph import ObservedEnd, ObservedLink, render
    from nsm_topo.local.lab import NETNS_DIR, LabRecord, lab_dir, link_views, netns_name

    plane = ControlPlane(
        url=parse_socket_url("--connect-to", args.connect_to, allow_tcp=False),
        workload_api=parse_socket_url("--workload-api", args.workload_api, allow_tcp=False),
        run_dir=args.state_dir,
    )
    lab_up = LabRecord.load(lab_dir(topology, plane) / "lab.json") is not None or any(
        (NETNS_DIR / netns_name(topology, device)).exists() for device in topology.devices
    )

    def end(side: LinkState | None) -> ObservedEnd | None:
        return None if side is None else ObservedEnd(tuple(sorted(side.addresses)), side.up)

    observed: dict[str, ObservedLink] | None = None
    note = None
    if lab_up and os.geteuid() != 0:
        note = f"lab {topology.name} is up, but reading its links needs root: this is the planned wiring"
        print(f"nsm-topo: {note} (run it with sudo for link states and addresses)", file=sys.stderr)
    elif lab_up:
        observed = {
            view.link.name: ObservedLink(view.up, end(view.client), end(view.endpoint))
            for view in link_views(topology)
        }
    path: Path = args.output or Path(f"{topology.name}.html")
    try:
        path.write_text(render(topology, observed, note))
    except OSError as exc:
        _fail(f"{path}: cannot write: {exc.strerror}")
    shown = "planned" if observed is None else f"{sum(v.up for v in observed.values())} up"
    print(f"{path}: {topology.name}, {len(topology.devices)} devices, {len(topology.links)} links ({shown})")


def _lab_command(args: argparse.Namespace, topology: Topology) -> None:
    from nsm_topo.local import frr
    from nsm_topo.local.check import CheckError, ping_loopbacks
    from nsm_topo.local.containers import NoEngineError
    from nsm_topo.local.controlplane import ControlPlaneError
    from nsm_topo.local.frr import FrrError
    from nsm_topo.local.lab import LabError, container_exec_argv, down, netns_name, up

    _require_root()
    plane = ControlPlane(
        url=parse_socket_url("--connect-to", args.connect_to, allow_tcp=False),
        workload_api=parse_socket_url("--workload-api", args.workload_api, allow_tcp=False),
        insecure=getattr(args, "insecure", False),
        run_dir=args.state_dir,
    )
    try:
        if args.command == "up":
            if not args.agents and len(topology.devices) > BIG_LAB:
                print(
                    f"nsm-topo: {len(topology.devices)} devices run {2 * len(topology.devices)} sidecar "
                    "processes; `--agents 2` hosts them in 2 (agent mode, README 'Big labs')",
                    file=sys.stderr,
                )
            with _progress(topology.name) as report:
                views = up(topology, plane, report, args.timeout, args.agents)
            print(
                f"{topology.name}: {len(views)} links up across {len(topology.devices)} devices "
                f"(nsm-topo status {args.file}; nsm-topo down {args.file})"
            )
        elif args.command == "down":
            report_ = down(topology, plane)
            what = (
                "nothing to remove"
                if not (report_.processes or report_.namespaces or report_.containers)
                else (f"stopped {report_.processes} processes, removed {report_.namespaces} namespaces")
                + (f" and {report_.containers} container(s)" if report_.containers else "")
            )
            print(f"{topology.name}: {what}")
        elif args.command == "status":
            _status(topology, plane)
        elif args.command == "check":
            source, results, elapsed = ping_loopbacks(topology, args.source, args.timeout)
            for result in results:
                print(result.line())
            lost = [r for r in results if not r.received]
            verdict = "converged" if not lost else f"{len(lost)} of {len(results)} loopbacks unreachable"
            print(f"{topology.name}: from {source}, {verdict} after {elapsed:.1f}s", file=sys.stderr)
            if lost:
                sys.exit(1)
        elif args.command == "exec":
            if args.device not in topology.devices:
                _fail(
                    f"{args.device}: no such device in {topology.name} ({', '.join(topology.devices[:5])}...)"
                )
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                _fail("exec: give a command after --, e.g. nsm-topo exec FILE DEVICE -- ip addr")
            netns = netns_name(topology, args.device)
            inside = container_exec_argv(topology, plane, args.device, argv, sys.stdin.isatty())
            if inside is not None:  # a device that runs as a container: its own tools, its own vtysh
                os.execvp(inside[0], inside)
            if Path(argv[0]).name == "vtysh":
                argv = frr.vtysh_argv(netns, argv)
            os.execvp("ip", ["ip", "netns", "exec", netns, *argv])
    except NoEngineError as exc:  # a container device but no podman/docker: nothing was created
        _fail(str(exc), 2)
    except (LabError, ControlPlaneError, FrrError) as exc:
        _fail(str(exc), 1)
    except CheckError as exc:
        _fail(str(exc), 2)


def _kube_command(args: argparse.Namespace, wiring: Wiring) -> None:
    """manifest / apply / delete: the pure manifests, then (apply, delete) the cluster client, lazily."""
    from nsm_topo.kube.manifests import KubeOptions, file_name, manifests, namespace_problem, to_yaml

    problem = namespace_problem(args.namespace)
    if problem is not None:
        _fail(f"--namespace {args.namespace!r}: {problem}")
    options = KubeOptions(namespace=args.namespace)
    if args.command != "delete":
        if args.control_plane == "nsm-local" and args.spire_volume is not None:
            _fail(
                "--spire-volume is for --control-plane nsm: nsm-local's Workload API is always its hostPath"
            )
        options = KubeOptions(
            namespace=args.namespace,
            image_prefix=args.image_prefix,
            image_tag=args.tag or options.image_tag,
            frr_image=args.frr_image,
            host_image=args.host_image,
            pull_policy=args.pull_policy,
            control_plane=args.control_plane,
            spire_volume=args.spire_volume or "csi",
            sidecars=args.sidecars,
        )
    objects = manifests(wiring, options)
    if args.command == "manifest":
        if args.output == "-":
            sys.stdout.write(to_yaml(objects))
            return
        directory = Path(args.output)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for index, obj in enumerate(objects):
                (directory / file_name(index, obj)).write_text(to_yaml([obj]))
        except OSError as exc:
            _fail(f"{exc.filename or directory}: cannot write: {exc.strerror}")
        print(f"{directory}: {len(objects)} objects of {wiring.service_name} (kubectl apply -f {directory})")
        return

    from nsm_topo.kube import cluster

    try:
        target = cluster.connect(args.kubeconfig, args.context, args.namespace)
        with _progress(wiring.service_name) as report:
            if args.command == "apply":
                done = cluster.apply(target, objects, report, args.timeout)
            else:
                done = cluster.delete(target, objects, report, args.timeout)
    except cluster.KubeError as exc:
        _fail(str(exc), 1)
    hint = f"kubectl get pods -n {args.namespace} -l topo={wiring.service_name}"
    print(f"{wiring.service_name} in namespace {args.namespace}: {done.summary()} ({hint})")


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
        topology = load_topology(args.file)
        wiring = wire(topology)
        if args.command in ("manifest", "apply", "delete"):
            _kube_command(args, wiring)
            return
        if args.command == "show":
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
            return
        if args.command == "graph":
            _graph(args, topology)
            return
        _lab_command(args, topology)
    except (BuilderError, TopologyError, ConfigError) as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
