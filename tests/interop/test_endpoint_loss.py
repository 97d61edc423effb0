"""Losing the endpoint, for every pair of the matrix: NSM closes the client's link, and the client heals
onto a new endpoint when one appears.

The endpoint is killed (SIGKILL) while its namespace stays, so its end of the veth stays too and the data
plane still looks fine: only the control plane can notice (failing refreshes, the registration expiring,
the nsmgr's timeout). That is the harder case; a deleted namespace takes the veth with it at once.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from interop_lab import (
    CONN_ID,
    IFNAME,
    NSC_ADDRESS,
    NSE_ADDRESS,
    REGISTRATION_EXPIRY,
    SERVICE,
    TOKEN_LIFETIME,
    Lab,
    Link,
    establish,
    wait_until,
)

pytestmark = pytest.mark.timeout(600)

NEW_NSE_NAME = "nse-2"


class TestEndpointLoss:
    def test_losing_the_endpoint_closes_the_clients_link(self, link: Link) -> None:
        link.nse.stop(signal.SIGKILL)
        wait_until(
            lambda: IFNAME not in link.lab.links(link.nsc_ns) and link.lab.events("veth.deleted"),
            TOKEN_LIFETIME + REGISTRATION_EXPIRY + 10,
            f"{IFNAME} to be closed by the control plane once the endpoint is lost",
            interval=0.5,
        )
        assert [e["why"] for e in link.lab.events("veth.deleted")] == ["close"]
        assert link.nsc.alive(), link.nsc.log  # still trying to get its link back

    def test_a_new_endpoint_heals_the_clients_link(self, link: Link) -> None:
        lab = link.lab
        lab.nse(link.nse_kind, link.nse_ns, NEW_NSE_NAME, SERVICE)

        def served_by_the_new_endpoint() -> dict[str, Any] | None:
            # the interface can appear a moment before the nsmgr has logged the reply it belongs to
            served = lab.events("nsmgr.request", id=CONN_ID)
            last: dict[str, Any] | None = served[-1]["connection"] if served else None
            return last if last and last.get("network_service_endpoint_name") == NEW_NSE_NAME else None

        wait_until(
            lambda: lab.link_up(link.nsc_ns, IFNAME, NSC_ADDRESS) and served_by_the_new_endpoint(),
            40,
            f"{IFNAME} back, served by {NEW_NSE_NAME}",
            interval=0.3,
        )
        served = served_by_the_new_endpoint()
        assert served is not None
        assert served["network_service_endpoint_name"] == NEW_NSE_NAME
        assert served["path"]["path_segments"][-1]["name"] == NEW_NSE_NAME
        assert lab.ping(link.nsc_ns, NSE_ADDRESS)
        assert lab.ping(link.nse_ns, NSC_ADDRESS)


@pytest.mark.parametrize("nsc_kind", ["go", "py"])
def test_sigterm_on_the_python_endpoint_removes_its_side_before_it_exits(lab: Lab, nsc_kind: str) -> None:
    link = establish(lab, nsc_kind, "py")
    endpoint_if = link.endpoint_ifname()
    assert link.nse.stop(signal.SIGTERM) == 0, link.nse.log
    # the endpoint removes its side itself before exiting, whatever control plane runs
    # (docs/architecture.md); deleting one end of a veth deletes both
    assert endpoint_if not in lab.links(link.nse_ns), link.nse.log
    assert IFNAME not in lab.links(link.nsc_ns)
