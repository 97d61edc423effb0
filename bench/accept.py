"""How many calls a second one server process takes while its event loop is busy, by its backend servers.

A grpc.aio server takes its calls one after another: it asks grpc's core for the next call only once the
last one has been handed to the event loop, and each such step waits for a turn of the loop. So the calls
a server takes per second are bounded by the turns of its loop, not by its CPU: when each turn is long
(a busy nsm-local runs hundreds of callbacks per turn), calls queue in front of it until their deadlines
pass. `nsm_sdk.transport.serve(backends=N)` runs N servers behind one relay, each connection going to the
server with the fewest; nsm-local uses 8 (`nsm_local.server.BACKEND_SERVERS`).

Here a server process (our relay and `serve`, plaintext) answers a unary call at once, while `--busy`
tasks keep its loop turning slowly (each spins for `--turn` ms per turn, then yields). A client process
sends `--rate` calls a second for `--seconds`, round robin over `--connections` connections, each with a
2 s deadline. Measured per backend count: how long a call waited before its handler ran (the deadline
left when the handler began), p50 and p90, and how many calls missed their deadline.

    python bench/accept.py                                    # backends 1, 2, 4, 8; 200 calls/s, 1 ms turns
    python bench/accept.py --backends 1,8 --rate 100 --turn 2 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import percentile, print_machine, table

from nsm_sdk.transport import dial, serve

SERVICE = "bench.Accept"
DEADLINE = 2.0


async def _serve(path: str, backends: int, busy: int, turn: float) -> list[float]:
    waits: list[float] = []

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        waits.append(DEADLINE - (context.time_remaining() or 0.0))
        return request

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(answer)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Call": handler}),))

    async def spin() -> None:
        while True:
            until = time.perf_counter() + turn
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(path, register, backends=backends):
        spinners = [asyncio.create_task(spin()) for _ in range(busy)]
        print("ready", flush=True)
        await stop.wait()
        for task in spinners:
            task.cancel()
    return waits


async def _send(url: str, connections: int, rate: float, seconds: float) -> int:
    """Calls at `rate` for `seconds`; returns how many missed their deadline."""
    missed = 0
    async with contextlib.AsyncExitStack() as stack:
        channels = [(await stack.enter_async_context(dial(url)))[0] for _ in range(connections)]
        calls = [channel.unary_unary(f"/{SERVICE}/Call") for channel in channels]
        turn = itertools.cycle(calls)
        pending: list[asyncio.Task[None]] = []

        async def one(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
            nonlocal missed
            try:
                await call(b"x" * 512, timeout=DEADLINE, wait_for_ready=True)
            except grpc.aio.AioRpcError:
                missed += 1

        for call in calls:  # connect every channel before the clock starts
            await call(b"", timeout=10.0, wait_for_ready=True)
        started = time.perf_counter()
        for n in itertools.count():
            at = started + n / rate
            if at - started >= seconds:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            pending.append(asyncio.create_task(one(next(turn))))
        await asyncio.gather(*pending)
    return missed


def measure(backends: int, args: argparse.Namespace, directory: str) -> tuple[object, ...]:
    path = os.path.join(directory, f"accept{backends}.sock")
    waits_file = os.path.join(directory, f"waits{backends}.json")
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            path,
            str(backends),
            str(args.busy),
            str(args.turn),
            waits_file,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        missed = asyncio.run(_send(f"unix://{path}", args.connections, args.rate, args.seconds))
    finally:
        server.terminate()
        server.wait(30)
    waits = sorted(json.loads(Path(waits_file).read_text()))
    sent = int(args.rate * args.seconds)
    return (
        backends,
        sent,
        f"{percentile(waits, 0.5) * 1000:.1f}" if waits else "-",
        f"{percentile(waits, 0.9) * 1000:.1f}" if waits else "-",
        missed,
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        path, backends, busy, turn, waits_file = sys.argv[2:7]
        waits = asyncio.run(_serve(path, int(backends), int(busy), float(turn) / 1000))
        Path(waits_file).write_text(json.dumps(waits))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="1,2,4,8", help="comma-separated backend server counts")
    parser.add_argument("--rate", type=float, default=200.0, help="calls a second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--turn", type=float, default=1.0, help="ms each busy task spins per loop turn")
    parser.add_argument("--busy", type=int, default=1, help="busy tasks in the server's loop")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print_machine()
    print(
        f"{args.rate:.0f} calls/s for {args.seconds:.0f} s over {args.connections} connections, deadline"
        f" {DEADLINE:.0f} s; the server's loop turns every {args.turn * args.busy:.1f} ms ({args.busy} busy"
        f" task(s) of {args.turn:.1f} ms)\n"
    )
    with tempfile.TemporaryDirectory(prefix="nsm-accept-") as directory:
        rows = [measure(int(b), args, directory) for b in args.backends.split(",")]
    print(table(("backends", "calls", "waited p50 (ms)", "waited p90 (ms)", "missed deadline"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
