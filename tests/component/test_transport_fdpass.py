"""fd passing on raw sockets, checked against a peer that behaves exactly like grpcfd (§6)."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_sdk.transport.errors import ConnectionClosedError, FdCapError, FdNotReceivedError
from nsm_sdk.transport.fdpass import MAX_FDS_PER_WRITE, FdSocket, open_netns_fd, open_socket_file_fd
from nsm_sdk.transport.fdstore import FdStore, InodeKey, inode_key_of

NETNS = "/proc/thread-self/ns/net"
AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]


def rights(*fds: int) -> list[tuple[int, int, array.array[int]]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]


@contextmanager
def pipes(count: int) -> Iterator[list[int]]:
    """Read ends of `count` pipes: fds with distinct (dev, ino) keys."""
    opened = [os.pipe() for _ in range(count)]
    try:
        yield [read_end for read_end, _ in opened]
    finally:
        for read_end, write_end in opened:
            os.close(read_end)
            os.close(write_end)


def grpcfd_recv(peer: socket.socket, size: int = 1 << 20) -> tuple[bytes, list[int]]:
    """One blocking recvmsg like grpcfd's Read: data plus the fds that came with it."""
    data, ancdata, _flags, _ = peer.recvmsg(size, socket.CMSG_SPACE(64 * 4))
    fds: list[int] = []
    for _level, _kind, payload in ancdata:
        fds.extend(array.array("i", payload))
    return data, fds


def test_open_netns_fd_names_the_threads_netns() -> None:
    fd = open_netns_fd()
    try:
        st = os.stat(NETNS)
        assert inode_key_of(fd) == InodeKey(st.st_dev, st.st_ino)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


def test_open_socket_file_fd_opens_the_file_with_o_path(sock_dir: Path) -> None:
    path = str(sock_dir / "nse.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        fd = open_socket_file_fd(path)
        try:
            st = os.stat(path)
            assert inode_key_of(fd) == InodeKey(st.st_dev, st.st_ino)
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH
        finally:
            os.close(fd)


def test_fd_sent_grpcfd_style_before_data_lands_in_store(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        netns = open_netns_fd()
        try:
            # grpcfd's Write: one sendmsg with 1 byte + the fd, then the rest of the buffer.
            peer.sendmsg([b"x"], rights(netns))
            peer.sendall(b"yz")
            received = b""
            while len(received) < 3:
                received += await fdsock.recv()
            assert received == b"xyz"
            assert fdsock.received.keys() == [inode_key_of(netns)]
            key = inode_key_of(netns)
            dup = await fdsock.received.wait(key.dev, key.ino, timeout=5)
            assert inode_key_of(dup) == key
            os.close(dup)
        finally:
            os.close(netns)
            fdsock.close()
            peer.close()

    run_async(main)


def test_queued_fds_ride_one_per_byte_on_the_next_write(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        peer.setblocking(True)
        with pipes(3) as fds:
            try:
                fdsock.queue_fds(fds)
                await fdsock.send(b"hello")
                chunks = [grpcfd_recv(peer) for _ in range(3)]
                assert [data for data, _ in chunks] == [b"h", b"e", b"l"]
                got = [received for _, fd_list in chunks for received in fd_list]
                assert [inode_key_of(fd) for fd in got] == [inode_key_of(fd) for fd in fds]
                for fd in got:
                    os.close(fd)
                assert grpcfd_recv(peer) == (b"lo", [])
                assert fdsock.queued_fds == 0
            finally:
                fdsock.close()
                peer.close()

    run_async(main)


def test_at_most_64_fds_per_write_rest_on_next_write(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        store = FdStore(cap=MAX_FDS_PER_WRITE + 6)  # more than a connection may keep: this is about writes
        peer_side = FdSocket(peer, store)
        with pipes(MAX_FDS_PER_WRITE + 6) as fds:
            try:
                fdsock.queue_fds(fds)
                await fdsock.send(b"a" * 100)
                assert fdsock.queued_fds == 6
                await fdsock.send(b"b" * 100)
                assert fdsock.queued_fds == 0
                data = b""
                while len(data) < 200:
                    data += await peer_side.recv()
                assert data == b"a" * 100 + b"b" * 100
                assert sorted(store.keys()) == sorted(inode_key_of(fd) for fd in fds)
            finally:
                fdsock.close()
                peer_side.close()

    run_async(main)


def test_short_write_keeps_remaining_fds_queued_and_never_sends_empty(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        peer.setblocking(True)
        with pipes(3) as fds:
            try:
                fdsock.queue_fds(fds)
                await fdsock.send(b"")
                await fdsock.send(b"ab")
                assert fdsock.queued_fds == 1
                first = [grpcfd_recv(peer) for _ in range(2)]
                assert [data for data, _ in first] == [b"a", b"b"]
                for _, got in first:
                    assert len(got) == 1
                    os.close(got[0])
            finally:
                fdsock.close()
                peer.close()

    run_async(main)


def test_duplicate_key_is_closed_and_store_keeps_first(
    run_async: AsyncRunner, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        netns = open_netns_fd()
        try:
            before = fd_count()
            peer.sendmsg([b"1"], rights(netns))
            assert await fdsock.recv() == b"1"
            after_first = fd_count()
            peer.sendmsg([b"2"], rights(netns))
            assert await fdsock.recv() == b"2"
            assert after_first == before + 1
            assert fd_count() == after_first
            assert len(fdsock.received) == 1
        finally:
            fdsock.close()
            peer.close()
            os.close(netns)

    run_async(main)


def test_truncated_control_data_leaks_no_fds(run_async: AsyncRunner, fd_count: Callable[[], int]) -> None:
    async def main() -> None:
        with pipes(MAX_FDS_PER_WRITE + 6) as fds:
            before = fd_count()
            ours, peer = socket.socketpair()
            fdsock = FdSocket(ours, FdStore())
            peer.sendmsg([b"x"], rights(*fds))  # more than the receiver has room for
            assert await fdsock.recv() == b"x"
            assert len(fdsock.received) == MAX_FDS_PER_WRITE
            fdsock.close()
            peer.close()
            assert fd_count() == before

    run_async(main)


def test_waiter_gets_fd_that_arrives_later(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        netns = open_netns_fd()
        key = inode_key_of(netns)
        try:
            waiter = asyncio.create_task(fdsock.received.wait(key.dev, key.ino, timeout=10))
            await asyncio.sleep(0)
            assert not waiter.done()
            peer.sendmsg([b"x"], rights(netns))
            await fdsock.recv()
            got = await waiter
            assert inode_key_of(got) == key and got != netns
            os.close(got)
        finally:
            fdsock.close()
            peer.close()
            os.close(netns)

    run_async(main)


def test_waiting_for_an_fd_that_never_comes_times_out(run_async: AsyncRunner) -> None:
    async def main() -> None:
        store = FdStore()
        with pytest.raises(FdNotReceivedError) as caught:
            await store.wait(1, 2, timeout=0.01)
        assert (caught.value.dev, caught.value.ino) == (1, 2)
        assert caught.value.temporary

    run_async(main)


def test_fds_over_the_cap_are_closed_and_their_waiters_fail_as_exhausted(
    run_async: AsyncRunner, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        before = fd_count()
        store = FdStore(cap=2)
        pipes = [os.pipe() for _ in range(3)]
        keys = [inode_key_of(read_end) for read_end, _ in pipes]
        late = asyncio.create_task(store.wait(*keys[2], timeout=10))
        await asyncio.sleep(0)
        assert [store.add(os.dup(read_end)) for read_end, _ in pipes] == [keys[0], keys[1], None]
        with pytest.raises(FdCapError) as caught:
            await late
        assert caught.value.grpc_status == "RESOURCE_EXHAUSTED" and "at most 2" in str(caught.value)
        with pytest.raises(FdCapError):
            store.dup(*keys[2])
        assert store.add(os.dup(pipes[0][0])) is None, "a duplicate of a kept file is still just closed"
        assert len(store) == 2
        store.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)
        assert fd_count() == before

    run_async(main)


def test_closing_the_store_wakes_waiters_and_closes_fds(
    run_async: AsyncRunner, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        before = fd_count()
        store = FdStore()
        store.add(open_netns_fd())
        waiter = asyncio.create_task(store.wait(1, 2, timeout=10))
        await asyncio.sleep(0)
        store.close()
        with pytest.raises(ConnectionClosedError):
            await waiter
        assert fd_count() == before

    run_async(main)


def test_unsent_queued_fds_close_with_the_socket(fd_count: Callable[[], int]) -> None:
    with pipes(2) as fds:
        before = fd_count()
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        fdsock.queue_fds(fds)
        fdsock.close()
        peer.close()
        assert fd_count() == before


def test_large_write_survives_partial_writes(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sender = FdSocket(ours, FdStore())
        receiver = FdSocket(peer, FdStore())
        payload = os.urandom(1 << 20)
        netns = open_netns_fd()
        try:
            sender.queue_fds([netns])

            async def read_all() -> bytes:
                data = bytearray()
                while len(data) < len(payload):
                    data += await receiver.recv()
                return bytes(data)

            reading = asyncio.create_task(read_all())
            await sender.send(payload)
            assert await reading == payload
            assert receiver.received.keys() == [inode_key_of(netns)]
        finally:
            os.close(netns)
            sender.close()
            receiver.close()

    run_async(main)


def test_tcp_socket_carries_data_but_no_fds(run_async: AsyncRunner) -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        sender = FdSocket(client, FdStore())
        receiver = FdSocket(server, FdStore())
        netns = open_netns_fd()
        try:
            sender.queue_fds([netns])
            assert sender.queued_fds == 0
            await sender.send(b"data")
            assert await receiver.recv() == b"data"
            assert len(receiver.received) == 0
        finally:
            os.close(netns)
            sender.close()
            receiver.close()

    run_async(main)


def test_recv_returns_empty_at_end_of_stream(run_async: AsyncRunner) -> None:
    async def main() -> None:
        ours, peer = socket.socketpair()
        fdsock = FdSocket(ours, FdStore())
        peer.sendall(b"last")
        peer.close()
        assert await fdsock.recv() == b"last"
        assert await fdsock.recv() == b""
        fdsock.close()

    run_async(main)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 3)), min_size=1, max_size=12))
def test_any_sequence_of_writes_delivers_all_bytes_and_fds(writes: list[tuple[bytes, int]]) -> None:
    """Whatever the chunking, bytes arrive in order and fds ride one per byte on the next writes."""

    async def main() -> None:
        ours, peer = socket.socketpair()
        sender, receiver = FdSocket(ours, FdStore()), FdSocket(peer, FdStore())
        total = sum(count for _, count in writes)
        with pipes(total) as fds:
            try:
                queue = iter(fds)
                for data, count in writes:
                    sender.queue_fds([next(queue) for _ in range(count)])
                    await sender.send(data)
                sender.shutdown_write()
                received = bytearray()
                while chunk := await receiver.recv():
                    received += chunk
                assert bytes(received) == b"".join(data for data, _ in writes)
                # Model: each write carries min(queued, its length, 64) fds, one per byte.
                queued = delivered = 0
                for data, count in writes:
                    queued += count
                    riding = min(queued, len(data), MAX_FDS_PER_WRITE)
                    queued, delivered = queued - riding, delivered + riding
                assert sender.queued_fds == queued
                assert sorted(receiver.received.keys()) == sorted(inode_key_of(fd) for fd in fds[:delivered])
            finally:
                sender.close()
                receiver.close()

    asyncio.run(main())
