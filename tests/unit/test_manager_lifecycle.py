"""nsm-local's manager after a connection is made: expiry, teardown and endpoints that go, against fakes
(no kernel, no gRPC: the forwarder and the endpoint channels are replaced) and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

import nsm_local.manager as manager_module
from nsm_local.forwarder import CrossConnect
from nsm_local.manager import ManagerServicer
from nsm_local.ownership import ConnectionOwners, LinkEnd, LinkNameInUse
from nsm_local.registry import EndpointEntry, Registry
from nsm_local.sessions import Session
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    State,
)
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry.registry_pb2 import NetworkServiceEndpoint
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub

URL = "inode://1/100"


class FakeDialer:
    """Channels to endpoints: records the Closes sent through them and the channels forgotten."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.closed_at_endpoint: list[str] = []

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    async def get(self, entry: EndpointEntry) -> Any:
        async def close(conn: Connection, timeout: float) -> None:
            self.closed_at_endpoint.append(conn.path.path_segments[-1].id)

        return SimpleNamespace(key=entry.record.url, client=SimpleNamespace(close=close))


class Forwarder:
    """Stands in for the kernel: which pairs were removed."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    async def remove(self, xc: CrossConnect) -> bool:
        self.removed.append(xc.client_ifname)
        return True


@pytest.fixture
def forwarder(monkeypatch: pytest.MonkeyPatch) -> Forwarder:
    fake = Forwarder()
    monkeypatch.setattr(manager_module, "remove_cross_connect", fake.remove)
    return fake


def make_manager(registry: Registry, dialer: FakeDialer, clock: list[float]) -> ManagerServicer:
    identity: Any = SimpleNamespace(
        manager=SimpleNamespace(tokens=None), forwarder=SimpleNamespace(tokens=None)
    )
    return ManagerServicer(
        registry,
        dialer,  # type: ignore[arg-type]
        identity,
        ConnectionOwners(None),
        MonitorHub(),
        lambda: None,  # type: ignore[arg-type,return-value]
        EventLog("test"),
        clock=lambda: clock[0],
    )


def session(conn_id: str, ifname: str = "eth12", key: str = URL) -> Session:
    view = Connection(id=conn_id, network_service="p2p", state=State.UP)
    view.path.index = 1
    view.path.path_segments.add(name="nsc", id=f"client-{conn_id}")
    view.path.path_segments.add(name="nsmgr-local", id=conn_id)
    endpoint_conn = Connection()
    for name in ("nsc", "nsmgr-local", "forwarder-local", "nse"):
        endpoint_conn.path.path_segments.add(name=name, id=f"{name}-{conn_id}")
    return Session(
        manager_view=view,
        endpoint_name="nse-1",
        endpoint_key=key,
        endpoint_conn=endpoint_conn,
        xc=CrossConnect(-1, ifname, None, "eth21"),
        owner="spiffe://nsm.local/nsc",
        ends=(LinkEnd(1, ifname), LinkEnd(2, "eth21")),
        fds_closed=True,  # no real fds here
    )


def hold(manager: ManagerServicer, new: Session) -> None:
    """As `_store` does, without a watch task or an armed expiry."""
    manager._hold(new)
    manager.owners.set(new.manager_view.id, new.owner)
    manager.hub.update(new.manager_view)


@pytest.fixture
def registry() -> Iterator[Registry]:
    made = Registry()
    made.register_endpoint(EndpointEntry(record=NetworkServiceEndpoint(name="nse-1", url=URL), dial_url=URL))
    yield made
    made.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_expiry_that_fires_during_a_refresh_leaves_the_refreshed_connection(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        manager = make_manager(registry, FakeDialer(), [0.0])
        old = session("m-1")
        hold(manager, old)
        async with manager._locks.hold("m-1"):  # a refresh is under way
            manager._expire("m-1")  # the old deadline fires meanwhile
            await settle()
            hold(manager, session("m-1"))  # the refresh stores its new session
        await settle()
        assert manager.sessions["m-1"] is not old
        assert forwarder.removed == [], "the link of a refreshed connection is never torn down"
        assert len(manager._locks) == 0

    asyncio.run(main())


def test_an_expiry_removes_the_link_closes_at_the_endpoint_tells_monitors_and_forgets_the_owner(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        dialer = FakeDialer()
        manager = make_manager(registry, dialer, [0.0])
        hold(manager, session("m-1"))
        events = manager.hub.subscribe(MonitorScopeSelector())
        await anext(events)
        manager._expire("m-1")
        deleted: ConnectionEvent = await asyncio.wait_for(anext(events), 5)
        await settle()
        assert deleted.type == ConnectionEventType.DELETE and "m-1" in deleted.connections
        assert forwarder.removed == ["eth12"] and manager.sessions == {}
        assert dialer.closed_at_endpoint == ["nse-m-1"], "the endpoint is told to release it"
        assert manager.owners.owner("m-1") is None
        await events.aclose()

    asyncio.run(main())


def test_an_unregistered_endpoint_takes_its_connections_down_and_its_channel_goes(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        dialer = FakeDialer()
        manager = make_manager(registry, dialer, [0.0])
        registry.on_endpoint_gone = manager.endpoint_gone
        hold(manager, session("m-1"))
        hold(manager, session("m-2", "eth13", key="inode://1/200"))  # another endpoint's
        events = manager.hub.subscribe(MonitorScopeSelector())
        await anext(events)
        registry.unregister_endpoint("nse-1")
        down = await asyncio.wait_for(anext(events), 5)
        assert down.connections["m-1"].state == State.DOWN, "its client heals at once"
        assert dialer.forgotten == [URL]
        assert forwarder.removed == [], "the link itself goes when the client heals or closes"
        await events.aclose()

    asyncio.run(main())


def test_the_channel_of_an_expired_registration_goes_only_once_unused(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        dialer = FakeDialer()
        manager = make_manager(registry, dialer, [0.0])
        registry.on_endpoint_gone = manager.endpoint_gone
        hold(manager, session("m-1"))
        registry.unregister_endpoint("nse-1", "expired")  # it may come back: keep the channel in use
        assert dialer.forgotten == []
        assert manager.sessions["m-1"].manager_view.state == State.UP
        manager._expire("m-1")
        await settle()
        assert dialer.forgotten == [URL], "unused and unregistered: closed"

    asyncio.run(main())


def test_an_overloaded_manager_puts_an_expiry_off_until_just_before_the_callers_token_runs_out(
    registry: Registry, forwarder: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that reached us in time may still wait in our queues when the close deadline passes:
    while the loop lags, the connection lives until just before the caller's token expires."""

    async def main() -> None:
        clock = [100.0]
        manager = make_manager(registry, FakeDialer(), clock)
        old = session("m-1")
        old.token_expires = 102.0
        hold(manager, old)
        manager.lag.record(0.5)  # the loop just ran half a second late
        manager._expire("m-1")  # the Go deadline (token expiry minus request timeout) passes
        await settle()
        assert manager.sessions["m-1"] is old and forwarder.removed == []
        assert old.expiry is not None, "it looks again later"
        manager._expire("m-1")  # still overloaded, token still valid: one warning for the spell
        await settle()
        assert manager.sessions["m-1"] is old
        assert [r.getMessage() for r in caplog.records].count("manager.overloaded") == 1
        old.expiry.cancel()
        clock[0] = 101.0  # a second before the caller's token runs out (the endpoint must still take the
        # Close), overloaded or not
        manager._expire("m-1")
        await settle()
        assert "m-1" not in manager.sessions and forwarder.removed == ["eth12"]

    asyncio.run(main())


def test_a_manager_that_keeps_up_closes_at_the_go_deadline_though_the_token_is_still_valid(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        manager = make_manager(registry, FakeDialer(), [100.0])
        old = session("m-1")
        old.token_expires = 102.0
        hold(manager, old)
        manager.lag.record(0.01)  # a healthy loop's lag
        manager._expire("m-1")
        await settle()
        assert "m-1" not in manager.sessions and forwarder.removed == ["eth12"]

    asyncio.run(main())


def test_an_interface_name_a_live_connection_holds_is_refused_to_others_until_it_lets_go(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        manager = make_manager(registry, FakeDialer(), [0.0])
        hold(manager, session("m-1", "eth12"))
        with pytest.raises(LinkNameInUse, match="eth12 in netns 1 is in use by connection m-1"):
            manager._check_link_free(LinkEnd(1, "eth12"), "m-2")
        manager._check_link_free(LinkEnd(1, "eth12"), "m-1")  # its own name, on a refresh
        manager._check_link_free(LinkEnd(3, "eth12"), "m-2")  # the same name in another namespace
        hold(manager, session("m-1", "eth13"))  # a refresh moved it to another name
        manager._check_link_free(LinkEnd(1, "eth12"), "m-2")
        with pytest.raises(LinkNameInUse):
            manager._check_link_free(LinkEnd(1, "eth13"), "m-2")
        await manager._teardown(manager.sessions["m-1"], "closed", call_endpoint=False)
        manager._check_link_free(LinkEnd(1, "eth13"), "m-2")
        assert manager._ends == {} and manager.sessions == {}

    asyncio.run(main())


class ExpiredContext:
    """A servicer context whose caller's deadline has passed."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    def time_remaining(self) -> float:
        return -0.3

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise asyncio.CancelledError  # as grpc's abort ends the handler


def test_a_request_whose_deadline_passed_in_the_queue_is_shed_without_any_work(
    registry: Registry, forwarder: Forwarder
) -> None:
    async def main() -> None:
        manager = make_manager(registry, FakeDialer(), [0.0])
        context = ExpiredContext()
        request = NetworkServiceRequest(connection=Connection(id="c-1", network_service="p2p"))
        with pytest.raises(asyncio.CancelledError):
            await manager.Request(request, context)  # type: ignore[arg-type]
        assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert manager.sessions == {} and len(manager._tasks) == 0 and forwarder.removed == []

    asyncio.run(main())
