"""Tier (c): privileged netlink tests.

Needs: root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` from iproute2 and `ping` from iputils-ping. Tests
marked `root` are skipped, with the reason shown, only when not running as root; CI runs as root.
Every test works in throwaway network namespaces named `t-<random>` that are always deleted, also on
failure; deleting a namespace removes every interface in it. `ip` is used only to set up and check.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from kernel_lab import Netns, run

NOT_ROOT_REASON = "needs root to create network namespaces and veth pairs (CI runs as root)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT_REASON))


@pytest.fixture
def make_netns() -> Iterator[Callable[[], Netns]]:
    """Factory of throwaway namespaces; all of them are deleted at teardown, whatever happened."""
    names: list[str] = []
    fds: list[int] = []

    def make() -> Netns:
        name = f"t-{secrets.token_hex(5)}"
        run("ip", "netns", "add", name)
        names.append(name)
        fds.append(os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC))
        return Netns(name, fds[-1])

    try:
        yield make
    finally:
        for fd in fds:
            os.close(fd)
        failed = [name for name in names if run("ip", "netns", "delete", name, check=False).returncode]
        assert not failed, f"could not delete namespaces {failed}"


@pytest.fixture
def netns_a(make_netns: Callable[[], Netns]) -> Netns:
    return make_netns()


@pytest.fixture
def netns_b(make_netns: Callable[[], Netns]) -> Netns:
    return make_netns()
