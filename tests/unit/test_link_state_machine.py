"""The client's per-link state machine (nsc_sidecar/link.py) against a fake manager and a fake clock:
start-up adoption, requests whose outcome is unknown, refresh, heal and reselect. The kernel checks are
replaced by a switch (`Kernel.healthy`); the real ones are covered by the system tier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

import nsc_sidecar.link as link_module
from nsc_sidecar.link import Link, LinkState
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    State,
)
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.link_check import SideCheck
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import RpcFailed
from nsm_sdk.protocol.nsurl import parse_seed_services
from nsm_sdk.protocol.requests import KERNEL

NOW = 1_000_000.0
NAME = "nsc-a"
CONN_ID = f"{NAME}-0"


def reply_for(request: NetworkServiceRequest, endpoint: str = "nse-1", lifetime: float = 600.0) -> Connection:
    """What a manager answers: the client's segment and its own, the endpoint chosen, kernel mechanism."""
    conn = Connection()
    conn.CopyFrom(request.connection)
    del conn.path.path_segments[1:]
    conn.path.path_segments.add(name="nsmgr", id="mgr-1")
    for segment in conn.path.path_segments:
        segment.expires.FromSeconds(int(NOW + lifetime))
    conn.network_service_endpoint_name = endpoint
    conn.mechanism.type = KERNEL
    conn.mechanism.parameters["name"] = "eth12"
    conn.context.ip_context.src_ip_addrs[:] = ["10.60.1.1/30"]
    conn.state = State.UP
    return conn


def manager_view(reply: Connection) -> Connection:
    """The same connection as the manager's monitor shows it: its own index and id."""
    view = Connection()
    view.CopyFrom(reply)
    view.path.index = 1
    view.id = "mgr-1"
    return view


class FakeManager:
    """Answers Requests from a script; `held` is what its monitor reports as still held."""

    def __init__(self) -> None:
        self.requests: list[NetworkServiceRequest] = []
        self.closed: list[Connection] = []
        self.held: list[Connection] = []
        self.script: list[Callable[[NetworkServiceRequest], Connection]] = []
        self.events: asyncio.Queue[ConnectionEvent] = asyncio.Queue()
        self.answered = asyncio.Event()

    async def request(
        self, request: NetworkServiceRequest, timeout: float, check_reply: bool = False
    ) -> Connection:
        copy = NetworkServiceRequest()
        copy.CopyFrom(request)
        self.requests.append(copy)
        step = self.script.pop(0) if self.script else reply_for
        try:
            return step(copy)
        finally:
            self.answered.set()

    async def held_connections(self, selector: MonitorScopeSelector, timeout: float) -> list[Connection]:
        return list(self.held)

    async def monitor(self, selector: MonitorScopeSelector) -> AsyncIterator[ConnectionEvent]:
        while True:
            yield await self.events.get()

    async def close(self, conn: Connection, timeout: float) -> None:
        self.closed.append(conn)


def fail(
    code: grpc.StatusCode, then_held: FakeManager | None = None
) -> Callable[[NetworkServiceRequest], Connection]:
    """A failed Request; with `then_held`, the manager carried it out all the same (our deadline passed)."""

    def step(request: NetworkServiceRequest) -> Connection:
        if then_held is not None:
            then_held.held.append(manager_view(reply_for(request)))
        raise RpcFailed("NetworkService/Request", code, f"scripted {code.name}")

    return step


class Kernel:
    healthy = True
    checks = 0


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    state = Kernel()

    async def check(*_: Any, **__: Any) -> SideCheck:
        state.checks += 1
        return SideCheck([] if state.healthy else ["link eth12 not found"])

    monkeypatch.setattr(link_module, "check_side", check)
    monkeypatch.setattr(link_module, "RETRY", link_module.Backoff(base=0.01, factor=1.0, cap=0.01))
    return state


def make_link(manager: FakeManager, clock: Callable[[], float] = lambda: NOW) -> Link:
    (spec,) = parse_seed_services("NS_NETWORKSERVICEMESH_IO", "p2p/eth12?link=net-0&peerif=eth21")
    return Link(
        spec,
        NAME,
        "inode://4/4026531840",
        manager,
        5.0,
        lambda *_: None,
        EventLog("test"),
        clock,  # type: ignore[arg-type]
    )


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition()` holds (the callers bound the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)


async def run_until(link: Link, done: Callable[[], bool], seconds: float = 5.0) -> None:
    """Run the link until `done()`, then stop it (it closes its connection) and wait for it."""
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        async with asyncio.timeout(seconds):
            await until(done)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)


def test_a_first_request_carried_out_after_our_deadline_is_adopted_not_asked_for_twice(
    kernel: Kernel,
) -> None:
    async def main() -> None:
        manager = FakeManager()
        manager.script = [fail(grpc.StatusCode.DEADLINE_EXCEEDED, then_held=manager)]
        link = make_link(manager)
        await run_until(link, lambda: link.state == LinkState.ESTABLISHED)
        first, second = manager.requests[:2]
        assert not first.connection.network_service_endpoint_name
        assert second.connection.network_service_endpoint_name == "nse-1", "a refresh of what was made"
        assert [s.id for s in second.connection.path.path_segments] == [CONN_ID, "mgr-1"]
        assert second.connection.id == CONN_ID and second.connection.path.index == 0

    asyncio.run(main())


def test_a_refused_first_request_is_sent_again_as_a_first_request(kernel: Kernel) -> None:
    async def main() -> None:
        manager = FakeManager()
        manager.script = [fail(grpc.StatusCode.NOT_FOUND), fail(grpc.StatusCode.DEADLINE_EXCEEDED)]
        link = make_link(manager)
        await run_until(link, lambda: link.state == LinkState.ESTABLISHED)
        assert [bool(r.connection.network_service_endpoint_name) for r in manager.requests[:3]] == [
            False,
            False,
            False,
        ], "nothing was made, so nothing is adopted"

    asyncio.run(main())


def test_start_up_refreshes_the_connection_a_previous_run_left(kernel: Kernel) -> None:
    async def main() -> None:
        manager = FakeManager()
        left = reply_for(make_first_request())
        manager.held = [manager_view(left)]
        link = make_link(manager)
        await run_until(link, lambda: link.state == LinkState.ESTABLISHED)
        assert manager.requests[0].connection.network_service_endpoint_name == "nse-1"
        assert manager.requests[0].connection.context.ip_context.src_ip_addrs == ["10.60.1.1/30"]

    asyncio.run(main())


def test_a_refresh_goes_out_when_due_pinned_to_the_same_endpoint(kernel: Kernel) -> None:
    async def main() -> None:
        manager = FakeManager()
        # the clock says the tokens are nearly spent: the refresh is due at once
        link = make_link(manager, clock=lambda: NOW + 599.9)
        await run_until(link, lambda: len(manager.requests) >= 3)
        assert all(r.connection.network_service_endpoint_name == "nse-1" for r in manager.requests[1:3])
        assert manager.closed and manager.closed[-1].network_service_endpoint_name == "nse-1"

    asyncio.run(main())


def test_a_down_connection_is_refreshed_while_our_side_works_and_reselected_once_it_is_gone(
    kernel: Kernel,
) -> None:
    async def main() -> None:
        manager = FakeManager()
        link = make_link(manager)
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(stop))
        async with asyncio.timeout(5):
            await until(lambda: link.state == LinkState.ESTABLISHED)
            down = manager_view(reply_for(manager.requests[0]))
            down.state = State.DOWN
            manager.events.put_nowait(
                ConnectionEvent(type=ConnectionEventType.UPDATE, connections={"m": down})
            )
            await until(lambda: len(manager.requests) >= 2)
            assert manager.requests[1].connection.network_service_endpoint_name == "nse-1", (
                "healed by a refresh"
            )
            assert not manager.closed

            kernel.healthy = False
            manager.events.put_nowait(
                ConnectionEvent(type=ConnectionEventType.UPDATE, connections={"m": down})
            )
            await until(lambda: len(manager.requests) >= 3)
            kernel.healthy = True
        reselect = manager.requests[2].connection
        assert reselect.state == State.RESELECT_REQUESTED and not reselect.network_service_endpoint_name
        assert manager.closed, "the old connection is closed before asking for another endpoint"
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def make_first_request() -> NetworkServiceRequest:
    request = NetworkServiceRequest()
    request.connection.id = CONN_ID
    request.connection.network_service = "p2p"
    request.connection.path.path_segments.add(name=NAME, id=CONN_ID)
    return request


def test_refreshes_that_change_nothing_check_the_kernel_once_per_recheck_interval(kernel: Kernel) -> None:
    """One refresh a second (the fake clock moves a second per Request): our side is read at the first
    reply and then once the last clean check is RECHECK_AFTER old; a reply with other addresses at once."""

    async def main() -> None:
        now = [NOW]
        checks_before: list[int] = []  # kernel checks made before each Request

        def a_second_later(request: NetworkServiceRequest, src: str = "10.60.1.1/30") -> Connection:
            checks_before.append(kernel.checks)
            now[0] += 1.0
            reply = reply_for(request, lifetime=0.0)  # expired at once: the next refresh follows at once
            reply.context.ip_context.src_ip_addrs[:] = [src]
            return reply

        manager = FakeManager()
        manager.script = [a_second_later] * 11 + [lambda r: a_second_later(r, "10.60.1.5/30")] * 3
        link = make_link(manager, clock=lambda: now[0])
        await run_until(link, lambda: len(checks_before) >= 14)
        assert link_module.RECHECK_AFTER == 5.0
        # replies at t = 1..11 s with one context: checked at 1, 6 and 11
        assert checks_before[1:12] == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
        # the reply at t = 12 s carries other addresses: checked at once, then not again within 5 s
        assert checks_before[12:14] == [4, 4]

    asyncio.run(main())
