"""Channels from nsm-local to registered endpoints, one per endpoint socket, reused across Requests.

Like the Go forwarder we dial the endpoint's socket file through the fd it registered with
(/proc/<pid>/fd/N). Each channel dials through a dup of its own, held as long as the channel: after the
registration goes, its fd number may come back for another endpoint's socket, and a channel that
reconnects must still reach the file it was made for. Each channel has its own relay, so the endpoint's
netns fd, which it sends with its reply, is found on that relay. We dial as the forwarder: its mTLS
identity, its tokens. `warm` connects as soon as an endpoint registers, so that the TLS handshake is not
part of its first link's setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

import grpc

from nsm_local.identities import Role
from nsm_local.registry import EndpointEntry
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.transport.client import ClientRelay, dial

_log = logging.getLogger(__name__)


@dataclass
class EndpointChannel:
    key: str
    client: NsmClient
    relay: ClientRelay
    stack: contextlib.AsyncExitStack


class EndpointDialer:
    def __init__(self, role: Role) -> None:
        self.role = role
        self.tokens = role.tokens
        self._channels: dict[str, EndpointChannel] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<EndpointDialer channels={len(self._channels)}>"

    async def get(self, entry: EndpointEntry) -> EndpointChannel:
        """The channel for the endpoint socket `entry` registered (keyed by its URL), dialled when new."""
        key = entry.record.url
        existing = self._channels.get(key)
        if existing is not None:
            return existing
        stack = contextlib.AsyncExitStack()
        dial_url = entry.dial_url
        if entry.socket_fd is not None:
            own = os.dup(entry.socket_fd)
            stack.callback(os.close, own)
            dial_url = f"unix:///proc/{os.getpid()}/fd/{own}"
        channel: grpc.aio.Channel
        try:
            channel, relay = await stack.enter_async_context(dial(dial_url, security=self.role.security))
        except BaseException:
            await stack.aclose()
            raise
        client = NsmClient(channel, self.tokens, relay)
        made = EndpointChannel(key=key, client=client, relay=relay, stack=stack)
        self._channels[key] = made
        return made

    def warm(self, entry: EndpointEntry, timeout: float = 5.0) -> None:
        """Connect to a newly registered endpoint in the background (errors are left to the first call)."""
        task = asyncio.create_task(self._warm(entry, timeout), name=f"warm {entry.record.url}")
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, entry: EndpointEntry, timeout: float) -> None:
        made = await self.get(entry)
        with contextlib.suppress(RpcFailed):
            await made.client.connection("warm-up", timeout)

    async def drop(self, key: str) -> None:
        made = self._channels.pop(key, None)
        if made is not None:
            await made.stack.aclose()

    def forget(self, key: str) -> None:
        """The endpoint behind `key` is no longer registered: close its channel (in a task of ours; calls
        still on it fail, as they would against the gone endpoint)."""
        if key in self._channels:
            task = asyncio.get_running_loop().create_task(self.drop(key), name=f"forget {key}")
            self._closing.add(task)
            task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.warning("endpoint.channel_close_failed", extra={"fields": {"error": repr(error)}})

    async def aclose(self) -> None:
        for task in list(self._warming):
            task.cancel()
        await asyncio.gather(*self._warming, *self._closing, return_exceptions=True)
        for key in list(self._channels):
            await self.drop(key)
