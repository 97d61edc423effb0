"""Errors of the transport layer.

They subclass the protocol layer's roots, so callers decide retry versus give-up on `temporary` alone:
a bad URL is a `ProtocolError` (the sender must change), a missing fd or a closed connection is a
`TemporaryError` (a new connection or a later attempt may succeed).
"""

from __future__ import annotations

from nsm_sdk.protocol.errors import ExhaustedError, NsmError, ProtocolError, TemporaryError


class UrlError(ProtocolError):
    """A URL that is not of the form this operation accepts (`inode://`, `unix://`, `tcp://`)."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url!r}: {problem}")


class FdNotReceivedError(TemporaryError):
    """No fd with this (st_dev, st_ino) arrived before the timeout (the Go receivers fail alike, §6)."""

    def __init__(self, dev: int, ino: int, timeout: float | None) -> None:
        self.dev = dev
        self.ino = ino
        self.timeout = timeout
        super().__init__(f"no fd for inode://{dev}/{ino} received within {timeout}s")


class FdCapError(ExhaustedError):
    """The peer sent more distinct fds on one connection than we keep (`fdstore.MAX_FDS_PER_CONNECTION`)."""

    def __init__(self, dev: int, ino: int, cap: int) -> None:
        super().__init__(f"inode://{dev}/{ino} was refused: a connection may pass at most {cap} distinct fds")


class ConnectionClosedError(TemporaryError):
    """The relayed connection (and with it every fd it received) is gone."""


class ListenPathError(NsmError):
    """The server socket path cannot be used (for example it exists and is not a socket)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
