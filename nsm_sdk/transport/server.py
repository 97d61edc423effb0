"""Server side: the relay listens on the real unix socket, grpcio on private abstract ones.

Each accepted connection gets its own backend connection to grpcio, bound to a unique abstract name
before `connect`. grpcio then reports `context.peer()` as `unix-abstract:<that name>`, which is how a
servicer finds the connection its call came in on: `connection_for_peer(context.peer())` gives the fds
the peer sent (`.received`), the authenticated peer (`.peer`), who connected (`.credentials`), and lets
the servicer send its own fds with the response (`.queue_fds`). Nothing is sent on accept: an fd goes out
only with a reply that names it, like grpcfd.

A busy server runs several grpc.aio servers (`serve(backends=N)`), each on its own abstract name, and the
relay hands each accepted connection to the one with the fewest connections. A grpc.aio server takes
its calls one after another: the next call is asked of grpc's core only once the last one has been
handed to the event loop, and every such step waits for a turn of the loop. While the loop is busy
(each turn long) one server accepts a few dozen calls a second, whatever the CPU left; calls queue in
front of it until their deadlines pass (docs/performance.md, "Soak"). N servers take N calls at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from nsm_sdk.transport.client import MESSAGE_SIZE_OPTIONS
from nsm_sdk.transport.errors import ListenPathError
from nsm_sdk.transport.fdpass import FdSocket
from nsm_sdk.transport.fdstore import FdStore
from nsm_sdk.transport.guard import RelayOnlyInterceptor
from nsm_sdk.transport.peercred import peer_credentials
from nsm_sdk.transport.relay import Acceptor, RelayConnection, abstract_address, fresh_abstract_name
from nsm_sdk.transport.security import PLAINTEXT, StreamSecurity
from nsm_sdk.transport.urls import abstract_target, path_to_unix_url

_log = logging.getLogger(__name__)


def remove_stale_socket(path: str) -> None:
    """Remove a leftover socket file (like Go, §2.1); refuse to remove anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenPathError(path, "exists and is not a socket")
    os.unlink(path)


class ServerRelay:
    """Relays connections accepted on `listen_path` to the grpc.aio servers at abstract `backend_names`,
    each connection to the server with the fewest.

    The socket file gets `socket_mode` (Go's servers use 0777, §2.1; what needs protecting is behind
    mTLS, but a control plane may want less).
    """

    def __init__(
        self,
        listen_path: str,
        backend_names: str | Sequence[str],
        *,
        security: StreamSecurity = PLAINTEXT,
        socket_mode: int = 0o777,
    ) -> None:
        self.listen_path = listen_path
        self.backend_names = (backend_names,) if isinstance(backend_names, str) else tuple(backend_names)
        if not self.backend_names:
            raise ValueError("a ServerRelay needs at least one backend")
        self._load = dict.fromkeys(self.backend_names, 0)
        self._security = security
        self._socket_mode = socket_mode
        self._by_peer: dict[str, RelayConnection] = {}
        self._acceptor: Acceptor | None = None
        self._inode: int | None = None

    def __repr__(self) -> str:
        backends = ",".join(self.backend_names)
        return f"<ServerRelay {self.listen_path} -> {backends} {len(self._by_peer)} connections>"

    @property
    def connections(self) -> tuple[RelayConnection, ...]:
        return tuple(self._by_peer.values())

    def connection_for_peer(self, peer: str) -> RelayConnection | None:
        """The live relay connection behind a servicer's `context.peer()`, if it came through this relay."""
        return self._by_peer.get(peer)

    def is_relayed(self, peer: str) -> bool:
        return peer in self._by_peer

    async def start(self) -> None:
        """Bind the socket file and start accepting.

        Like Go (§2.1, `grpcutils.ListenAndServe`): a stale socket is removed, a missing directory is
        created, and the socket gets its mode (0777 unless the server asked for less).
        """
        remove_stale_socket(self.listen_path)
        os.makedirs(os.path.dirname(self.listen_path), exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.listen_path)
            os.chmod(self.listen_path, self._socket_mode)
            listener.listen(128)
            self._inode = os.stat(self.listen_path).st_ino
        except OSError:
            listener.close()
            raise
        self._acceptor = Acceptor(listener, self._relay_one)
        self._acceptor.start(f"relay:{self.listen_path}")

    async def stop_accepting(self) -> None:
        """No new connections; the live ones keep relaying (for a graceful server stop)."""
        if self._acceptor is not None:
            await self._acceptor.stop_accepting()
        self._remove_own_socket_file()

    async def aclose(self) -> None:
        if self._acceptor is not None:
            await self._acceptor.aclose()
            self._acceptor = None
        self._remove_own_socket_file()

    async def __aenter__(self) -> ServerRelay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _remove_own_socket_file(self) -> None:
        """Unlink the socket file unless someone else has replaced it since."""
        if self._inode is None:
            return
        try:
            if os.stat(self.listen_path).st_ino == self._inode:
                os.unlink(self.listen_path)
        except FileNotFoundError:
            pass
        self._inode = None

    async def _relay_one(self, accepted: socket.socket) -> None:
        try:
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            accepted.close()
            raise
        name = fresh_abstract_name("s")
        try:
            credentials = peer_credentials(accepted)
            session = self._security.new_session(server_side=True)
        except BaseException:
            accepted.close()
            backend.close()
            raise
        connection = RelayConnection(
            name,
            backend,
            FdSocket(accepted, FdStore()),
            session,
            credentials,
            self._security.is_current,
            local_is_server=True,
        )
        peer = abstract_target(name)
        self._by_peer[peer] = connection
        target = min(self.backend_names, key=self._load.__getitem__)
        self._load[target] += 1
        try:
            backend.bind(abstract_address(name))
            await asyncio.get_running_loop().sock_connect(backend, abstract_address(target))
            await connection.run()
        except OSError as exc:
            _log.warning(
                "relay.backend_unreachable", extra={"fields": {"relay": self.listen_path, "error": repr(exc)}}
            )
        finally:
            connection.close()
            del self._by_peer[peer]
            self._load[target] -= 1


@dataclass
class ServerHandle:
    """Running grpc.aio servers (one, or `backends` of them) behind their relay."""

    servers: tuple[grpc.aio.Server, ...]
    relay: ServerRelay

    @property
    def url(self) -> str:
        """The `unix://` URL clients dial (and an NSE registers)."""
        return path_to_unix_url(self.relay.listen_path)

    def connection_for(self, context: grpc.aio.ServicerContext[Any, Any]) -> RelayConnection | None:
        return self.relay.connection_for_peer(context.peer())


@asynccontextmanager
async def serve(
    listen_path: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    security: StreamSecurity = PLAINTEXT,
    socket_mode: int = 0o777,
    options: Sequence[tuple[str, Any]] = (),
    relay_only: bool = True,
    stop_grace: float | None = None,
    backends: int = 1,
) -> AsyncIterator[ServerHandle]:
    """Start `backends` grpc.aio servers on fresh abstract addresses with a ServerRelay on `listen_path`.

    `register(server)` adds the servicers to each server (register the same servicer objects on all of
    them). With `relay_only`, calls that bypass the relay are refused. On exit: stop accepting, stop the
    servers (waiting `stop_grace` for running calls), close the relay.
    """
    if backends < 1:
        raise ValueError(f"backends must be at least 1, not {backends}")
    names = [fresh_abstract_name("b") for _ in range(backends)]
    relay = ServerRelay(listen_path, names, security=security, socket_mode=socket_mode)
    servers: list[grpc.aio.Server] = []
    try:
        interceptors = [RelayOnlyInterceptor(relay.is_relayed)] if relay_only else []
        for name in names:
            server = grpc.aio.server(interceptors=interceptors, options=[*MESSAGE_SIZE_OPTIONS, *options])
            register(server)
            server.add_insecure_port(abstract_target(name))
            servers.append(server)
            await server.start()
        await relay.start()
        yield ServerHandle(tuple(servers), relay)
    finally:
        await relay.stop_accepting()
        await asyncio.gather(*(server.stop(stop_grace) for server in servers))
        await relay.aclose()
