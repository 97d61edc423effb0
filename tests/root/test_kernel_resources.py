"""Namespaces are entered without forking or leaking: fds, threads and the caller's own netns."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from typing import NoReturn

import pytest
from kernel_lab import Netns

from nsm_sdk.kernel import (
    End,
    KernelError,
    LinkNotFound,
    NetnsUnavailable,
    Route,
    configure_link,
    create_veth_pair,
    delete_link,
    inspect_link,
    netlink_in,
    rename_link,
    verify_link,
    wait_for_link,
)
from nsm_sdk.kernel._netns import OWN_NETNS_PATH

pytestmark = pytest.mark.root


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def one_round(ns_a: Netns, ns_b: Netns) -> None:
    create_veth_pair(End(ns_a.fd, "eth1"), End(ns_b.fd, "eth1"))
    create_veth_pair(End(ns_a.fd, "eth1"), End(ns_b.fd, "eth1"))
    configure_link(ns_a.fd, "eth1", ["10.60.0.1/30", "fd00:60::1/126"], [Route("10.99.0.0/24", "10.60.0.2")])
    configure_link(ns_b.fd, "eth1", ["10.60.0.2/30"], mtu=1400)
    rename_link(ns_b.fd, "eth1", "eth21")
    wait_for_link(ns_b.fd, "eth21", timeout=5)
    assert verify_link(ns_a.fd, "eth1", ["10.60.0.1/30"]) == []
    inspect_link(ns_b.fd, "eth21")
    assert delete_link(ns_a.fd, "eth1")
    assert not delete_link(ns_b.fd, "eth21")


def test_repeated_operations_leave_no_fds_or_threads_behind(netns_a: Netns, netns_b: Netns) -> None:
    one_round(netns_a, netns_b)  # warm-up: lazily created module state (libc handle, caches)
    fds_before, threads_before = open_fds(), threading.active_count()

    for _ in range(20):
        one_round(netns_a, netns_b)

    assert open_fds() == fds_before
    assert threading.active_count() == threads_before


def test_failing_operations_leave_no_fds_behind(netns_a: Netns, netns_b: Netns) -> None:
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1"))
    unreachable = [Route("10.99.0.0/24", "192.0.2.1")]
    fds_before = open_fds()

    for _ in range(10):
        with pytest.raises(KernelError) as raised:
            configure_link(netns_a.fd, "eth1", ["10.60.0.1/30"], unreachable)
        assert raised.value.errno == errno.ENETUNREACH
        with pytest.raises(LinkNotFound):
            inspect_link(netns_a.fd, "eth9")

    assert open_fds() == fds_before


def test_operations_never_fork(monkeypatch: pytest.MonkeyPatch, netns_a: Netns, netns_b: Netns) -> None:
    # grpcio programs must not fork (pyroute2, which this layer once used, forks for `netns=`).
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the kernel layer tried to fork")

    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(multiprocessing.Process, "start", refuse)

    one_round(netns_a, netns_b)


def test_the_callers_thread_never_changes_netns(netns_a: Netns, netns_b: Netns) -> None:
    own = os.stat(OWN_NETNS_PATH)

    one_round(netns_a, netns_b)

    after = os.stat(OWN_NETNS_PATH)
    assert (after.st_dev, after.st_ino) == (own.st_dev, own.st_ino)


def test_netlink_in_talks_to_the_given_netns(netns_a: Netns) -> None:
    netns_a.ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    with netlink_in(netns_a.fd) as ipr:
        names = {link.ifname for link in ipr.links()}
    assert names == {"lo", "probe0", "probe1"}


def test_an_fd_that_is_not_a_netns_raises_netns_unavailable() -> None:
    with open("/dev/null", "rb") as not_a_netns, pytest.raises(NetnsUnavailable) as raised:
        inspect_link(not_a_netns.fileno(), "eth1")
    assert raised.value.errno == errno.EINVAL


def test_a_closed_fd_raises_netns_unavailable() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(NetnsUnavailable) as raised:
        delete_link(read_end, "eth1")
    assert raised.value.errno == errno.EBADF
