"""What nsm-local keeps per live connection: a `Session`, keyed by our (nsmgr) segment id."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

from nsm_local.forwarder import CrossConnect
from nsm_local.ownership import LinkEnd
from nsm_sdk._proto.networkservice.connection_pb2 import Connection


def client_connection_id(manager_view: Connection) -> str:
    """The id the client knows the connection by: its own path segment's, the one before ours."""
    path = manager_view.path
    return path.path_segments[path.index - 1].id if 0 < path.index <= len(path.path_segments) else ""


@dataclass
class Session:
    manager_view: Connection  # index 1, id = our segment id; what monitors see
    endpoint_name: str
    endpoint_key: str
    endpoint_conn: Connection  # the endpoint's reply (forwarder's view), re-sent on refresh and Close
    xc: CrossConnect  # owns the client's netns fd (the endpoint's is closed once the pair exists)
    owner: str | None  # the identity that opened it
    ends: tuple[LinkEnd, LinkEnd]  # (client, endpoint) interface names and their namespaces
    expiry: asyncio.TimerHandle | None = None
    token_expires: float | None = None  # the caller's expiry: no later than this, even when overloaded
    monitor: asyncio.Task[None] | None = None
    fds_closed: bool = field(default=False)
    kernel_checked: float = 0.0  # when the link was last created, confirmed or repaired in the kernel

    @property
    def forwarder_id(self) -> str:
        return self.endpoint_conn.path.path_segments[2].id

    def close_fds(self) -> None:
        if not self.fds_closed:
            self.fds_closed = True
            with contextlib.suppress(OSError):
                os.close(self.xc.client_ns_fd)
