"""Client side: grpcio dials a private abstract socket, the relay dials the real target.

Every new upstream connection sends the `send_on_connect` fds with its first bytes after the server is
authenticated (at once in plaintext). grpcfd keeps received fds for the connection's lifetime (§6), so
this is how an NSC's netns reaches nsmgr with whichever connection grpcio happens to use (§12 item 1).
`wait_peer` gives the authenticated server of a live connection, whose SPIFFE id is the `aud` of the
tokens we send on it (§3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import grpc

from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.transport.errors import ConnectionClosedError, FdNotReceivedError
from nsm_sdk.transport.fdpass import FdSocket
from nsm_sdk.transport.fdstore import FdStore, InodeKey
from nsm_sdk.transport.relay import Acceptor, RelayConnection, abstract_address, fresh_abstract_name
from nsm_sdk.transport.security import PLAINTEXT, StreamSecurity
from nsm_sdk.transport.urls import TcpAddress, UnixAddress, abstract_target, parse_dial_url

_log = logging.getLogger(__name__)
_UCRED = struct.Struct("3i")

#: Largest gRPC message sent or received, clients and servers alike (grpc-go's default receive limit; NSM
#: messages are a few KiB). A bigger one fails with RESOURCE_EXHAUSTED instead of being parsed.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MESSAGE_SIZE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

#: Keepalive no more often than grpc-go servers tolerate (§12 item 9): their default policy allows one
#: ping per 5 min and only with active streams; 5.5 min leaves room for timer jitter.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    *MESSAGE_SIZE_OPTIONS,
)


async def connect_upstream(address: UnixAddress | TcpAddress) -> socket.socket:
    """A connected non-blocking socket to the real target."""
    loop = asyncio.get_running_loop()
    if isinstance(address, UnixAddress):
        candidates: list[tuple[int, int, int, Any]] = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, address.path)]
    else:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        candidates = [(family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in infos]
    error: OSError = OSError(f"no address for {address}")
    for family, kind, proto, sockaddr in candidates:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


def _peer_pid(sock: socket.socket) -> int:
    pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(pid)


class ClientRelay:
    """A relay from `grpc_target` (an abstract socket for grpcio) to ONE target URL.

    `send_on_connect` fds are dup'ed now and owned by the relay until `aclose`. Only this process may
    connect to the abstract socket (checked with SO_PEERCRED), since any process in the netns could.
    """

    def __init__(
        self,
        target_url: str,
        *,
        send_on_connect: Sequence[int] = (),
        security: StreamSecurity = PLAINTEXT,
    ) -> None:
        self.target_url = target_url
        self._address = parse_dial_url(target_url)
        self.security = security
        self.name = fresh_abstract_name("c")
        self.grpc_target = abstract_target(self.name)
        self._connections: set[RelayConnection] = set()
        self._arrivals: set[asyncio.Future[None]] = set()
        self._changes: set[asyncio.Future[None]] = set()
        self.last_failure: str | None = None
        """Why the last broken upstream connection broke (e.g. a refused TLS handshake); for messages."""
        self._last_failure_at = 0.0
        self._acceptor: Acceptor | None = None
        self._numbers = itertools.count()
        self._closed = False
        self._send_on_connect: list[int] = []
        try:
            for fd in send_on_connect:
                self._send_on_connect.append(os.dup(fd))
        except OSError:
            self._close_own_fds()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._connections)} connections"
        return f"<ClientRelay {self.grpc_target} -> {self.target_url} {state}>"

    @property
    def connections(self) -> tuple[RelayConnection, ...]:
        """The live upstream connections."""
        return tuple(self._connections)

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(abstract_address(self.name))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._acceptor = Acceptor(listener, self._relay_one)
        self._acceptor.start(self.name)

    async def aclose(self) -> None:
        """Close every connection and the owned fds; waiters in `wait_fd` raise ConnectionClosedError."""
        self._closed = True
        if self._acceptor is not None:
            await self._acceptor.aclose()
            self._acceptor = None
        self._close_own_fds()
        self._wake_waiters()
        self._wake_changes()

    async def __aenter__(self) -> ClientRelay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def recent_failure(self, within: float = 30.0) -> str | None:
        """`last_failure` if it happened within the last `within` seconds."""
        if self.last_failure is None or time.monotonic() - self._last_failure_at > within:
            return None
        return self.last_failure

    def current_connection(self) -> RelayConnection | None:
        """The newest live connection whose peer is authenticated."""
        for connection in reversed(list(self._connections)):
            if connection.established and not connection.closed and not connection.retiring:
                return connection
        return None

    async def _next_change(self) -> None:
        """Until a connection comes, becomes established or goes (or the relay closes)."""
        change: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes.add(change)
        try:
            await change
        finally:
            self._changes.discard(change)

    async def wait_retired(self, connection: RelayConnection, timeout: float) -> None:
        """Wait (at most `timeout`) until a retiring connection is gone or has told grpcio to take new
        calls elsewhere (GOAWAY), so the next call goes out on a new connection."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while connection in self._connections and not connection.drain_announced and not self._closed:
                    await self._next_change()

    async def wait_peer(self, timeout: float | None) -> PeerIdentity | None:
        """The authenticated server of a live connection (None in plaintext), waiting up to `timeout`
        for one; grpcio must be connecting meanwhile (e.g. `channel.channel_ready()`)."""
        async with asyncio.timeout(timeout):
            while (connection := self.current_connection()) is None:
                if self._closed:
                    raise ConnectionClosedError(f"relay to {self.target_url} is closed")
                await self._next_change()
        return connection.peer

    def _wake_changes(self) -> None:
        for change in self._changes:
            if not change.done():
                change.set_result(None)

    async def _announce_when_established(self, connection: RelayConnection) -> None:
        with contextlib.suppress(ConnectionAbortedError):
            await connection.wait_established()
        self._wake_changes()

    async def wait_fd(self, dev: int, ino: int, timeout: float | None) -> int:
        """A dup of the fd with key (dev, ino) received on any live upstream connection."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while (fd := self._dup_from_any(dev, ino)) is None:
                    arrival: asyncio.Future[None] = loop.create_future()
                    self._arrivals.add(arrival)
                    try:
                        await arrival
                    finally:
                        self._arrivals.discard(arrival)
        except TimeoutError:
            raise FdNotReceivedError(dev, ino, timeout) from None
        return fd

    def _dup_from_any(self, dev: int, ino: int) -> int | None:
        if self._closed:
            raise ConnectionClosedError(f"relay to {self.target_url} is closed")
        for connection in self._connections:
            if not connection.received.closed and (fd := connection.received.dup(dev, ino)) is not None:
                return fd
        return None

    def _wake_waiters(self, _key: InodeKey | None = None) -> None:
        for arrival in self._arrivals:
            if not arrival.done():
                arrival.set_result(None)

    def _close_own_fds(self) -> None:
        while self._send_on_connect:
            os.close(self._send_on_connect.pop())

    async def _relay_one(self, local: socket.socket) -> None:
        try:
            if _peer_pid(local) != os.getpid():
                _log.warning("relay.refused_foreign_process", extra={"fields": {"relay": self.name}})
                local.close()
                return
            upstream = await connect_upstream(self._address)
        except OSError as exc:
            # grpcio sees the connection drop and retries with backoff (wait_for_ready rides it out).
            _log.debug(
                "relay.upstream_unreachable",
                extra={"fields": {"target": self.target_url, "error": repr(exc)}},
            )
            local.close()
            return
        except BaseException:
            local.close()
            raise
        connection = RelayConnection(
            f"{self.name}/{next(self._numbers)}",
            local,
            FdSocket(upstream, FdStore(on_add=self._wake_waiters)),
            self.security.new_session(server_side=False),
            is_current=self.security.is_current,
            on_drain=self._wake_changes,
        )
        self._connections.add(connection)
        announce = asyncio.create_task(self._announce_when_established(connection))
        try:
            connection.queue_fds(self._send_on_connect)
            await connection.run()
        finally:
            connection.close()
            self._connections.discard(connection)
            if connection.failure is not None:
                self.last_failure = connection.failure
                self._last_failure_at = time.monotonic()
            self._wake_changes()
            await announce


@asynccontextmanager
async def dial(
    url: str,
    *,
    send_fds: Sequence[int] = (),
    options: Sequence[tuple[str, Any]] = (),
    security: StreamSecurity = PLAINTEXT,
) -> AsyncIterator[tuple[grpc.aio.Channel, ClientRelay]]:
    """A grpc.aio channel to `url` (unix or tcp) through a `ClientRelay` sending `send_fds` per connection."""
    async with ClientRelay(url, send_on_connect=send_fds, security=security) as relay:
        channel = grpc.aio.insecure_channel(relay.grpc_target, options=[*CHANNEL_OPTIONS, *options])
        try:
            yield channel, relay
        finally:
            await channel.close(None)
