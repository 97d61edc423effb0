"""The relay core shared by client and server: one relayed connection, and an accept loop.

A `RelayConnection` joins grpcio's plaintext socket (`local`) and the real peer (`FdSocket`) with two
pumps. End of stream on one side is passed on as a half-close of the other; when both directions have
ended, or either fails, both sockets close and with them every fd the connection received or still had
queued.

fds go only to an authenticated peer: those queued before the security session is `established` wait,
and ride on the first bytes written after it (with TLS 1.3 a client's may ride on its last handshake
flight: the server is verified by then). A peer that has not finished
the handshake within `HANDSHAKE_TIMEOUT` is dropped.

Tokens used on a connection are signed with the SVID it presented (`presented`), so the peer can check
them against the certificate it saw. After our SVID rotates, a connection that still presents the old one
is retired once that certificate is 3/4 through its life (`X509Material.retire_at`), or when `retire` is
called. Retiring is graceful: the relay sends the HTTP/2 client a GOAWAY (`http2.py`), so new calls go
out on a new connection (with the new SVID) while calls in flight finish on the old one; the client
closes it when they are done. Whatever is still open `DRAIN_GRACE` later (a long-lived stream, say) is
cut, and always before the old certificate expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.transport.fdpass import RECV_CHUNK, FdSocket
from nsm_sdk.transport.fdstore import FdStore
from nsm_sdk.transport.http2 import GOAWAY, FrameBoundaries, PingAckFilter, goaway_frame, ping_frame
from nsm_sdk.transport.peercred import PeerCredentials, is_network_namespace
from nsm_sdk.transport.security import SecureSession

_log = logging.getLogger(__name__)
_Handler = Callable[[socket.socket], Coroutine[Any, Any, None]]
# pid alone is not unique in a shared netns: containers of one pod share the abstract namespace
# but may each run as pid 1.
_PROCESS_TOKEN = secrets.token_hex(4)
_names = itertools.count()
HANDSHAKE_TIMEOUT = 10.0
RETIRE_POLL = 1.0
DRAIN_GRACE = 10.0
"""How long calls in flight may go on over a retired connection before it is closed under them."""


class Retired(ConnectionAbortedError):
    """Closed on purpose: retired, and calls were still open on it after the drain grace."""


def fresh_abstract_name(role: str) -> str:
    """A unique abstract socket name made only of characters grpcio reports unescaped in peers."""
    return f"nsmrelay-{os.getpid()}-{_PROCESS_TOKEN}-{role}{next(_names)}"


def abstract_address(name: str) -> str:
    """The socket-module address of an abstract name."""
    return "\0" + name


class RelayConnection:
    """One relayed connection; `received` holds the fds the peer sent, `queue_fds` sends ours.

    `peer` is the authenticated peer (None in plaintext), `credentials` who connected to our socket
    (accepted unix connections only), acting in the network namespace it sent as its first fd, with its
    first bytes, if it did (`PeerCredentials.acting_in`). `local_is_server` says which side speaks
    HTTP/2's server part: grpcio behind `local` (a server relay) or the peer (a client relay).
    `on_drain` is called once the GOAWAY of a retirement has been processed by the HTTP/2 client, or a
    client relay has seen the server's own GOAWAY go by.
    """

    def __init__(
        self,
        name: str,
        local: socket.socket,
        peer: FdSocket,
        session: SecureSession,
        credentials: PeerCredentials | None = None,
        is_current: Callable[[X509Material], bool] | None = None,
        *,
        local_is_server: bool = False,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        local.setblocking(False)
        self.name = name
        self.credentials = credentials
        self._is_current = is_current
        self._local = local
        self._peer = peer
        self._session = session
        self._closed = False
        self._held_fds: list[int] = []
        self._retire_now = asyncio.Event()
        self._retire_reason: str | None = None
        self._local_is_server = local_is_server
        self._on_drain = on_drain
        self._toward_client = FrameBoundaries()
        self._toward_client_lock = asyncio.Lock()
        self._toward_server = PingAckFilter()
        self._goaway: bytes | None = None  # GOAWAY + PING waiting for the next frame boundary
        self._drain_announced = False
        self._server_goaway = False
        self.failure: str | None = None
        """Why the connection broke, if it did (e.g. the TLS peer refused us)."""
        self._first_bytes_seen = False
        self._established = asyncio.get_running_loop().create_future()
        self._progress()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self.established else "handshaking"
        who = f" {self.peer.spiffe_id}" if self.peer else ""
        return f"<RelayConnection {self.name} {state}{who} peer={self._peer!r}>"

    @property
    def received(self) -> FdStore:
        return self._peer.received

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def established(self) -> bool:
        return self._established.done() and not self._established.cancelled()

    @property
    def peer(self) -> PeerIdentity | None:
        return self._session.peer

    @property
    def presented(self) -> X509Material | None:
        """The SVID we presented on this connection (None in plaintext)."""
        return self._session.material

    async def wait_established(self) -> PeerIdentity | None:
        """The peer once the handshake is done; ConnectionAbortedError if the connection ends first."""
        await asyncio.shield(self._established)
        return self.peer

    def queue_fds(self, fds: Iterable[int]) -> None:
        """Send dups of `fds` with the next bytes toward the peer (e.g. with an RPC's response); before
        the peer is authenticated they are held back."""
        if self._closed:
            return
        if self.established:
            self._peer.queue_fds(fds)
            return
        for fd in fds:
            self._held_fds.append(os.dup(fd))

    def _progress(self) -> None:
        """After the session moved: once established, release held fds and wake waiters."""
        if self._established.done() or not self._session.established:
            return
        self._established.set_result(None)
        self._peer.queue_fds(self._held_fds)
        self._close_held_fds()

    def _close_held_fds(self) -> None:
        while self._held_fds:
            os.close(self._held_fds.pop())

    async def run(self) -> None:
        """Relay until both directions end or one fails; always closes the connection."""
        try:
            await self._flush_to_peer()  # a TLS client's ClientHello; nothing in plaintext
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump_to_peer(), name=f"{self.name}:to-peer")
                from_peer = pumps.create_task(self._pump_from_peer(), name=f"{self.name}:from-peer")
                if self._is_current is not None and self.presented is not None:
                    retire = pumps.create_task(self._retire_when_stale(), name=f"{self.name}:retire")
                    from_peer.add_done_callback(lambda _: retire.cancel())
                if not self.established:
                    await asyncio.wait(
                        [self._established, from_peer],
                        timeout=HANDSHAKE_TIMEOUT,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not self._established.done() and not from_peer.done():
                        _log.warning("relay.handshake_timeout", extra={"fields": {"name": self.name}})
                        raise ConnectionAbortedError(f"no TLS handshake within {HANDSHAKE_TIMEOUT}s")
        except* OSError as failed:
            # the TLS verdict says more than the broken pipe it may have caused on the other pump
            causes = sorted(failed.exceptions, key=lambda exc: not isinstance(exc, ConnectionAbortedError))
            if not isinstance(causes[0], Retired):
                self.failure = str(causes[0]) or repr(causes[0])
            _log.debug(
                "relay.connection_aborted",
                extra={"fields": {"name": self.name, "error": repr(failed.exceptions[0])}},
            )
        finally:
            self.close()

    @property
    def retiring(self) -> bool:
        """No new calls should go out on this connection: we retired it, or (a client relay) the server
        sent a GOAWAY, so grpcio takes new calls to a new connection, whose SVID tokens must match."""
        return self._retire_now.is_set() or self._server_goaway

    @property
    def drain_announced(self) -> bool:
        """The HTTP/2 client has processed a GOAWAY: its new calls go elsewhere."""
        return self._drain_announced

    def retire(self, reason: str) -> None:
        """Retire this connection on purpose (e.g. the peer rotated and we must see its new certificate):
        new calls go to a new connection, calls in flight may finish within `DRAIN_GRACE`."""
        self._retire_reason = reason
        self._retire_now.set()

    async def _retire_when_stale(self) -> None:
        presented, is_current = self.presented, self._is_current
        assert presented is not None and is_current is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, presented.retire_at - time.time())):
                await self._retire_now.wait()
        # Polled: rotations come from py-spiffe's thread or nsm-local's CA, with no event to wait on.
        while not self._retire_now.is_set() and is_current(presented):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETIRE_POLL):
                    await self._retire_now.wait()
        self._retire_now.set()
        reason = self._retire_reason or "our SVID rotated"
        _log.info("relay.retired", extra={"fields": {"name": self.name, "reason": reason}})
        opaque = secrets.token_bytes(8)
        self._toward_server.expected = opaque
        self._goaway = goaway_frame(f"retired: {reason}") + ping_frame(opaque)
        await self._send_toward_client(b"")
        # The client closes the connection when its calls are done, and that ends this task (see `run`).
        await asyncio.sleep(max(0.0, min(DRAIN_GRACE, presented.not_after - time.time() - 1.0)))
        _log.info("relay.drain_cut", extra={"fields": {"name": self.name, "reason": reason}})
        raise Retired(f"retired: {reason}")

    async def _send_toward_client(self, data: bytes) -> None:
        """Pass HTTP/2 server-to-client bytes on, with a pending GOAWAY slipped in between two frames."""
        async with self._toward_client_lock:
            boundary = None if self._goaway is None else self._toward_client.first_boundary(data)
            began = self._toward_client.feed(data)  # whole frames slipped in between two change nothing
            if GOAWAY in began and not self._local_is_server and not self._server_goaway:
                self._server_goaway = True
                _log.debug("relay.server_goaway", extra={"fields": {"name": self.name}})
                if self._on_drain is not None:
                    self._on_drain()
            if boundary is not None and self._goaway is not None:
                data = data[:boundary] + self._goaway + data[boundary:]
                self._goaway = None
            if data:
                await self._send(data, toward_peer=self._local_is_server)

    async def _send_toward_server(self, data: bytes) -> None:
        """Pass HTTP/2 client-to-server bytes on, less the ACK of our PING (which ends a drain's notice)."""
        data, acked = self._toward_server.filter(data)
        if data:
            await self._send(data, toward_peer=not self._local_is_server)
        if acked:
            self._drain_announced = True
            if self._on_drain is not None:
                self._on_drain()

    async def _send(self, data: bytes, *, toward_peer: bool) -> None:
        if toward_peer:
            self._session.feed_plaintext(data)
            await self._flush_to_peer()
        else:
            await asyncio.get_running_loop().sock_sendall(self._local, data)

    def close(self) -> None:
        """Close both sockets and every fd of the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._established.done():
            aborted = ConnectionAbortedError(f"{self.name} closed before the handshake")
            self._established.set_exception(aborted)
            self._established.exception()  # retrieved: nobody has to wait for it
        self._close_held_fds()
        self._peer.close()
        self._local.close()

    async def _pump_to_peer(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(self._local, RECV_CHUNK):
            if self._local_is_server:
                await self._send_toward_client(data)
            else:
                await self._send_toward_server(data)
        self._session.close()
        await self._flush_to_peer()
        self._peer.shutdown_write()

    async def _pump_from_peer(self) -> None:
        while data := await self._peer.recv():
            try:
                plaintext = self._session.feed_wire(data)
            except OSError:
                with contextlib.suppress(OSError):
                    await self._flush_to_peer()  # the TLS alert that tells the peer why
                raise
            self._progress()
            await self._flush_to_peer()  # handshake answers
            if plaintext:
                if self._local_is_server:
                    self._note_first_bytes()
                    await self._send_toward_server(plaintext)
                else:
                    await self._send_toward_client(plaintext)
        with contextlib.suppress(OSError):
            self._local.shutdown(socket.SHUT_WR)

    def _note_first_bytes(self) -> None:
        """At the caller's first bytes (which carry its first fd, if it sends any): if that fd is a network
        namespace and the caller is root, it acts in it. Fds sent later never change who it is."""
        if self._first_bytes_seen:
            return
        self._first_bytes_seen = True
        first = self.received.first()
        credentials = self.credentials
        if (
            credentials is not None
            and credentials.uid == 0
            and first is not None
            and is_network_namespace(first[1])
        ):
            self.credentials = credentials.acting_in(first[0].ino)

    async def _flush_to_peer(self) -> None:
        # No await between draining the session and taking the (FIFO) write lock keeps records in order.
        if wire := self._session.wire_to_send():
            await self._peer.send(wire)


class Acceptor:
    """Accepts on a listening socket, one task per connection; `aclose` cancels and awaits them all."""

    def __init__(self, listener: socket.socket, handle: _Handler) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._handle = handle
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, name: str) -> None:
        self._accept_task = asyncio.create_task(self._accept_forever(name), name=f"{name}:accept")

    async def stop_accepting(self) -> None:
        """Stop taking new connections and close the listening socket; running ones go on."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        self._listener.close()

    async def aclose(self) -> None:
        await self.stop_accepting()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept_forever(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        for number in itertools.count():
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # EMFILE and the like: the backlog keeps the caller waiting
                _log.warning("relay.accept_failed", extra={"fields": {"listener": name, "error": repr(exc)}})
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._handle(sock), name=f"{name}:conn{number}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("relay.task_failed", extra={"fields": {"task": task.get_name()}}, exc_info=error)
