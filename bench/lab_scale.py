"""A big local lab up and down with `nsm-topo`, in agent mode or per device: wall times, CPU and memory.

Writes a topology of N devices (no routing daemons: the names are not routers') joined in a ring plus
random chords up to L links, then runs what a user runs, each timed:

    nsm-topo up FILE [--agents K]     # until every link is verified in both namespaces
    nsm-topo down FILE

While the lab is up it samples, every half second, the resident and proportional memory of every process
of the lab (nsm-local, the agent hosts or sidecars); it prints the peak of their sum, and the CPU seconds
each kind of process used. The lab has its own sockets and state directory (a temporary directory), so
its nsm-local is started by `nsm-topo up` for it alone and stopped by its `down`. Needs root and iproute2.

    sudo python bench/lab_scale.py --routers 1000 --links 2000 --agents 2     # issue 10's big target
    sudo python bench/lab_scale.py --routers 100 --links 300 --agents 1
    sudo python bench/lab_scale.py --routers 20 --links 30 --agents 0         # one process per role
    python bench/lab_scale.py --routers 1000 --links 2000 --write big.yml     # only the file, for nsm-topo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import cpu_seconds, memory, mib, print_machine, table

NSM_TOPO = [sys.executable, "-m", "nsm_topo"]


def write_topology(path: Path, name: str, routers: int, links: int, seed: int) -> None:
    """A ring of `routers` devices, then random chords until there are `links` links."""
    if links < routers or links > routers * (routers - 1) // 2:
        raise SystemExit(f"--links must lie between --routers ({routers}) and {routers * (routers - 1) // 2}")
    rng = random.Random(seed)
    edges = {(i, (i + 1) % routers) for i in range(routers)}
    while len(edges) < links:
        a, b = rng.sample(range(routers), 2)
        if (a, b) not in edges and (b, a) not in edges:
            edges.add((a, b))
    interfaces = [0] * routers
    lines = [f"prefix: {name}", "links:"]
    for a, b in sorted(edges):
        interfaces[a] += 1
        interfaces[b] += 1
        lines.append(f'  - endpoints: ["d{a}:eth{interfaces[a]}", "d{b}:eth{interfaces[b]}"]')
    path.write_text("\n".join(lines) + "\n")


def lab_pids(directory: str) -> dict[int, str]:
    """pid -> kind (nsm-local, nsm-agent, nsc-sidecar, nse-sidecar) of the processes of the lab whose
    sockets and state are in `directory`."""
    kinds = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(part.decode(errors="replace") for part in argv)
        if "nsm_local serve" in text and directory in text:
            kinds[int(entry)] = "nsm-local"
        elif "nsm_agent --routers" in text and directory in text:
            kinds[int(entry)] = "nsm-agent"
        elif "-m nsc_sidecar" in text or "-m nse_sidecar" in text:
            try:  # a sidecar names the lab's sockets in its environment, not its argv
                environment = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if directory in environment:
                kinds[int(entry)] = text.split("-m ")[1].split()[0].replace("_", "-")
    return kinds


class Sampler(threading.Thread):
    """Peak of the summed RSS and PSS of the lab's processes, and their last CPU seconds by kind."""

    def __init__(self, directory: str) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.processes: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.wait(0.5):
            rss = pss = 0
            kinds = lab_pids(self.directory)
            for pid, kind in kinds.items():
                now = memory(pid)
                cpu = cpu_seconds(pid)
                if now is None or cpu is None:
                    continue
                rss += now.rss
                pss += now.pss
                self.cpu[pid] = (kind, cpu)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            counts: dict[str, int] = {}
            for kind in kinds.values():
                counts[kind] = counts.get(kind, 0) + 1
            self.processes = {k: max(v, self.processes.get(k, 0)) for k, v in counts.items()}

    def cpu_by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for kind, seconds in self.cpu.values():
            totals[kind] = totals.get(kind, 0.0) + seconds
        return totals


def timed(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=100)
    parser.add_argument("--links", type=int, default=300)
    parser.add_argument("--agents", type=int, default=2, help="agent hosts (0: a process per role)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="for up, and for down")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the lab's logs here before down")
    parser.add_argument("--write", type=Path, default=None, help="only write the topology file, run nothing")
    args = parser.parse_args()
    name = f"scale{args.routers}"
    if args.write is not None:
        write_topology(args.write, name, args.routers, args.links, args.seed)
        print(f"{args.write}: {args.routers} devices, {args.links} links (nsm-topo up FILE --agents 2)")
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="nsm-scale-") as directory:
        topology = Path(directory) / f"{name}.yml"
        write_topology(topology, name, args.routers, args.links, args.seed)
        own = [
            f"--connect-to=unix://{directory}/nsm.sock",
            f"--workload-api=unix://{directory}/agent.sock",
            f"--state-dir={directory}/state",
        ]
        sampler = Sampler(directory)
        sampler.start()
        up_argv = [*NSM_TOPO, "up", str(topology), *own, "--timeout", str(args.timeout)]
        if args.agents:
            up_argv += ["--agents", str(args.agents)]
        up_seconds, up = timed(up_argv, args.timeout + 60)
        time.sleep(1.0)  # one more sample with everything up
        sampler.stop.set()
        sampler.join()
        if args.keep_logs is not None:
            lab = Path(directory) / "state" / name
            shutil.copytree(lab, args.keep_logs / name, dirs_exist_ok=True)
            shutil.copy(lab.parent / "nsm-local.log", args.keep_logs / "nsm-local.log")
        down_seconds, down = timed([*NSM_TOPO, "down", str(topology), *own], args.timeout)
    failed = [(what, done) for what, done in (("up", up), ("down", down)) if done.returncode != 0]
    for what, done in failed:
        print(f"nsm-topo {what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}", file=sys.stderr)
    cpu = sampler.cpu_by_kind()
    mode = f"agent mode, {args.agents} host(s)" if args.agents else "a process per role"
    rows = [
        ("lab", f"{args.routers} devices, {args.links} links, {mode}"),
        ("up (nsm-topo up, every link verified)", f"{up_seconds:.1f} s"),
        ("down (nsm-topo down)", f"{down_seconds:.1f} s"),
        ("peak memory, all processes (RSS / PSS, MiB)", f"{mib(sampler.peak_rss)} / {mib(sampler.peak_pss)}"),
        *((f"CPU of {kind} ({sampler.processes.get(kind, 0)} process(es))", f"{s:.1f} s") for kind, s in cpu.items()),  # noqa: E501
    ]
    print(table(("measure", "value"), rows))
    if args.json is not None:
        figures = {
            "routers": args.routers, "links": args.links, "agents": args.agents,
            "up_seconds": up_seconds, "down_seconds": down_seconds,
            "peak_rss_kib": sampler.peak_rss, "peak_pss_kib": sampler.peak_pss, "cpu_seconds": cpu,
            "failed": [what for what, _ in failed],
        }
        args.json.write_text(json.dumps(figures, indent=1))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
