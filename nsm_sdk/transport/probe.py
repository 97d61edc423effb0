"""Why nothing answers at a socket URL, in words a person can act on.

gRPC only says UNAVAILABLE or DEADLINE_EXCEEDED when a server is missing. Whoever reports that (a sidecar's
`manager.unreachable`, the `nsm-local` CLI) asks `socket_problem` for the reason: no socket file, a stale
socket nobody listens on, a file that is not a socket, no permission, or a TCP port that refuses or stays
silent. One plain connect attempt, no gRPC: it says nothing about whether the server would answer gRPC.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from nsm_sdk.transport.errors import UrlError
from nsm_sdk.transport.urls import TcpAddress, parse_dial_url

CONNECT_TIMEOUT = 1.0
"""Seconds a TCP connect may take before the port counts as silent (a unix connect never waits)."""


def socket_problem(url: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when something accepts connections at `url` (`unix://` or `tcp://`); else what is wrong, in
    words meant to follow the URL (``f"{url}: {problem}"``)."""
    try:
        address = parse_dial_url(url)
    except UrlError as exc:
        return str(exc)
    if isinstance(address, TcpAddress):
        return _tcp_problem(address, timeout)
    return _unix_problem(address.path)


def _unix_problem(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no socket there (no such file)"
    except OSError as exc:
        return f"cannot look at the path: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return "the file there is not a socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return (
                "the socket file exists but nothing listens on it (stale: the program that made it is gone)"
            )
        except PermissionError:
            return "the socket exists but this user may not connect to it (permission denied)"
        except OSError as exc:
            return f"cannot connect: {exc.strerror}"
    return None


def _tcp_problem(address: TcpAddress, timeout: float) -> str | None:
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "the port refuses connections (nothing listens there)"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except socket.gaierror as exc:
        return f"cannot resolve {address.host}: {exc.strerror}"
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        return f"cannot connect: {reason}"
