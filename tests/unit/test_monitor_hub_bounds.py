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


def test_streams_beyond_the_cap_are_refused_as_exhausted() -> None:
    async def main() -> None:
        hub = MonitorHub(max_subscribers=2)
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


def test_a_change_reaches_exactly_the_streams_whose_selector_matches_it() -> None:
    """The hub indexes selectors by segment id; what each stream receives must be what the selector
    rules (§8.6) give, for selectors by id, by id and name, by name only, and for everything."""
    from nsm_sdk._proto.networkservice.connection_pb2 import PathSegment

    def selector(*segments: PathSegment) -> MonitorScopeSelector:
        return MonitorScopeSelector(path_segments=list(segments))

    async def main() -> None:
        hub = MonitorHub()
        streams = {
            "c1": hub.subscribe(selector(PathSegment(id="c1"))),
            "c1-named": hub.subscribe(selector(PathSegment(id="c1", name="nsc"))),
            "c1-misnamed": hub.subscribe(selector(PathSegment(id="c1", name="other"))),
            "c2": hub.subscribe(selector(PathSegment(id="c2"))),
            "by-name": hub.subscribe(selector(PathSegment(name="nsc"))),
            "all": hub.subscribe(MonitorScopeSelector()),
        }
        for stream in streams.values():
            assert (await anext(stream)).type == ConnectionEventType.INITIAL_STATE_TRANSFER
        hub.update(conn(1))
        hub.update(conn(2))
        hub.delete("c1")
        received: dict[str, list[tuple[int, list[str]]]] = {}
        for name, stream in streams.items():
            got = []
            while True:
                try:
                    event = await asyncio.wait_for(anext(stream), 0.05)
                except TimeoutError:
                    break
                got.append((event.type, sorted(event.connections)))
            received[name] = got
            await stream.aclose()
        update, delete = ConnectionEventType.UPDATE, ConnectionEventType.DELETE
        assert received == {
            "c1": [(update, ["c1"]), (delete, ["c1"])],
            "c1-named": [(update, ["c1"]), (delete, ["c1"])],
            "c1-misnamed": [],
            "c2": [(update, ["c2"])],
            "by-name": [(update, ["c1"]), (update, ["c2"]), (delete, ["c1"])],
            "all": [(update, ["c1"]), (update, ["c2"]), (delete, ["c1"])],
        }
        assert hub._by_segment_id == {} and hub._unkeyed == set() and hub._subscribers == {}

    asyncio.run(main())


def test_a_stream_naming_a_segment_id_starts_with_exactly_the_connections_that_carry_it() -> None:
    async def initial(hub: MonitorHub, segment_id: str) -> list[str]:
        selector = MonitorScopeSelector()
        selector.path_segments.add(id=segment_id)
        stream = hub.subscribe(selector)
        event = await anext(stream)
        await stream.aclose()
        assert event.type == ConnectionEventType.INITIAL_STATE_TRANSFER
        return sorted(event.connections)

    async def main() -> None:
        hub = MonitorHub()
        for number in range(3):
            hub.update(conn(number))
        moved = conn(1)
        moved.path.path_segments[0].id = "elsewhere"  # a refresh that changed the connection's path
        hub.update(moved)
        hub.delete("c2")
        assert await initial(hub, "c0") == ["c0"]
        assert await initial(hub, "c1") == [], "its path no longer carries c1"
        assert await initial(hub, "elsewhere") == ["c1"]
        assert await initial(hub, "c2") == [], "deleted"

    asyncio.run(main())
