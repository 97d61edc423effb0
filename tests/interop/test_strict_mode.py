"""The harness's strict mode is what proves that the matrix passes fds for real: the sdk alone accepts a
netns named by path (file://), which only works because everything shares one host. These tests use the
Go reference agents misbehaving on purpose (`-without-fd`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_lab import IFNAME, NSC_ADDRESS, NSC_NAME, NSE_NAME, SERVICE, Lab, wait_until

pytestmark = pytest.mark.timeout(300)


def start(lab: Lab, nsc_extra: tuple[str, ...] = (), nse_extra: tuple[str, ...] = ()) -> tuple[str, str]:
    nsc_ns, nse_ns = lab.netns("nsc"), lab.netns("nse")
    lab.go_nse(nse_ns, NSE_NAME, SERVICE, *nse_extra)
    lab.wait_for_nse(SERVICE, NSE_NAME)
    lab.go_nsc(nsc_ns, NSC_NAME, SERVICE, IFNAME, *nsc_extra)
    return nsc_ns, nse_ns


def test_strict_mode_refuses_a_client_that_names_its_netns_by_path(lab: Lab) -> None:
    nsc_ns, _ = start(lab, nsc_extra=("-without-fd",))
    rejected = wait_until(lambda: lab.events("strict.rejected", call="Request"), 20, "a strict rejection")
    assert "is not inode://" in rejected[0]["reason"]
    assert lab.events("veth.created") == []
    assert IFNAME not in lab.links(nsc_ns)


def test_strict_mode_refuses_an_endpoint_that_answers_without_its_netns_fd(lab: Lab) -> None:
    nsc_ns, _ = start(lab, nse_extra=("-without-fd",))
    rejected = wait_until(lambda: lab.events("strict.rejected", call="endpoint reply"), 20, "a rejection")
    assert "file:///proc/" in rejected[0]["reason"]
    assert IFNAME not in lab.links(nsc_ns)
    assert lab.events("nsmgr.request") == []


@pytest.fixture
def lenient_lab(harness: Path) -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.control_plane(strict=False)
        yield lab
    finally:
        lab.close()


def test_without_strict_mode_the_same_client_and_endpoint_get_their_link(lenient_lab: Lab) -> None:
    nsc_ns, _ = start(lenient_lab, nsc_extra=("-without-fd",), nse_extra=("-without-fd",))
    wait_until(lambda: lenient_lab.link_up(nsc_ns, IFNAME, NSC_ADDRESS), 30, f"{IFNAME} with {NSC_ADDRESS}")
    assert lenient_lab.events("strict.rejected") == []
