"""The URL forms NSM puts on the wire, and the gRPC targets they map to (§2.1, §6).

* `inode://<dev>/<ino>`: a file passed as an fd; both numbers decimal, `dev` is the raw `st_dev`
  (`os.stat().st_dev`), exactly like grpcfd's `FDToURL`/`URLToDevIno`.
* `unix:///abs/path`: a unix socket; used as the gRPC target as it is.
* `tcp://host:port`: becomes the gRPC target `host:port`; fds never travel over TCP.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from nsm_sdk.transport.errors import UrlError

_DECIMAL = re.compile(r"[0-9]+")
_UINT64_LIMIT = 1 << 64
# Characters Go's url.URL.String() leaves unescaped in a path.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


@dataclass(frozen=True)
class UnixAddress:
    """A filesystem unix socket (`unix:///abs/path`)."""

    path: str


@dataclass(frozen=True)
class TcpAddress:
    """A TCP endpoint (`tcp://host:port`); `host` is unbracketed for IPv6."""

    host: str
    port: int


def inode_url(dev: int, ino: int) -> str:
    """`inode://dev/ino` for a (st_dev, st_ino) pair."""
    return f"inode://{dev}/{ino}"


def inode_url_for_fd(fd: int) -> str:
    """The `inode://` URL naming the file behind `fd` (grpcfd `FDToURL`)."""
    st = os.fstat(fd)
    return inode_url(st.st_dev, st.st_ino)


def inode_url_for_path(path: str) -> str:
    """The `inode://` URL of a path, following symlinks (grpcfd `FilenameToURL`, used for socket files)."""
    st = os.stat(path)
    return inode_url(st.st_dev, st.st_ino)


def parse_inode_url(url: str) -> tuple[int, int]:
    """(dev, ino) of an `inode://dev/ino` URL; like grpcfd, query and fragment are ignored."""
    parts = urlsplit(url)
    if parts.scheme != "inode":
        raise UrlError(url, 'scheme must be "inode"')
    ino_text = parts.path.removeprefix("/")
    for field, text in (("dev", parts.netloc), ("ino", ino_text)):
        if not _DECIMAL.fullmatch(text) or int(text) >= _UINT64_LIMIT:
            raise UrlError(url, f"{field} must be a decimal unsigned 64-bit number")
    return int(parts.netloc), int(ino_text)


def is_inode_url(url: str) -> bool:
    """True for anything with the `inode` scheme (well-formed or not)."""
    return urlsplit(url).scheme == "inode"


def unix_url_to_path(url: str) -> str:
    """`unix:///abs/path` → `/abs/path` (percent-escapes decoded, as Go's url.Path is)."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        raise UrlError(url, 'scheme must be "unix"')
    if parts.netloc:
        raise UrlError(url, "a unix URL has no host: write unix:///absolute/path")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise UrlError(url, "the socket path must be absolute")
    return path


def path_to_unix_url(path: str) -> str:
    """`/abs/path` → `unix:///abs/path`, escaped like Go's url.URL.String()."""
    if not path.startswith("/"):
        raise UrlError(path, "the socket path must be absolute")
    return "unix://" + quote(path, safe=_PATH_SAFE)


def parse_dial_url(url: str) -> UnixAddress | TcpAddress:
    """The address behind a `unix://` or `tcp://` URL."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return UnixAddress(unix_url_to_path(url))
    if parts.scheme == "tcp":
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise UrlError(url, f"bad port: {exc}") from None
        if not host or port is None:
            raise UrlError(url, "a tcp URL needs host:port")
        return TcpAddress(host, port)
    raise UrlError(url, 'scheme must be "unix" or "tcp"')


def grpc_target_for_url(url: str) -> str:
    """The grpcio target for a URL: unix URLs as they are (normalised), `tcp://h:p` → `h:p` (§2.1)."""
    address = parse_dial_url(url)
    if isinstance(address, UnixAddress):
        return path_to_unix_url(address.path)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"


def abstract_target(name: str) -> str:
    """grpcio's target (and `context.peer()`) form for an abstract unix socket name."""
    return f"unix-abstract:{name}"
