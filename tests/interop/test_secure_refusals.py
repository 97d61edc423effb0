"""What NSM's real Go nsmgr (sdk v1.18.0, default policies, real SPIRE) refuses, shown with the project's
intruder (`tests/intruder.py`: a real client that breaks one rule per run) running as a workload of its own
(`spiffe://harness.test/intruder`). The victim is a live Python client <-> Python endpoint link, which must
come out of every attempt exactly as it was.

The same intruder against nsm-local: tests/system/test_security.py. What the Go nsmgr does NOT refuse
(another identity refreshing or closing a connection): test_secure.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from interop_lab import IFNAME, NSC_ADDRESS, NSE_ADDRESS, NSE_NAME, REPO, SERVICE, Lab, Link, establish
from spire_lab import INTRUDER_GID, popen

pytestmark = pytest.mark.timeout(300)
INTRUDER = str(Path(__file__).resolve().parents[1] / "intruder.py")
TRUST_DOMAIN = "harness.test"


def intrude(lab: Lab, attack: str, *args: str, netns: str | None = None) -> dict[str, str]:
    assert lab.spire is not None
    argv = [sys.executable, INTRUDER, attack, "--url", lab.nsmgr_url, "--trust-domain", TRUST_DOMAIN,
            "--service", SERVICE, *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, **lab.spire.env()}
    child = popen(argv, INTRUDER_GID, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode(errors="replace")
    result: dict[str, str] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
def py_link(secure_lab: Lab) -> Link:
    return establish(secure_lab, "py", "py")


REFUSED = [
    ("wrong-key", "prev_token_signed"),
    ("expired", "tokens_expired"),
    ("aud-other", "tokens_chained"),
    ("broken-chain", "tokens_chained"),
]


def unchanged(link: Link) -> None:
    lab = link.lab
    assert lab.link_up(link.nsc_ns, IFNAME, NSC_ADDRESS) and lab.ping(link.nsc_ns, NSE_ADDRESS)
    assert len(lab.events("veth.created")) == 1 and lab.events("veth.deleted") == []


@pytest.mark.parametrize(("attack", "policy"), REFUSED, ids=[attack for attack, _ in REFUSED])
def test_go_nsmgr_refuses_tokens_that_break_its_policies(py_link: Link, attack: str, policy: str) -> None:
    den = py_link.lab.netns("den")
    result = intrude(py_link.lab, attack, "--ifname", "evil0", netns=den)
    assert result["code"] == "PERMISSION_DENIED", result
    assert "policy" in result["details"] or "privileges" in result["details"], result
    assert IFNAME not in py_link.lab.links(den) and "evil0" not in py_link.lab.links(den)
    unchanged(py_link)


@pytest.mark.parametrize(
    "trust_domain", [TRUST_DOMAIN, "evil.test"], ids=["same-domain-other-ca", "other-domain"]
)
def test_go_nsmgr_refuses_a_certificate_of_another_ca(py_link: Link, trust_domain: str) -> None:
    den = py_link.lab.netns("den")
    result = intrude(py_link.lab, "foreign-ca", "--trust-domain", trust_domain, netns=den)
    assert result["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), result
    assert "TLS alert from the peer" in result["details"], result  # the reason, not just a timeout
    assert "evil0" not in py_link.lab.links(den)
    unchanged(py_link)


def test_go_nsmgr_refuses_an_endpoint_name_another_identity_registered(py_link: Link) -> None:
    result = intrude(py_link.lab, "register-other", "--name", NSE_NAME)
    assert result["code"] == "PERMISSION_DENIED", result
    assert [nse["name"] for nse in py_link.lab.find_nse(SERVICE)] == [NSE_NAME]
    unchanged(py_link)
