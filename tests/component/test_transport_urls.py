"""URL forms of the transport layer (§2.1, §6): pure functions, plus inode URLs of real files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.transport.urls import (
    TcpAddress,
    UnixAddress,
    grpc_target_for_url,
    inode_url,
    inode_url_for_fd,
    inode_url_for_path,
    parse_dial_url,
    parse_inode_url,
    path_to_unix_url,
    unix_url_to_path,
)

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(UINT64, UINT64)
def test_inode_url_round_trips_any_uint64_pair(dev: int, ino: int) -> None:
    assert parse_inode_url(inode_url(dev, ino)) == (dev, ino)


def test_inode_url_is_decimal_dev_slash_ino() -> None:
    assert inode_url(2049, 131) == "inode://2049/131"


@pytest.mark.parametrize(
    "url",
    [
        "file:///proc/self/ns/net",
        "inode://",
        "inode://12",
        "inode://12/",
        "inode:///34",
        "inode://0x1/2",
        "inode://-1/2",
        "inode://+1/2",
        "inode://1/2/3",
        "inode://1:5/2",
        f"inode://{2**64}/1",
        "inode://1/ 2",
    ],
)
def test_parse_inode_url_rejects_malformed(url: str) -> None:
    with pytest.raises(ProtocolError):
        parse_inode_url(url)


def test_parse_inode_url_ignores_query_like_grpcfd() -> None:
    assert parse_inode_url("inode://7/9?x=1") == (7, 9)


def test_inode_url_for_fd_uses_fstat_dev_and_ino(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"")
    fd = os.open(target, os.O_RDONLY)
    try:
        st_ = os.stat(target)
        assert inode_url_for_fd(fd) == f"inode://{st_.st_dev}/{st_.st_ino}"
    finally:
        os.close(fd)


def test_inode_url_for_path_follows_symlinks(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        (tmp_path / "link").symlink_to(sock_path)
        st_ = os.stat(sock_path)
        assert inode_url_for_path(str(tmp_path / "link")) == inode_url(st_.st_dev, st_.st_ino)


def test_unix_url_maps_to_absolute_path() -> None:
    assert unix_url_to_path("unix:///var/lib/networkservicemesh/nsm.io.sock") == (
        "/var/lib/networkservicemesh/nsm.io.sock"
    )


PATH_PART = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0"), min_size=1)


@given(st.lists(PATH_PART, min_size=1))
def test_unix_url_round_trips_any_absolute_path(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    assert unix_url_to_path(path_to_unix_url(path)) == path


def test_path_to_unix_url_escapes_like_go() -> None:
    assert path_to_unix_url("/tmp/a b?#%.sock") == "unix:///tmp/a%20b%3F%23%25.sock"


@pytest.mark.parametrize("url", ["unix://relative/x", "unix:relative", "tcp://h:1", "http:///x"])
def test_unix_url_to_path_rejects_non_absolute_or_other_schemes(url: str) -> None:
    with pytest.raises(ProtocolError):
        unix_url_to_path(url)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("unix:///run/nsm.sock", "unix:///run/nsm.sock"),
        ("tcp://10.0.0.1:5001", "10.0.0.1:5001"),
        ("tcp://nsmgr:5001", "nsmgr:5001"),
        ("tcp://[fd00::1]:5001", "[fd00::1]:5001"),
    ],
)
def test_grpc_target_for_url(url: str, target: str) -> None:
    assert grpc_target_for_url(url) == target


@pytest.mark.parametrize("url", ["tcp://host", "tcp://:5001", "tcp://h:99999", "inode://1/2", "dns:///x"])
def test_grpc_target_for_url_rejects_what_cannot_be_dialled(url: str) -> None:
    with pytest.raises(ProtocolError):
        grpc_target_for_url(url)


def test_parse_dial_url_gives_typed_addresses() -> None:
    assert parse_dial_url("unix:///a/b") == UnixAddress("/a/b")
    assert parse_dial_url("tcp://[::1]:80") == TcpAddress("::1", 80)
