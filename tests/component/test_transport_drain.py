"""Retiring a relay connection is graceful (relay.py, http2.py): the HTTP/2 client gets a GOAWAY, new calls
go out on a new connection, calls in flight finish on the old one, and only what is still open after
`DRAIN_GRACE` is cut. Real grpc.aio on both ends, mTLS with development CA certificates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from relay_helpers import SERVICE, Servicer, call, eventually, serving

from nsm_local.dev_ca import DevCA
from nsm_sdk.transport import relay
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.tls import TlsSecurity

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
TD = "nsm.local"
CLIENT_ID = f"spiffe://{TD}/ns/default/pod/nsc"
SERVER_ID = f"spiffe://{TD}/ns/nsm-system/pod/nsmgr"
TTL = 3600.0
WAIT = 5.0


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate(TD)


@pytest.fixture
def relay_events(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """`relay_events(event)`: the connection names of every relay log record of that event so far."""
    caplog.set_level(logging.INFO, logger="nsm_sdk.transport")
    return lambda event: [r.fields["name"] for r in caplog.records if r.getMessage() == event]  # type: ignore[attr-defined]


async def within(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    async with asyncio.timeout(seconds):
        await eventually(condition)


def test_calls_in_flight_finish_on_a_retired_connection_while_new_calls_take_a_new_one(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, relay_events: Callable[[str], list[str]]
) -> None:
    async def main() -> None:
        servicer = Servicer()
        server_security = TlsSecurity(lambda: ca.issue(SERVER_ID, TTL))
        async with serving(sock_dir / "s.sock", servicer, security=server_security) as handle:
            servicer.handle = handle
            client_svid = ca.issue(CLIENT_ID, TTL)
            async with dial(handle.url, security=TlsSecurity(lambda: client_svid)) as (channel, client_relay):
                slow = asyncio.create_task(call(channel, "Sleep", b"1.0"))
                await within(lambda: len(servicer.connections) == 1)
                (first,) = client_relay.connections
                first.retire("a test retires it")
                await client_relay.wait_retired(first, WAIT)
                assert first.drain_announced and not first.closed

                assert await call(channel, "Sleep", b"0") == b"0"
                old_server_side, new_server_side = servicer.connections
                assert new_server_side is not old_server_side, "the new call went out on a new connection"
                assert await slow == b"1.0", "the call in flight finished on the retired connection"
                await within(lambda: first.closed and old_server_side.closed)
                assert relay_events("relay.retired") == [first.name]
                assert relay_events("relay.drain_cut") == [], "grpcio closed it itself once its call ended"

    run_async(main)


def test_a_server_svid_rotation_lets_the_call_in_flight_finish(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    monkeypatch: pytest.MonkeyPatch,
    relay_events: Callable[[str], list[str]],
) -> None:
    monkeypatch.setattr(relay, "RETIRE_POLL", 0.05)
    # Valid for a few more seconds, already past three quarters of its life: retired once it rotates.
    svids = [ca.issue(SERVER_ID, 6.0)]
    assert svids[0].retire_at < time.time() < svids[0].not_after - 3.0

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=TlsSecurity(lambda: svids[-1])) as handle:
            servicer.handle = handle
            client_svid = ca.issue(CLIENT_ID, TTL)
            async with dial(handle.url, security=TlsSecurity(lambda: client_svid)) as (channel, client_relay):
                slow = asyncio.create_task(call(channel, "Sleep", b"1.0"))
                await within(lambda: len(servicer.connections) == 1)
                (old,) = servicer.connections
                (client_side,) = client_relay.connections
                svids.append(ca.issue(SERVER_ID, TTL))
                await within(lambda: old.drain_announced)
                # the client relay saw the server's GOAWAY go by: tokens are no longer signed for it
                assert client_side.retiring and client_relay.current_connection() is not client_side

                assert await call(channel, "Sleep", b"0") == b"0"
                assert servicer.connections[-1] is not old
                peer = servicer.connections[-1].peer
                assert peer is not None and peer.spiffe_id == CLIENT_ID
                assert await slow == b"1.0"
                await within(lambda: old.closed)
                (current,) = client_relay.connections
                assert current.peer is not None and current.peer.certificate == svids[1].leaf
        assert relay_events("relay.retired") == [old.name]
        assert relay_events("relay.drain_cut") == []

    run_async(main)


def test_a_stream_still_open_after_the_drain_grace_is_cut_and_the_channel_goes_on(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    monkeypatch: pytest.MonkeyPatch,
    relay_events: Callable[[str], list[str]],
) -> None:
    monkeypatch.setattr(relay, "DRAIN_GRACE", 0.5)

    async def main() -> None:
        servicer = Servicer()
        server_security = TlsSecurity(lambda: ca.issue(SERVER_ID, TTL))
        async with serving(sock_dir / "s.sock", servicer, security=server_security) as handle:
            servicer.handle = handle
            client_svid = ca.issue(CLIENT_ID, TTL)
            async with dial(handle.url, security=TlsSecurity(lambda: client_svid)) as (channel, client_relay):
                stream = channel.unary_stream(f"/{SERVICE}/Hold", None, None)(b"", wait_for_ready=True)
                assert await stream.read() == b"held"
                (first,) = client_relay.connections
                first.retire("a test retires it")
                await within(lambda: first.closed)
                with pytest.raises(grpc.aio.AioRpcError) as cut:
                    await stream.read()
                assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
                assert relay_events("relay.drain_cut") == [first.name]
                assert await call(channel, "Echo", b"still works") == b"still works"

    run_async(main)
