"""Who connected to a unix socket, as the kernel tells it (SO_PEERCRED), and which netns they act in.

Read once at accept time, while the connecting process still exists. nsm-local attests Workload API
callers with this (uid + network namespace make an identity) and checks that a client asks for links in
its own namespace.

A caller acts in its process's namespace, unless it is root and the first fd it sent (with its first
bytes) is a network namespace (`acting_in`): then it acts in that one. Root could enter that namespace
itself (setns), so this gives it nothing new; it lets one agent host act for the many routers it hosts,
each with its own identity, without a thread or process per router. Other users are not trusted so: a
process may open the namespace file of another process of its uid (`/proc/<pid>/ns/net` needs only
ptrace read rights) without being able to enter that namespace.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass, replace

_UCRED = struct.Struct("3i")
_NS_GET_NSTYPE = 0xB703  # ioctl of nsfs files (linux/nsfs.h): the namespace's CLONE_NEW* type
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    netns: int | None
    """Inode of the network namespace the caller acts in; None if the process was gone before we looked."""
    process_netns: int | None = None
    """Inode of the namespace the calling process runs in (differs from `netns` when it sent one)."""

    @property
    def delegated(self) -> bool:
        """Whether the caller acts in a namespace it sent rather than in its own."""
        return self.process_netns is not None and self.netns != self.process_netns

    def acting_in(self, netns: int) -> PeerCredentials:
        """The same caller, acting in the network namespace `netns` whose fd it sent."""
        return replace(self, netns=netns)


def is_network_namespace(fd: int) -> bool:
    """Whether `fd` is a network namespace (an nsfs file of type CLONE_NEWNET)."""
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The credentials of the process at the other end of a connected unix socket (None for TCP)."""
    if sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        netns: int | None = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        netns = None
    return PeerCredentials(pid=pid, uid=uid, gid=gid, netns=netns, process_netns=netns)
