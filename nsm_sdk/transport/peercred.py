"""Who connected to a unix socket, as the kernel tells it (SO_PEERCRED), and which netns they were in.

Read once at accept time, while the connecting process still exists. nsm-local attests Workload API
callers with this (uid + network namespace make an identity) and checks that a client asks for links in
its own namespace.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    netns: int | None
    """Inode of the caller's network namespace; None if the process was gone before we looked."""


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The credentials of the process at the other end of a connected unix socket (None for TCP)."""
    if sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        netns: int | None = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        netns = None
    return PeerCredentials(pid=pid, uid=uid, gid=gid, netns=netns)
