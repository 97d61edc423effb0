"""What the transport and the endpoint logic cost per call.

1. Unary call latency and throughput of a raw-bytes echo over a unix socket, four ways:
     direct        grpc.aio channel `unix:PATH` -> grpc.aio server `unix:PATH` (no relay)
     client relay  `nsm_sdk.transport.dial` (ClientRelay) -> plain grpc.aio server
     server relay  plain grpc.aio channel -> `nsm_sdk.transport.serve` (ServerRelay + relay-only guard)
     both relays   dial -> serve, as every sidecar and nsm-local talk
   each with the server in this process (one event loop, as the architecture doc's figure) and in a
   separate process (as the programs really run), for a small and an NSM-sized payload.
2. Per-call cost of the endpoint's logic (`nse_sidecar.endpoint.EndpointCore`), free of gRPC: a first
   Request with a real ES256 signer and with a constant token, a refresh, a Close, and the pieces
   (token signing, protobuf round trip of the request) that explain the totals.

Bounded: `--calls` per measurement (default 2000), no sockets outside a fresh temp directory, the child
server is killed on exit. Needs no root.

    python bench/rpc.py
    python bench/rpc.py --calls 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from benchlib import machine_busy_seconds, median, own_cpu_seconds, percentile, print_machine, table

from nse_sidecar.endpoint import EndpointCore
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, State
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import CallTokens, caller_token
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.gotime import set_timestamp
from nsm_sdk.protocol.ipam import SeedP2PAllocator
from nsm_sdk.protocol.requests import kernel_preference
from nsm_sdk.transport import CHANNEL_OPTIONS, dial, serve

SERVICE = "nsmbench.Echo"
METHOD = f"/{SERVICE}/Echo"
CALL_TIMEOUT = 10.0
WARMUP = 200
CONNECT_REPEATS = 10


@dataclass(frozen=True)
class Variant:
    name: str
    client_relay: bool
    server_relay: bool


VARIANTS = (
    Variant("direct", False, False),
    Variant("client relay", True, False),
    Variant("server relay", False, True),
    Variant("both relays", True, True),
)


# --- the echo server -------------------------------------------------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))


@asynccontextmanager
async def echo_server(path: str, relay: bool) -> AsyncIterator[None]:
    if relay:
        async with serve(path, register):
            yield
        return
    server = grpc.aio.server()
    register(server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield
    finally:
        await server.stop(None)


async def child_main(path: str, relay: bool) -> None:
    """The server of the two-process placement: serve until stdin closes (the bench ended or died)."""
    async with echo_server(path, relay):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@asynccontextmanager
async def server_in_child(path: str, relay: bool) -> AsyncIterator[None]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", path, "1" if relay else "0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"echo server did not start (exit {child.returncode})")
        yield
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            child.kill()
            await child.wait()


@asynccontextmanager
async def echo_channel(path: str, relay: bool) -> AsyncIterator[grpc.aio.Channel]:
    if relay:
        async with dial(f"unix://{path}") as (channel, _relay):
            yield channel
        return
    channel = grpc.aio.insecure_channel(f"unix:{path}", options=list(CHANNEL_OPTIONS))
    try:
        yield channel
    finally:
        await channel.close(None)


# --- measuring calls ------------------------------------------------------------------------------------


@dataclass
class CallFigures:
    variant: str
    placement: str
    payload: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    sequential_per_s: float
    concurrent_per_s: float
    connect_ms: float


async def sequential(call: Callable[[bytes], Any], payload: bytes, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await call(payload)
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


async def concurrent(call: Callable[[bytes], Any], payload: bytes, calls: int, width: int) -> float:
    """Calls per second with `width` callers sharing one channel."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call(payload)

    share, extra = divmod(calls, width)
    start = time.perf_counter()
    await asyncio.gather(*(worker(share + (1 if i < extra else 0)) for i in range(width)))
    return calls / (time.perf_counter() - start)


async def connect_and_first_call(path: str, relay: bool, payload: bytes) -> float:
    start = time.perf_counter()
    async with echo_channel(path, relay) as channel:
        await channel.unary_unary(METHOD, None, None)(payload, timeout=CALL_TIMEOUT, wait_for_ready=True)
        return (time.perf_counter() - start) * 1000


async def measure(variant: Variant, separate: bool, payload_size: int, calls: int, width: int,
                  directory: Path) -> CallFigures:
    path = str(directory / f"echo-{os.getpid()}-{time.monotonic_ns()}.sock")
    payload = os.urandom(payload_size)
    server: AbstractAsyncContextManager[None] = (
        server_in_child(path, variant.server_relay) if separate else echo_server(path, variant.server_relay)
    )
    async with server:
        connects = [await connect_and_first_call(path, variant.client_relay, payload)
                    for _ in range(CONNECT_REPEATS)]
        async with echo_channel(path, variant.client_relay) as channel:
            multicallable = channel.unary_unary(METHOD, None, None)

            async def call(body: bytes) -> bytes:
                reply: bytes = await multicallable(body, timeout=CALL_TIMEOUT, wait_for_ready=True)
                return reply

            if await call(payload) != payload:
                raise RuntimeError(f"{variant.name}: echo returned something else")
            await sequential(call, payload, WARMUP)
            start = time.perf_counter()
            times = sorted(await sequential(call, payload, calls))
            elapsed = time.perf_counter() - start
            throughput = await concurrent(call, payload, calls, width)
    return CallFigures(
        variant.name,
        "2 processes" if separate else "1 process",
        payload_size,
        percentile(times, 0.5),
        percentile(times, 0.9),
        percentile(times, 0.99),
        sum(times) / len(times),
        calls / elapsed,
        throughput,
        median(connects),
    )


# --- the endpoint's logic -------------------------------------------------------------------------------


def forwarder_request(signer: TokenSigner, conn_id: str, now: float) -> NetworkServiceRequest:
    """A Request as nsm-local's forwarder sends it: path [nsc, nsmgr, fwd] with real tokens, k8s-topo
    labels, a KERNEL preference naming the interface and a netns."""
    conn = Connection(id=conn_id, network_service="topo", network_service_endpoint_name="r2-nse",
                      payload="IP", labels={"link": "net-0", "peerif": "eth1"}, state=State.UP)
    for name, seg_id in (("r1-nsc", "r1-nsc-0"), ("nsmgr", "mgr-" + conn_id), ("forwarder", conn_id)):
        token, expires = signer.sign(None, 600, now)
        segment = conn.path.path_segments.add(name=name, id=seg_id, token=token)
        set_timestamp(segment.expires, expires)
    conn.path.index = 2
    conn.context.ip_context.SetInParent()
    request = NetworkServiceRequest(connection=conn)
    request.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    return request


def per_call_us(operation: Callable[[int], object], count: int) -> tuple[float, float]:
    """Median and mean microseconds of `operation(i)` over `count` runs (after a short warm-up)."""
    for i in range(min(50, count)):
        operation(-1 - i)
    times = []
    for i in range(count):
        start = time.perf_counter_ns()
        operation(i)
        times.append((time.perf_counter_ns() - start) / 1000)
    return median(times), sum(times) / len(times)


def endpoint_figures(count: int) -> list[tuple[str, float, float]]:
    now = time.time()
    peer_signer = TokenSigner("forwarder")
    metadata = CallTokens(peer_signer, 600).metadata()
    token, expires = caller_token(metadata)
    own_tokens = CallTokens(TokenSigner("r2-nse"), 600)
    requests = [forwarder_request(peer_signer, f"fwd-{i}", now) for i in range(64)]
    serialized = requests[0].SerializeToString()

    def core(sign: Callable[[], tuple[str, float]]) -> EndpointCore:
        return EndpointCore("r2-nse", SeedP2PAllocator("10.60.2.0/24"), "inode://4/4026532001", sign)

    results: list[tuple[str, float, float]] = []

    def first_requests(name: str, endpoint: EndpointCore) -> None:
        # 64 /30s in the pool: release each connection right after, outside the timed call
        def operation(i: int) -> None:
            accepted = endpoint.request(requests[i % 64], token, expires)
            endpoint.allocator.release(accepted.own_view.id)

        results.append((name, *per_call_us(operation, count)))

    first_requests("EndpointCore.request, first (ES256 signer)", core(own_tokens.sign))
    first_requests("EndpointCore.request, first (constant token)", core(lambda: ("token", now + 600)))

    endpoint = core(own_tokens.sign)
    reply = endpoint.request(requests[0], token, expires).reply
    refresh = NetworkServiceRequest(connection=reply)
    refresh.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    results.append(("EndpointCore.request, refresh (ES256 signer)",
                    *per_call_us(lambda i: endpoint.request(refresh, token, expires), count)))

    results.append(("EndpointCore.close",
                    *per_call_us(lambda i: endpoint.close(reply, token, expires), count)))
    results.append(("TokenSigner.sign (ES256 JWT)", *per_call_us(lambda i: own_tokens.sign(), count)))
    results.append((f"request protobuf serialize + parse ({len(serialized)} B)",
                    *per_call_us(lambda i: NetworkServiceRequest.FromString(requests[0].SerializeToString()),
                                 count)))
    results.append(("caller_token (metadata -> token, expiry)",
                    *per_call_us(lambda i: caller_token(metadata), count)))
    return results


# --- main -----------------------------------------------------------------------------------------------


async def call_figures(calls: int, payloads: Sequence[int], width: int, directory: Path) -> list[CallFigures]:
    figures = []
    for separate in (False, True):
        for payload in payloads:
            for variant in VARIANTS:
                figures.append(await measure(variant, separate, payload, calls, width, directory))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement (default %(default)s)")
    parser.add_argument("--payloads", default="64,2048", help="payload sizes in bytes (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="callers for the throughput figure")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "RELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop (stdin EOF)
        asyncio.run(child_main(args.child[0], args.child[1] == "1"))
        return 0
    if not 1 <= args.calls <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--calls must be 1..100000 and --concurrency 1..256")
    payloads = [int(p) for p in args.payloads.split(",")]
    print_machine()
    directory = Path(tempfile.mkdtemp(prefix="nsmb-rpc-", dir="/tmp"))
    busy_start, own_start, wall_start = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
    try:
        figures = asyncio.run(call_figures(args.calls, payloads, args.concurrency, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    others = max(0.0, (machine_busy_seconds() - busy_start) - (own_cpu_seconds() - own_start))
    print(f"Other load during the call measurements: {others / (time.monotonic() - wall_start):.2f} "
          "cores (machine busy time minus this process and its echo servers; high values make the figures "
          "below unreliable)")
    print()
    print(f"Unary echo over a unix socket: {args.calls} sequential calls after {WARMUP} warm-up "
          f"(latency in µs), then {args.calls} calls from {args.concurrency} concurrent callers on one "
          "channel;")
    print(f"connect = new channel + first call, median of {CONNECT_REPEATS} (ms)")
    print()
    print(table(
        ["placement", "payload B", "variant", "p50", "p90", "p99", "mean", "calls/s seq",
         f"calls/s x{args.concurrency}", "connect ms"],
        [[f.placement, f.payload, f.variant, f"{f.p50_us:.0f}", f"{f.p90_us:.0f}", f"{f.p99_us:.0f}",
          f"{f.mean_us:.0f}", f"{f.sequential_per_s:.0f}", f"{f.concurrent_per_s:.0f}", f"{f.connect_ms:.1f}"]
         for f in figures],
    ))
    print()
    p50 = {(f.placement, f.payload, f.variant): f.p50_us for f in figures}
    keys = sorted({(f.placement, f.payload) for f in figures})
    print("Added by the relays (p50 minus the direct p50, µs):")
    print()
    print(table(
        ["placement", "payload B", *(v.name for v in VARIANTS[1:])],
        [[placement, payload,
          *(f"{p50[placement, payload, v.name] - p50[placement, payload, 'direct']:+.0f}"
            for v in VARIANTS[1:])]
         for placement, payload in keys],
    ))
    print()
    count = min(args.calls, 2000)
    print(f"Endpoint logic per call, no gRPC ({count} runs each, µs)")
    print()
    print(table(["operation", "median", "mean"],
                [[name, f"{med:.0f}", f"{mean:.0f}"] for name, med, mean in endpoint_figures(count)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
