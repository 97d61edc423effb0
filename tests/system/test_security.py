"""Security of nsm-local as users run it (secure by default): a process in a namespace of its own gets an
identity of its own, and every attempt to break a rule is refused with a clear status while the victim's
link and every namespace stay exactly as they were.

The intruder (`tests/intruder.py`) is a real NSM client that breaks one rule per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab import Lab, run, wait_until
from test_p2p_link import P2P, start_two_devices

INTRUDER = str(Path(__file__).parent.parent / "intruder.py")


def intruder(lab: Lab, netns: str | None, attack: str, *args: str) -> dict[str, str]:
    argv = [sys.executable, INTRUDER, attack, "--url", lab.socket, "--label", "link=net-0", *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": lab.workload_api}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def links(netns: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, ifindex, addresses) of every interface but lo: what must not change under attack."""
    shown = json.loads(run("ip", "-n", netns, "-j", "addr", "show").stdout or "[]")
    return sorted(
        (
            link["ifname"],
            link["ifindex"],
            tuple(sorted(a["local"] for a in link.get("addr_info", []) if a.get("scope") == "global")),
        )
        for link in shown
        if link["ifname"] != "lo"
    )


@pytest.fixture
def victim(lab: Lab) -> tuple[str, str]:
    return start_two_devices(lab)


def operator_view(lab: Lab) -> dict[str, dict[str, object]]:
    """Every connection, as the operator (this test, host netns and uid like nsm-local) sees them."""
    shown = intruder(lab, None, "monitor")
    assert shown["code"] == "OK", shown
    connections: dict[str, dict[str, object]] = json.loads(shown["details"])
    return connections


ATTACKS = [
    # TLS 1.3: the client's handshake is done before the server checks its certificate, so the client
    # learns of the refusal from the server's alert, and its waiting call runs out
    ("foreign-ca", ["--trust-domain", "nsm.local"], "DEADLINE_EXCEEDED", "TLSV1_ALERT_UNKNOWN_CA"),
    ("foreign-ca", ["--trust-domain", "evil.test"], "DEADLINE_EXCEEDED", "TLSV1_ALERT_UNKNOWN_CA"),
    ("wrong-key", [], "PERMISSION_DENIED", "prev_token_signed"),
    ("expired", [], "PERMISSION_DENIED", "tokens_expired"),
    ("aud-other", [], "PERMISSION_DENIED", "tokens_chained"),
    ("broken-chain", [], "PERMISSION_DENIED", "tokens_chained"),
]


@pytest.mark.parametrize(
    ("attack", "args", "code", "reason"),
    ATTACKS,
    ids=[f"{attack}-{args[1]}" if args else attack for attack, args, *_ in ATTACKS],
)
def test_requests_breaking_the_token_or_tls_rules_are_refused_and_change_nothing(
    lab: Lab, victim: tuple[str, str], attack: str, args: list[str], code: str, reason: str
) -> None:
    dev1, dev2 = victim
    before = links(dev1), links(dev2)
    den = lab.netns("den")
    result = intruder(lab, den, attack, *args)
    assert (result["code"], reason in result["details"]) == (code, True), result
    assert (links(dev1), links(dev2)) == before
    assert links(den) == []
    assert lab.ping(dev1, "10.60.1.2")


def test_foreign_certificate_is_refused_in_the_handshake(lab: Lab, victim: tuple[str, str]) -> None:
    den = lab.netns("den")
    intruder(lab, den, "foreign-ca", "--trust-domain", "nsm.local")
    manager = lab.processes[0]
    failures = manager.events("tls.handshake_failed")
    assert failures and "certificate_verify_failed" in failures[0]["reason"].lower(), manager.log


def test_another_identity_can_neither_refresh_nor_close_nor_see_a_connection(
    lab: Lab, victim: tuple[str, str]
) -> None:
    dev1, dev2 = victim
    before = links(dev1), links(dev2)
    connections = operator_view(lab)
    assert len(connections) == 1
    stolen = json.dumps(next(iter(connections.values())))
    den = lab.netns("den")

    refresh = intruder(lab, den, "refresh-other", "--victim", stolen)
    assert refresh["code"] == "PERMISSION_DENIED" and "belongs to" in refresh["details"], refresh
    close = intruder(lab, den, "close-other", "--victim", stolen)
    assert close["code"] == "PERMISSION_DENIED" and "belongs to" in close["details"], close
    watched = intruder(lab, den, "monitor")
    assert (watched["code"], json.loads(watched["details"])) == ("OK", {})

    assert (links(dev1), links(dev2), links(den)) == (*before, [])
    assert list(operator_view(lab)) == list(connections)
    assert lab.ping(dev1, "10.60.1.2")


def test_a_link_cannot_be_put_into_another_process_namespace(lab: Lab, victim: tuple[str, str]) -> None:
    dev1, dev2 = victim
    before = links(dev1), links(dev2)
    nsc = lab.processes[2]
    den = lab.netns("den")
    result = intruder(lab, den, "foreign-netns", "--netns-of", str(nsc.popen.pid), "--ifname", "evil0")
    assert result["code"] == "PERMISSION_DENIED" and "own_namespace" in result["details"], result
    assert (links(dev1), links(dev2), links(den)) == (*before, [])


def test_an_endpoint_name_belongs_to_the_identity_that_registered_it(
    lab: Lab, victim: tuple[str, str]
) -> None:
    nse = lab.processes[1]
    name = nse.events("registration.done")[0]["name"]
    den = lab.netns("den")
    result = intruder(lab, den, "register-other", "--name", name)
    assert result["code"] == "PERMISSION_DENIED" and "client_allowed" in result["details"], result
    assert name in lab.nsm_local_cli("list").stdout


def test_a_link_name_in_use_is_refused_and_never_taken_over(lab: Lab, victim: tuple[str, str]) -> None:
    dev1, dev2 = victim
    before = links(dev1), links(dev2)
    second = lab.nsc(dev1, NSM_NAME="second", NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth99")
    wait_until(lambda: second.events("request.failed"), 20, "the second client's refusal")
    refusal = second.events("request.failed")[0]
    assert refusal["code"] == "ALREADY_EXISTS", second.log
    assert "interface eth12" in refusal["reason"] and "in use" in refusal["reason"]
    assert (links(dev1), links(dev2)) == before
    assert lab.ping(dev1, "10.60.1.2")


def test_svids_rotate_under_a_live_link_and_refreshes_go_on(lab: Lab) -> None:
    """Every SVID lives 24 s (rotated at 12 s; a connection still presenting the old one is retired at
    18 s): the link stays exactly as it is while identities, connections and refreshes turn over.

    Tokens never outlive the certificate they are signed with (§3.3), and a server closes a connection
    at (caller's token expiry - request deadline) (§4.4), so the SVID lifetime must stay well above the
    request timeout: 2 s here."""
    lab.nsm_local("--svid-ttl", "24s")
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(
        dev2,
        ENDPOINT_NETWORK_SERVICE="p2p",
        ENDPOINT_LABELS="device=device-2",
        IP_ADDRESS="10.60.1.0/24",
        NSM_REQUEST_TIMEOUT="2s",
    )
    nsc = lab.nsc(
        dev1,
        NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21",
        NSM_REQUEST_TIMEOUT="2s",
        NSM_LOG_LEVEL="DEBUG",  # routine refreshes are logged at debug
    )
    wait_until(
        lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30") and lab.link_up(dev2, "eth21", "10.60.1.2/30"),
        20,
        "the link",
    )
    manager = lab.processes[0]
    before = links(dev1), links(dev2)
    deadline = time.monotonic() + 26
    while time.monotonic() < deadline:
        assert lab.ping(dev1, "10.60.1.2"), "the data plane never notices a rotation"
        time.sleep(1)
    assert nsc.events("identity.rotated") and nse.events("identity.rotated")
    assert manager.events("relay.retired"), "connections presenting an old SVID make way for new ones"
    first_rotation = nsc.events("identity.rotated")[0]["ts"]
    refreshes = [e for e in nsc.events("link.refreshing") if e["ts"] > first_rotation]
    assert refreshes, nsc.log
    up = nsc.events("link.established")[0]["ts"]
    assert not nsc.events("heal.reselect"), nsc.log
    # A connection that is retired (our SVID or the server's rotated) drains gracefully (transport/http2.py):
    # calls in flight finish on it, new ones go out on a new connection. No request may fail.
    failed = [e for e in nsc.events("request.failed") if e["ts"] > up]
    assert not failed, nsc.log
    assert not manager.events("endpoint.lost"), manager.log
    assert not manager.events("request.denied") and not manager.events("tls.handshake_failed"), manager.log
    assert not manager.events("connection.closed"), manager.log
    assert (links(dev1), links(dev2)) == before


def test_sidecars_follow_the_workload_api_through_a_restart(lab: Lab) -> None:
    """nsm-local (and with it the Workload API) killed and started again: the sidecars' identity streams
    reconnect by themselves and keep getting new SVIDs from the same CA; the link never drops."""
    dev1, _ = start_two_devices(lab, nsm_local_args=("--svid-ttl", "30s"))
    manager, nse, nsc = lab.processes
    manager.signal(signal.SIGKILL)
    manager.wait(10)
    restarted = lab.nsm_local("--svid-ttl", "30s")
    wait_until(
        lambda: nsc.events("identity.rotated") and nse.events("identity.rotated"),
        30,
        "new SVIDs from the restarted Workload API",
    )
    assert len(restarted.events("workload.svid_issued")) >= 2, restarted.log
    assert lab.ping(dev1, "10.60.1.2")
    assert not nsc.events("heal.reselect"), nsc.log


def test_the_manager_socket_is_not_world_writable_and_insecure_mode_says_so(lab: Lab) -> None:
    manager = lab.nsm_local("--insecure")
    mode = os.stat(lab.socket.removeprefix("unix://")).st_mode & 0o777
    assert mode == 0o660, oct(mode)
    assert manager.events("security.insecure"), manager.log
    assert not os.path.exists(lab.workload_api.removeprefix("unix://")), "no Workload API when insecure"
    manifest = lab.directory / "p2p.yaml"
    manifest.write_text(P2P)
    secure_cli = lab.nsm_local_cli("apply", "-f", str(manifest))  # needs an SVID: nobody serves one
    assert secure_cli.returncode == 1
    assert f"no SPIFFE Workload API at {lab.workload_api}" in secure_cli.stderr, secure_cli.stderr
    applied = lab.nsm_local_cli("apply", "-f", str(manifest), "--insecure")
    assert applied.returncode == 0, applied.stderr
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(
        dev2,
        ENDPOINT_NETWORK_SERVICE="p2p",
        ENDPOINT_LABELS="device=device-2",
        IP_ADDRESS="10.60.1.0/24",
        NSM_INSECURE="true",
    )
    nsc = lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21", NSM_INSECURE="true")
    wait_until(lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30"), 20, "the link, insecure")
    assert nse.events("security.insecure") and nsc.events("security.insecure")
