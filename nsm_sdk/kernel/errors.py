"""Errors of the kernel layer.

Every error keeps the kernel's errno (`KernelError.errno`), so callers branch on numbers rather than on
message text. Netlink and socket errors are translated at the boundary by `kernel_errors()`, which
chains the original exception (`raise ... from exc`).
"""

from __future__ import annotations

import errno as errnos
import os
from collections.abc import Iterator
from contextlib import contextmanager

from nsm_sdk.kernel.rtnl import DumpInterrupted
from nsm_sdk.protocol.errors import NsmError

#: Errnos after which the same request may succeed if simply retried later.
TEMPORARY_ERRNOS = frozenset(
    {errnos.EAGAIN, errnos.EBUSY, errnos.EINTR, errnos.ENOBUFS, errnos.ETIMEDOUT, errnos.ENOMEM}
)


class KernelError(NsmError):
    """A netlink, netns or sysctl operation failed; `errno` is the kernel's error number, if any."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.temporary = errno in TEMPORARY_ERRNOS

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, errno={self.errno})"


class InvalidArgument(KernelError):
    """A link name, address or prefix is malformed; the caller must change it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errnos.EINVAL)


class LinkNotFound(KernelError):
    """No link of that name (or index) exists in the namespace."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errnos.ENODEV)


class LinkNameTaken(KernelError):
    """The name is in use by a link that is not the one we are ensuring (not our veth peer)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errnos.EEXIST)


class NetnsUnavailable(KernelError):
    """The netns fd cannot be entered (closed fd, not a netns, missing privilege)."""


class LinkWaitTimeout(KernelError):
    """A link did not reach the wanted state within the time allowed. Retrying may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errnos.ETIMEDOUT)


class LinkWaitCancelled(KernelError):
    """A wait for a link was stopped by the caller's stop event."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errnos.ECANCELED)


def error_for_errno(code: int, message: str) -> KernelError:
    """The most specific KernelError for an errno (used where the errno alone decides)."""
    if code == errnos.ENODEV:
        return LinkNotFound(message)
    return KernelError(message, code)


@contextmanager
def kernel_errors(action: str) -> Iterator[None]:
    """Translate netlink errors (`rtnl.NetlinkError`, an OSError carrying the kernel's own message),
    interrupted dumps and OSError raised inside the block into KernelError (errno kept)."""
    try:
        yield
    except DumpInterrupted as exc:
        raise KernelError(f"{action}: dump interrupted by concurrent changes", errnos.EINTR) from exc
    except OSError as exc:
        code = exc.errno or errnos.EIO
        raise error_for_errno(code, f"{action}: {exc.strerror or os.strerror(code)}") from exc
