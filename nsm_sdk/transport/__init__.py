"""gRPC over unix sockets with grpcfd-compatible fd passing, under grpcio.

Why a relay
    NSM's Go components pass file descriptors (network namespaces, socket files) as SCM_RIGHTS on the raw
    unix socket of the gRPC connection, underneath TLS (edwarnicke/grpcfd, protocol doc §6). grpcio owns
    its sockets, so it can neither attach nor read them (§12 item 1). So each process runs a small asyncio
    byte relay: grpcio speaks plaintext HTTP/2 to the relay over a private ABSTRACT unix socket, and the
    relay speaks to the real peer on the real socket with `sendmsg`/`recvmsg`::

        grpcio channel ──abstract──▶ ClientRelay ══unix socket + fds══▶ peer (nsmgr, forwarder)
        peer ══unix socket + fds══▶ ServerRelay ──abstract, one name per connection──▶ grpc.aio server

    Abstract names live in the netns of the socket's creator; relay and grpcio share one process (and
    its original netns), so they always meet. Code that enters other namespaces must do so in threads
    that never create relay sockets.

How fds ride (`fdpass.FdSocket`, `fdstore.FdStore`)
    Exactly like grpcfd: fds queued on a connection go out on its next write, one `sendmsg` per fd
    carrying one data byte (at most 64 per write), then the rest of the buffer. Every read is a
    `recvmsg` with room for 64 fds; each fd is filed by (st_dev, st_ino), duplicates are closed,
    waiters get a dup, and everything closes with the connection. The peer may therefore send an fd
    at any time before (or with) the message that names it as `inode://dev/ino` (`urls`).

    * fds go only to an authenticated peer: those queued before the TLS handshake is done are held
      back and ride on the first bytes after it (with TLS 1.3 that can be our last handshake flight,
      after we have verified the server; in plaintext, at once).
    * Client (`ClientRelay`, `dial`): `send_on_connect` fds go on EVERY new upstream connection; grpcfd
      keeps them for the connection's lifetime, so the NSC's netns is known to nsmgr whichever
      connection grpcio uses, including after reconnects.
    * Server (`ServerRelay`, `serve`): nothing is sent on accept; a servicer `queue_fds` so they ride with
      the response that names them (how an NSE returns its netns).

How peers map
    The server relay binds each backend connection to a unique abstract name before connecting, and
    grpcio reports it in `context.peer()` as `unix-abstract:<name>`. `ServerRelay.connection_for_peer`
    turns that back into the `RelayConnection` (its `received` fds, its `queue_fds`). Calls whose peer
    the relay does not know bypassed it and are refused (`guard.RelayOnlyInterceptor`).

Where TLS goes
    `security.StreamSecurity` is a sans-IO seam between grpcio's plaintext and the `FdSocket`: fds ride
    on the raw socket, the bytes they ride on are whatever the seam emits. `tls.TlsSecurity` is the mTLS
    implementation (`ssl.SSLObject` + `MemoryBIO`, ALPN h2, SPIFFE verification, §3.2, §12 items 2-4);
    `PLAINTEXT` passes bytes through (the insecure mode). Each `RelayConnection` tells who the peer is
    (`peer`), which SVID we presented on it (`presented`: tokens on it are signed with that one) and, for
    accepted unix connections, the kernel's credentials of the caller (`credentials`).
"""

from __future__ import annotations

from nsm_sdk.transport.client import CHANNEL_OPTIONS, ClientRelay, dial
from nsm_sdk.transport.errors import ConnectionClosedError, FdNotReceivedError, ListenPathError, UrlError
from nsm_sdk.transport.fdpass import MAX_FDS_PER_WRITE, FdSocket, open_netns_fd, open_socket_file_fd
from nsm_sdk.transport.fdstore import FdStore, InodeKey, inode_key_of
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.security import PLAINTEXT, PlaintextSecurity, SecureSession, StreamSecurity
from nsm_sdk.transport.server import ServerHandle, ServerRelay, serve
from nsm_sdk.transport.tls import TlsSecurity
from nsm_sdk.transport.urls import (
    TcpAddress,
    UnixAddress,
    grpc_target_for_url,
    inode_url,
    inode_url_for_fd,
    inode_url_for_path,
    is_inode_url,
    parse_dial_url,
    parse_inode_url,
    path_to_unix_url,
    unix_url_to_path,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_FDS_PER_WRITE",
    "PLAINTEXT",
    "ClientRelay",
    "ConnectionClosedError",
    "FdNotReceivedError",
    "FdSocket",
    "FdStore",
    "InodeKey",
    "ListenPathError",
    "PlaintextSecurity",
    "RelayConnection",
    "SecureSession",
    "ServerHandle",
    "ServerRelay",
    "StreamSecurity",
    "TcpAddress",
    "TlsSecurity",
    "UnixAddress",
    "UrlError",
    "dial",
    "grpc_target_for_url",
    "inode_key_of",
    "inode_url",
    "inode_url_for_fd",
    "inode_url_for_path",
    "is_inode_url",
    "open_netns_fd",
    "open_socket_file_fd",
    "parse_dial_url",
    "parse_inode_url",
    "path_to_unix_url",
    "serve",
    "unix_url_to_path",
]
