"""A test service and fd bookkeeping shared by the relay tests, in plaintext and over mTLS.

The servicer uses generic handlers with raw bytes, so these tests need no generated protobufs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from nsm_sdk.transport import (
    InodeKey,
    RelayConnection,
    ServerHandle,
    inode_url_for_fd,
    parse_inode_url,
    serve,
)

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
SERVICE = "nsmtest.Relay"
CALL_TIMEOUT = 20.0


@contextmanager
def pipe_read_ends(count: int) -> Iterator[list[int]]:
    opened = [os.pipe() for _ in range(count)]
    try:
        yield [read_end for read_end, _ in opened]
    finally:
        for read_end, write_end in opened:
            os.close(read_end)
            os.close(write_end)


class Servicer:
    """Test service; every call looks up the relay connection it arrived on."""

    def __init__(self, give_fd: int | None = None) -> None:
        self.handle: ServerHandle | None = None
        self.give_fd = give_fd
        self.connections: list[RelayConnection] = []

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Whoami": grpc.unary_unary_rpc_method_handler(self.whoami),
            "Keys": grpc.unary_unary_rpc_method_handler(self.keys),
            "SendBack": grpc.unary_unary_rpc_method_handler(self.send_back),
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    def connection(self, context: Context) -> RelayConnection:
        assert self.handle is not None
        connection = self.handle.connection_for(context)
        assert connection is not None, f"no relay connection for peer {context.peer()}"
        self.connections.append(connection)
        return connection

    async def whoami(self, request: bytes, context: Context) -> bytes:
        """Who the relay says is calling: the authenticated peer (null in plaintext) and SO_PEERCRED."""
        connection = self.connection(context)
        credentials = connection.credentials
        assert credentials is not None, "accepted unix connections know who connected"
        peer = connection.peer.spiffe_id if connection.peer is not None else None
        return json.dumps({"peer": peer, "pid": credentials.pid, "uid": credentials.uid}).encode()

    async def keys(self, request: bytes, context: Context) -> bytes:
        """Wait for the fd named in the request, then list every key the connection holds."""
        connection = self.connection(context)
        dev, ino = parse_inode_url(request.decode())
        fd = await connection.received.wait(dev, ino, timeout=CALL_TIMEOUT)
        os.close(fd)
        return json.dumps(sorted(connection.received.keys())).encode()

    async def send_back(self, request: bytes, context: Context) -> bytes:
        assert self.give_fd is not None
        self.connection(context).queue_fds([self.give_fd])
        return inode_url_for_fd(self.give_fd).encode()

    async def echo(self, request: bytes, context: Context) -> bytes:
        return request

    async def sleep(self, request: bytes, context: Context) -> bytes:
        """Answer after `float(request)` seconds: a call in flight for as long as a test needs."""
        self.connection(context)
        await asyncio.sleep(float(request))
        return request

    async def hold(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        """One message, then open until the caller goes: a long-lived stream (a monitor, say)."""
        self.connection(context)
        yield b"held"
        await asyncio.Event().wait()

    async def count(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for number in range(int(request)):
            yield str(number).encode() * 1000


def serving(path: Path, servicer: Servicer, **kwargs: Any) -> AbstractAsyncContextManager[ServerHandle]:
    return serve(str(path), servicer.register, **kwargs)


async def call(channel: grpc.aio.Channel, method: str, request: bytes) -> bytes:
    multicallable = channel.unary_unary(f"/{SERVICE}/{method}", None, None)
    response: bytes = await multicallable(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
    return response


def as_keys(response: bytes) -> list[InodeKey]:
    return [InodeKey(dev, ino) for dev, ino in json.loads(response)]


@dataclass(frozen=True)
class FdCensus:
    passed: int  # pipes and namespaces: the kinds of fds these tests pass around
    sockets: int
    memfds: int  # the TLS layer hands SVIDs to OpenSSL through memfds


def fd_census() -> FdCensus:
    gc.collect()
    kinds: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        with suppress(FileNotFoundError):
            kinds[os.readlink(f"/proc/self/fd/{name}").split(":")[0]] += 1
    return FdCensus(passed=kinds["pipe"] + kinds["net"], sockets=kinds["socket"], memfds=kinds["/memfd"])


def relay_socket_names() -> list[str]:
    """Abstract names of this process's relay sockets still open (listeners and bound connections)."""
    prefix = f"@nsmrelay-{os.getpid()}-"
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return [line.split()[-1] for line in lines if line.split()[-1].startswith(prefix)]


async def no_leaks_since(before: FdCensus) -> None:
    """Every passed fd and relay socket is closed; grpcio closes its own sockets asynchronously."""
    after = fd_census()
    assert (after.passed, after.memfds) == (before.passed, before.memfds)
    assert relay_socket_names() == []
    await eventually(lambda: fd_census().sockets <= before.sockets)


async def eventually(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (pytest-timeout guards against forever)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)
