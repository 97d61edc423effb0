"""When a Request makes nsm-local read (and if need be repair) the kernel: a new or changed link always,
an unchanged link's refresh only once its last kernel step is KERNEL_RECHECK old."""

from __future__ import annotations

import pytest

from nsm_local.forwarder import CrossConnect
from nsm_local.manager import KERNEL_RECHECK, _kernel_step_due
from nsm_local.ownership import LinkEnd
from nsm_local.sessions import Session
from nsm_sdk._proto.networkservice.connection_pb2 import Connection

ENDS = (LinkEnd(100, "eth1"), LinkEnd(200, "eth1"))
CHECKED = 1000.0


def reply(src: str = "10.60.1.1/30", mtu: int = 0) -> Connection:
    conn = Connection(id="c")
    conn.context.ip_context.src_ip_addrs.append(src)
    conn.context.MTU = mtu
    return conn


def session(ends: tuple[LinkEnd, LinkEnd] = ENDS, endpoint_reply: Connection | None = None) -> Session:
    xc = CrossConnect(-1, ends[0].ifname, None, ends[1].ifname)
    return Session(
        Connection(), "nse", "key", endpoint_reply or reply(), xc, None, ends, kernel_checked=CHECKED
    )


def test_a_new_link_always_goes_to_the_kernel() -> None:
    assert _kernel_step_due(None, ENDS, reply(), CHECKED)


@pytest.mark.parametrize("after", [0.0, 1.0, KERNEL_RECHECK - 0.01])
def test_an_unchanged_refresh_soon_after_the_last_kernel_step_reads_nothing(after: float) -> None:
    assert not _kernel_step_due(session(), ENDS, reply(), CHECKED + after)


@pytest.mark.parametrize("after", [KERNEL_RECHECK, KERNEL_RECHECK + 30.0, -1.0])
def test_an_unchanged_refresh_reads_the_kernel_once_the_last_step_is_old_or_the_clock_went_back(
    after: float,
) -> None:
    assert _kernel_step_due(session(), ENDS, reply(), CHECKED + after)


@pytest.mark.parametrize(
    "ends",
    [
        (LinkEnd(100, "eth2"), ENDS[1]),  # the client asks for another name
        (LinkEnd(101, "eth1"), ENDS[1]),  # the client runs in another namespace now
        (ENDS[0], LinkEnd(201, "eth1")),  # another endpoint (or the same one restarted)
    ],
)
def test_a_refresh_with_other_interfaces_or_namespaces_goes_to_the_kernel(
    ends: tuple[LinkEnd, LinkEnd],
) -> None:
    assert _kernel_step_due(session(), ends, reply(), CHECKED + 0.5)


@pytest.mark.parametrize("changed", [reply(src="10.60.1.5/30"), reply(mtu=1400)])
def test_a_refresh_with_another_ip_context_or_mtu_goes_to_the_kernel(changed: Connection) -> None:
    assert _kernel_step_due(session(), ENDS, changed, CHECKED + 0.5)
