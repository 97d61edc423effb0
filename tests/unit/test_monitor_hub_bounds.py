"""The monitor hub's bounds (agent/monitor_hub.py): how many streams, and how far one may fall behind."""

from __future__ import annotations

import asyncio

import pytest

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, ConnectionEventType, MonitorScopeSelector
from nsm_sdk.agent import monitor_hub
from nsm_sdk.agent.monitor_hub import MonitorHub
from nsm_sdk.protocol.errors import ExhaustedError


def conn(number: int) -> Connection:
    made = Connection(id=f"c{number}", network_service="p2p")
    made.path.path_segments.add(name="nsc", id=f"c{number}")
    return made


def test_a_subscriber_too_far_behind_is_cut_off_and_a_keeping_up_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor_hub, "MAX_BACKLOG", 3)

    async def main() -> None:
        hub = MonitorHub()
        slow, fast = hub.subscribe(MonitorScopeSelector()), hub.subscribe(MonitorScopeSelector())
        for stream in (slow, fast):
            assert (await anext(stream)).type == ConnectionEventType.INITIAL_STATE_TRANSFER
        for number in range(5):
            hub.update(conn(number))
            assert (await anext(fast)).connections[f"c{number}"].id == f"c{number}"
        for number in range(3):
            assert f"c{number}" in (await anext(slow)).connections
        with pytest.raises(ExhaustedError, match="fell 3 events behind"):
            await anext(slow)
        hub.update(conn(9))
        assert "c9" in (await anext(fast)).connections
        await fast.aclose()
        assert "subscribers=0" in repr(hub)

    asyncio.run(main())


def test_streams_beyond_the_cap_are_refused_as_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_hub, "MAX_SUBSCRIBERS", 2)

    async def main() -> None:
        hub = MonitorHub()
        streams = [hub.subscribe(MonitorScopeSelector()) for _ in range(3)]
        await anext(streams[0])
        await anext(streams[1])
        with pytest.raises(ExhaustedError, match="at most 2 monitor streams"):
            await anext(streams[2])
        await streams[0].aclose()
        third = hub.subscribe(MonitorScopeSelector())
        assert (await anext(third)).type == ConnectionEventType.INITIAL_STATE_TRANSFER
        for stream in (streams[1], third):
            await stream.aclose()

    asyncio.run(main())
