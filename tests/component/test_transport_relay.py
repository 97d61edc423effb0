"""gRPC through ClientRelay and ServerRelay with real grpc.aio, real unix sockets and real fds (§6, §12).

The test service and the fd census are in relay_helpers (shared with the mTLS tests).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from relay_helpers import (
    CALL_TIMEOUT,
    SERVICE,
    Servicer,
    as_keys,
    call,
    eventually,
    fd_census,
    no_leaks_since,
    pipe_read_ends,
    serving,
)

from nsm_sdk.transport import (
    ClientRelay,
    FdNotReceivedError,
    InodeKey,
    ListenPathError,
    dial,
    inode_key_of,
    inode_url_for_fd,
    open_netns_fd,
    parse_inode_url,
    path_to_unix_url,
    serve,
)
from nsm_sdk.transport.urls import abstract_target

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
# Fast reconnects keep the restart test short; nothing asserts on time.
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200))


def test_client_netns_fd_arrives_with_first_bytes_and_servicer_finds_it(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        servicer = Servicer()
        netns = open_netns_fd()
        try:
            async with serving(sock_dir / "nse.sock", servicer) as handle:
                servicer.handle = handle
                async with dial(handle.url, send_fds=[netns]) as (channel, _relay):
                    response = await call(channel, "Keys", inode_url_for_fd(netns).encode())
            assert as_keys(response) == [inode_key_of(netns)]
        finally:
            os.close(netns)

    run_async(main)


def test_server_queued_fd_rides_back_with_the_response(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        with pipe_read_ends(1) as (give,):
            servicer = Servicer(give_fd=give)
            async with serving(sock_dir / "nse.sock", servicer) as handle:
                servicer.handle = handle
                async with dial(handle.url) as (channel, relay):
                    url = (await call(channel, "SendBack", b"")).decode()
                    dev, ino = parse_inode_url(url)
                    received = await relay.wait_fd(dev, ino, timeout=CALL_TIMEOUT)
                    assert inode_key_of(received) == inode_key_of(give)
                    os.close(received)

    run_async(main)


def test_server_fds_go_only_with_the_reply_that_queues_them_never_on_accept(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with pipe_read_ends(1) as (give,):
            servicer = Servicer(give_fd=give)
            async with serving(sock_dir / "nse.sock", servicer) as handle:
                servicer.handle = handle
                async with dial(handle.url) as (channel, relay):
                    # The server's SETTINGS and a whole reply have come in: nothing rode on them.
                    assert await call(channel, "Echo", b"ping") == b"ping"
                    (connection,) = relay.connections
                    assert connection.received.keys() == []
                    url = (await call(channel, "SendBack", b"")).decode()
                    assert url == inode_url_for_fd(give)
                    assert connection.received.keys() == [inode_key_of(give)]

    run_async(main)


def test_concurrent_connections_each_see_only_their_own_fds(run_async: AsyncRunner, sock_dir: Path) -> None:
    clients = 8

    async def one_client(url: str, fd: int) -> list[InodeKey]:
        async with dial(url, send_fds=[fd]) as (channel, _relay):
            return as_keys(await call(channel, "Keys", inode_url_for_fd(fd).encode()))

    async def main() -> None:
        with pipe_read_ends(clients) as fds:
            servicer = Servicer()
            async with serving(sock_dir / "nse.sock", servicer) as handle:
                servicer.handle = handle
                seen = await asyncio.gather(*(one_client(handle.url, fd) for fd in fds))
            assert seen == [[inode_key_of(fd)] for fd in fds]
            assert len({id(connection) for connection in servicer.connections}) == clients

    run_async(main)


def test_one_mib_messages_relay_intact_both_ways(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        payload = os.urandom(1 << 20)
        servicer = Servicer()
        async with serving(sock_dir / "nse.sock", servicer) as handle:
            servicer.handle = handle
            async with dial(handle.url) as (channel, _relay):
                for _ in range(3):
                    assert await call(channel, "Echo", payload) == payload

    run_async(main)


def test_server_streaming_rpc_through_both_relays(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "nse.sock", servicer) as handle:
            servicer.handle = handle
            async with dial(handle.url) as (channel, _relay):
                stream = channel.unary_stream(f"/{SERVICE}/Count", None, None)(b"200", timeout=CALL_TIMEOUT)
                received = [message async for message in stream]
        assert received == [str(number).encode() * 1000 for number in range(200)]

    run_async(main)


def test_reconnect_after_server_restart_resends_send_on_connect_fds(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        path = sock_dir / "nse.sock"
        netns = open_netns_fd()
        request = inode_url_for_fd(netns).encode()
        try:
            async with dial(path_to_unix_url(str(path)), send_fds=[netns], options=FAST_RECONNECT) as (
                channel,
                _relay,
            ):
                first, second = Servicer(), Servicer()
                async with serving(path, first) as handle:
                    first.handle = handle
                    assert as_keys(await call(channel, "Keys", request)) == [inode_key_of(netns)]
                async with serving(path, second) as handle:
                    second.handle = handle
                    assert as_keys(await call(channel, "Keys", request)) == [inode_key_of(netns)]
                assert first.connections[0] is not second.connections[0]
        finally:
            os.close(netns)

    run_async(main)


def test_calls_that_bypass_the_relay_are_refused(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "nse.sock", servicer) as handle:
            servicer.handle = handle
            async with grpc.aio.insecure_channel(abstract_target(handle.relay.backend_names[0])) as direct:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(direct, "Echo", b"x")
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                stream = direct.unary_stream(f"/{SERVICE}/Count", None, None)(b"3", timeout=CALL_TIMEOUT)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    _ = [message async for message in stream]
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    run_async(main)


def test_connections_and_their_fds_close_when_the_client_goes(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        netns = open_netns_fd()
        servicer = Servicer()
        try:
            async with serving(sock_dir / "nse.sock", servicer) as handle:
                servicer.handle = handle
                async with dial(handle.url, send_fds=[netns]) as (channel, relay):
                    await call(channel, "Keys", inode_url_for_fd(netns).encode())
                    (client_side,) = relay.connections
                server_side = servicer.connections[0]
                assert client_side.closed and client_side.received.closed
                await eventually(lambda: not handle.relay.connections)
                assert server_side.closed and server_side.received.closed
        finally:
            os.close(netns)

    run_async(main)


def test_no_fds_or_tasks_leak_across_a_full_session(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def session(path: Path, netns: int, give: int) -> None:
        servicer = Servicer(give_fd=give)
        async with serving(path, servicer) as handle:
            servicer.handle = handle
            async with dial(handle.url, send_fds=[netns]) as (channel, relay):
                await call(channel, "Keys", inode_url_for_fd(netns).encode())
                dev, ino = parse_inode_url((await call(channel, "SendBack", b"")).decode())
                os.close(await relay.wait_fd(dev, ino, timeout=CALL_TIMEOUT))

    async def main() -> None:
        netns = open_netns_fd()
        try:
            with pipe_read_ends(1) as (give,):
                await session(sock_dir / "warm.sock", netns, give)  # grpcio opens its own fds lazily
                before = fd_census()
                for number in range(3):
                    await session(sock_dir / f"s{number}.sock", netns, give)
                await no_leaks_since(before)
        finally:
            os.close(netns)

    run_async(main)
    assert not list(sock_dir.iterdir()), "socket files left behind"


def test_unreachable_target_fails_the_call_and_leaks_nothing(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        url = path_to_unix_url(str(sock_dir / "nobody.sock"))

        async def failing_call() -> None:
            async with dial(url) as (channel, relay):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=CALL_TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert relay.connections == ()

        await failing_call()  # grpcio opens its own fds lazily
        before = fd_census()
        await failing_call()
        await no_leaks_since(before)

    run_async(main)


def test_wait_fd_times_out_when_nothing_arrives(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        async with ClientRelay(path_to_unix_url(str(sock_dir / "x.sock"))) as relay:
            with pytest.raises(FdNotReceivedError):
                await relay.wait_fd(1, 2, timeout=0.01)

    run_async(main)


def test_client_relay_refuses_connections_from_other_processes(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect('\\0'+sys.argv[1]); s.settimeout(30)\n"
        "print('eof' if s.recv(1)==b'' else 'data')\n"
    )

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "nse.sock", servicer) as handle:
            servicer.handle = handle
            async with ClientRelay(handle.url) as relay:
                name = relay.grpc_target.removeprefix("unix-abstract:")
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", probe, name, stdout=subprocess.PIPE
                )
                output, _ = await process.communicate()
                assert output.strip() == b"eof"
                assert handle.relay.connections == ()

    run_async(main)


def test_listen_socket_replaces_stale_socket_is_0777_and_is_removed(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    path = sock_dir / "nse.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))

    async def main() -> None:
        servicer = Servicer()
        async with serving(path, servicer) as handle:
            servicer.handle = handle
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
            async with dial(handle.url) as (channel, _relay):
                assert await call(channel, "Echo", b"up") == b"up"
        assert not path.exists()

    run_async(main)


def test_missing_listen_directory_is_created(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "new" / "nse.sock", servicer) as handle:
            servicer.handle = handle
            async with dial(handle.url) as (channel, _relay):
                assert await call(channel, "Echo", b"up") == b"up"

    run_async(main)


def test_listen_path_holding_a_regular_file_is_refused(run_async: AsyncRunner, sock_dir: Path) -> None:
    path = sock_dir / "nse.sock"
    path.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(ListenPathError):
            async with serving(path, Servicer()):
                pass
        assert path.read_text() == "not a socket"

    run_async(main)


def test_tcp_target_is_relayed_without_fds(run_async: AsyncRunner) -> None:
    async def main() -> None:
        servicer = Servicer()
        server = grpc.aio.server()
        servicer.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        netns = open_netns_fd()
        try:
            async with dial(f"tcp://127.0.0.1:{port}", send_fds=[netns]) as (channel, relay):
                assert await call(channel, "Echo", b"over tcp") == b"over tcp"
                (connection,) = relay.connections
                assert len(connection.received) == 0
        finally:
            os.close(netns)
            await server.stop(None)

    run_async(main)


def test_a_call_on_a_closed_channel_fails_as_unavailable_not_with_a_usage_error(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    from nsm_sdk.agent.nsm_client import RpcFailed, translate_errors

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer) as handle, dial(handle.url) as (channel, _):
            await channel.close()
            with pytest.raises(RpcFailed) as caught, translate_errors("Echo"):
                await call(channel, "Echo", b"x")
            assert (
                caught.value.code == grpc.StatusCode.UNAVAILABLE and "channel closed" in caught.value.details
            )

    run_async(main)


def test_connections_are_spread_over_the_backend_servers(run_async: AsyncRunner, sock_dir: Path) -> None:
    """With `backends=3`, three connections land on three different grpc.aio servers, and every call is
    still answered and finds its relay connection (which server took it: the peer each server saw)."""

    async def main() -> None:
        servicer = Servicer()
        served_by: dict[str, int] = {}
        servers = iter(range(3))

        def register(server: grpc.aio.Server) -> None:
            number = next(servers)

            async def whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                served_by[servicer.connection(context).name] = number
                return str(number).encode()

            handler = grpc.unary_unary_rpc_method_handler(whoami)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(SERVICE, {"Whoami": handler}),)
            )

        async with serve(str(sock_dir / "nse.sock"), register, backends=3) as handle:
            servicer.handle = handle
            assert len(handle.servers) == 3
            answers = []
            async with (
                dial(handle.url) as (first, _),
                dial(handle.url) as (second, _),
                dial(handle.url) as (
                    third,
                    _,
                ),
            ):
                for channel in (first, second, third):
                    answers.append(await call(channel, "Whoami", b""))
            assert sorted(answers) == [b"0", b"1", b"2"]
            assert len(served_by) == 3

    run_async(main)


def test_a_server_needs_at_least_one_backend(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="backends must be at least 1"):
            async with serve(str(sock_dir / "nse.sock"), Servicer().register, backends=0):
                pass
        assert not (sock_dir / "nse.sock").exists()

    run_async(main)
