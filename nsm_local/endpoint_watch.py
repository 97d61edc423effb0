"""Following one connection at its endpoint: the manager's monitor stream to the endpoint (§5.4)."""

from __future__ import annotations

import asyncio
import contextlib

from nsm_local.endpoint_dialer import EndpointChannel
from nsm_sdk._proto.networkservice.connection_pb2 import ConnectionEventType, MonitorScopeSelector
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import RpcFailed
from nsm_sdk.protocol.errors import TemporaryError

ENDPOINT_MONITOR_RESUME = 3.0
"""How long a (re-)opened monitor stream to an endpoint may take to deliver its first event."""


class StreamBroke(TemporaryError):
    """A monitor stream to an endpoint broke (`worked`: after delivering its first event)."""

    def __init__(self, reason: str, worked: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.worked = worked


async def follow_endpoint(
    channel: EndpointChannel, selector: MonitorScopeSelector, check_listed: bool, log: EventLog
) -> bool:
    """Events of one connection until it is deleted (True) or the stream ends (False); StreamBroke if it
    breaks, or (`check_listed`) if the endpoint's first answer does not list the connection."""
    stream = channel.client.monitor(selector)
    worked = False
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async with asyncio.timeout(ENDPOINT_MONITOR_RESUME):
                first = await anext(stream)
            if check_listed:
                if first.type == ConnectionEventType.INITIAL_STATE_TRANSFER and not first.connections:
                    raise StreamBroke("the endpoint no longer knows the connection", worked=False)
                log.debug("endpoint.monitor_resumed", forwarder_id=selector.path_segments[0].id)
            worked = True
            if first.type == ConnectionEventType.DELETE:
                return True
            async for event in stream:
                if event.type == ConnectionEventType.DELETE:
                    return True
    except (RpcFailed, TimeoutError) as exc:
        raise StreamBroke(str(exc) or "no answer in time", worked=worked) from exc
    return False
