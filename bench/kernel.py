"""What the kernel side of one link costs: nsm-local's forwarder work and a sidecar's check, per link.

In two throwaway namespaces: open/close of one netlink session (an `rtnl.Rtnl` on a socket created in
the netns, `nsm_sdk.kernel.netlink_in`), then per link the forwarder's ensure (veth pair born in both
namespaces + both ends configured: `nsm_local.forwarder.ensure_cross_connect`), a sidecar's check of its
side (`nsm_sdk.kernel.state.verify_link`, in a netns that holds all the links), the forwarder's ensure
again (what every refresh does) and the forwarder's remove. Wall time and CPU time of this
process (all threads) per operation. Needs root. Bounded by `--links` (default 50, at most 200).

Then many pairs going at once (`--together`, default 1000; 0 skips it): that many veth pairs between
the two namespaces, removed through `remove_cross_connect` one after another (each alone: one RTM_DELLINK
each, and the kernel waits for RCU per link), and again all at once (the forwarder batches them: one
device group, one RTM_DELLINK, one wait).

Last, pairs spread over many namespaces (`--spread`, default 200; 0 skips it), as in a lab's teardown:
each pair's client end in a namespace of its own. The kernel cannot batch those, but most of a removal
is waiting for RCU outside the rtnl lock, so the forwarder works on the namespaces side by side
(`REMOVAL_THREADS`); one after another, then all at once.

    python bench/kernel.py --links 50 --together 1000 --spread 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable

from benchlib import median, memory, print_machine, run_quiet, table

from nsm_local.forwarder import CrossConnect, ensure_cross_connect, remove_cross_connect
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.links import End, create_veth_pair_in
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.state import verify_link
from nsm_sdk.protocol.sides import side_config


def connection(index: int) -> Connection:
    """A reply as the forwarder sees it: a /30 per link, client .1, endpoint .2."""
    conn = Connection(id=f"bench-{index}")
    conn.path.path_segments.add(name="r1-nsc", id=f"r1-nsc-{index}")
    third, fourth = divmod(4 * index, 256)
    conn.context.ip_context.src_ip_addrs.append(f"10.61.{third}.{fourth + 1}/30")
    conn.context.ip_context.dst_ip_addrs.append(f"10.61.{third}.{fourth + 2}/30")
    return conn


def rss_kb() -> int:
    found = memory(os.getpid())
    return found.rss if found else 0


def timed(operation: Callable[[int], object], count: int) -> tuple[float, float, int]:
    """Median wall ms and mean CPU ms (process-wide, all threads) of `operation(i)`, i = 0..count-1, and
    how much this process's RSS grew meanwhile (KiB)."""
    walls = []
    rss_start = rss_kb()
    cpu_start = time.process_time()
    for i in range(count):
        start = time.perf_counter()
        operation(i)
        walls.append((time.perf_counter() - start) * 1000)
    return median(walls), (time.process_time() - cpu_start) * 1000 / count, rss_kb() - rss_start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=50, help="links to create (1..200, default %(default)s)")
    parser.add_argument("--together", type=int, default=1000, help="pairs removed at once (0: skip)")
    parser.add_argument("--spread", type=int, default=200, help="pairs in as many namespaces (0: skip)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if not 1 <= args.links <= 200:
        parser.error("--links must be 1..200")
    print_machine()
    tag = secrets.token_hex(2)
    names = [f"nsmb{tag}-k1", f"nsmb{tag}-k2"]
    fds: list[int] = []
    try:
        for name in names:
            if run_quiet("ip", "netns", "add", name).returncode != 0:
                raise SystemExit(f"cannot create netns {name}")
            fds.append(os.open(f"/run/netns/{name}", os.O_RDONLY))
        client_fd, endpoint_fd = fds
        crosses = [CrossConnect(client_fd, f"eth{i + 1}", endpoint_fd, f"eth{i + 1}")
                   for i in range(args.links)]
        conns = [connection(i) for i in range(args.links)]

        def session(ns_fd: int | None) -> Callable[[int], None]:
            def open_close(i: int) -> None:
                with netlink_in(ns_fd):
                    pass

            return open_close

        def ensure(i: int) -> None:
            asyncio.run(ensure_cross_connect(crosses[i], conns[i]))

        def verify(i: int) -> None:
            config = side_config(conns[i].context.ip_context, "client")
            problems = verify_link(client_fd, crosses[i].client_ifname, list(config.addresses))
            if problems:
                raise SystemExit(f"link {i}: {problems}")

        def remove(i: int) -> None:
            if not asyncio.run(remove_cross_connect(crosses[i])):
                raise SystemExit(f"link {i} was not there to remove")

        baseline = timed(lambda i: asyncio.run(asyncio.sleep(0)), args.links)
        rows = [
            ("netlink session, own netns (open + close)", timed(session(None), args.links)),
            ("netlink session, other netns (open + close)", timed(session(client_fd), args.links)),
            ("forwarder ensure: veth pair + configure both ends", timed(ensure, args.links)),
            ("sidecar check of one side (verify_link)", timed(verify, args.links)),
            ("forwarder ensure again (a refresh: the pair exists)", timed(ensure, args.links)),
            ("forwarder remove", timed(remove, args.links)),
        ]
        print(f"Per operation, {args.links} links (wall: median ms; CPU: mean ms of this process, all "
              f"threads; asyncio.run overhead of ensure/remove, {baseline[0]:.2f} ms wall, not subtracted;"
              " RSS growth of this process over the whole phase)")
        print()
        print(table(["operation", "wall ms", "CPU ms", "RSS growth KiB"],
                    [[name, f"{w:.2f}", f"{c:.2f}", grew] for name, (w, c, grew) in rows]))
        if args.together:
            print()
            print(removal_table(client_fd, endpoint_fd, args.together))
        if args.spread:
            print()
            print(spread_table(endpoint_fd, args.spread))
    finally:
        for fd in fds:
            os.close(fd)
        for name in names:
            run_quiet("ip", "netns", "delete", name)
    return 0


async def _remove_together(pairs: list[CrossConnect]) -> list[bool]:
    return await asyncio.gather(*(remove_cross_connect(xc) for xc in pairs))


def _timed_removal(pairs: list[CrossConnect], together: bool) -> tuple[float, list[bool]]:
    """Wall seconds to remove `pairs` through the forwarder, one after another or all at once."""
    started = time.perf_counter()
    if together:
        removed = asyncio.run(_remove_together(pairs))
    else:
        removed = [asyncio.run(remove_cross_connect(xc)) for xc in pairs]
    return time.perf_counter() - started, removed


def removal_table(client_fd: int, endpoint_fd: int, count: int) -> str:
    """`count` pairs removed one after another, then `count` others removed all at once."""
    rows = []
    for mode in ("one after another", "all at once (batched)"):
        with netlink_in(client_fd) as ipr_a, netlink_in(endpoint_fd) as ipr_b:
            for i in range(count):
                create_veth_pair_in(ipr_a, ipr_b, End(client_fd, f"r{i}"), End(endpoint_fd, f"r{i}"))
        pairs = [CrossConnect(client_fd, f"r{i}", endpoint_fd, f"r{i}") for i in range(count)]
        wall, removed = _timed_removal(pairs, together=mode != "one after another")
        with netlink_in(client_fd) as ipr_a, netlink_in(endpoint_fd) as ipr_b:
            left = len(ipr_a.links()) + len(ipr_b.links()) - 2  # less each namespace's lo
        rows.append([mode, count, f"{wall:.2f}", f"{wall / count * 1000:.2f}", sum(removed), left])
    headers = ["removal", "pairs", "wall s", "per pair ms", "removed", "links left"]
    return f"Many pairs going at once ({count})\n\n" + table(headers, rows)


def spread_table(endpoint_fd: int, count: int) -> str:
    """`count` pairs, each client end in a namespace of its own, removed one after another, then `count`
    others all at once."""
    names = [f"nsmbench-s{secrets.token_hex(3)}-{i}" for i in range(count)]
    run_quiet("ip", "-batch", "-", input="".join(f"netns add {name}\n" for name in names))
    fds = [os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in names]
    rows = []
    try:
        for mode in ("one after another", "all at once (side by side)"):
            with netlink_in(endpoint_fd) as ipr_b:
                for i, fd in enumerate(fds):
                    with netlink_in(fd) as ipr_a:
                        create_veth_pair_in(ipr_a, ipr_b, End(fd, "eth1"), End(endpoint_fd, f"s{i}"))
            pairs = [CrossConnect(fd, "eth1", endpoint_fd, f"s{i}") for i, fd in enumerate(fds)]
            wall, removed = _timed_removal(pairs, together=mode != "one after another")
            rows.append([mode, count, f"{wall:.2f}", f"{wall / count * 1000:.2f}", sum(removed)])
    finally:
        for fd in fds:
            os.close(fd)
        run_quiet("ip", "-force", "-batch", "-", input="".join(f"netns delete {name}\n" for name in names))
    headers = ["removal", "pairs", "wall s", "per pair ms", "removed"]
    return f"Pairs spread over {count} namespaces\n\n" + table(headers, rows)


if __name__ == "__main__":
    sys.exit(main())
