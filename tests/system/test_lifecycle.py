"""Shutdown, restarts and healing: nothing leaks, nothing is silently lost."""

from __future__ import annotations

import signal

from lab import Lab, run, wait_until
from test_p2p_link import P2P, start_two_devices


def test_sigterm_to_client_removes_both_sides_and_releases_the_addresses(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    nse, nsc = lab.processes[1], lab.processes[2]
    nsc.signal(signal.SIGTERM)
    assert nsc.wait(20) == 0
    assert lab.addresses(dev1) == {}
    wait_until(lambda: lab.addresses(dev2) == {}, 5, "the endpoint side to go")
    assert nse.events("close.done")
    listing = lab.nsm_local_cli("list").stdout
    assert "if=eth12" not in listing
    # the /30 was released: a new client gets the same addresses again
    lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21")
    wait_until(lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30"), 20, "the link to come back")


def test_sigterm_to_endpoint_takes_the_link_down_and_client_waits_for_it(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    nse, nsc = lab.processes[1], lab.processes[2]
    nse.signal(signal.SIGTERM)
    assert nse.wait(20) == 0
    wait_until(lambda: lab.addresses(dev1) == {} and lab.addresses(dev2) == {}, 10, "both sides to go")
    assert nse.events("registration.removed")
    # The endpoint removes its side itself. nsm-local also tears the link down on the endpoint's DELETE, but
    # NSM's Go forwarder only relays that event (found by tests/interop): the sidecar must not rely on it.
    assert [e["ifname"] for e in nse.events("link.removed")] == ["eth21"], nse.log
    wait_until(lambda: nsc.events("request.failed"), 10, "the client to keep trying")
    assert nsc.alive(), "retries must never end the client"
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    wait_until(
        lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30") and lab.link_up(dev2, "eth21", "10.60.1.2/30"),
        20,
        "the link to come back with the endpoint",
    )
    assert lab.ping(dev1, "10.60.1.2")


def test_manager_restart_is_healed_without_touching_the_sidecars(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    manager, nse, nsc = lab.processes
    manager.signal(signal.SIGKILL)
    manager.wait(10)
    assert lab.ping(dev1, "10.60.1.2"), "the data plane does not depend on the control plane"
    lab.nsm_local()
    wait_until(
        lambda: "if=eth12" in lab.nsm_local_cli("list").stdout,
        30,
        "the client's connection to be re-established",
    )
    listing = lab.nsm_local_cli("list").stdout
    assert "p2p" in listing and "device=device-2" in listing, (
        "applied services survive; the endpoint re-registered"
    )
    assert nse.alive() and nsc.alive()
    assert lab.addresses(dev1) == {"eth12": ["10.60.1.1/30"]}
    assert lab.addresses(dev2) == {"eth21": ["10.60.1.2/30"]}
    assert lab.ping(dev1, "10.60.1.2")
    # and the healed connection still closes cleanly
    nsc.signal(signal.SIGTERM)
    assert nsc.wait(20) == 0
    wait_until(lambda: lab.addresses(dev2) == {}, 10, "the endpoint side to go after the healed close")


def test_endpoint_restart_keeps_the_link_and_its_addresses(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    nse, nsc = lab.processes[1], lab.processes[2]
    nse.signal(signal.SIGKILL)
    nse.wait(10)
    assert nsc.alive()
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    restarted = lab.processes[-1]
    wait_until(
        lambda: restarted.events("request.accepted"), 30, "the client's refresh to reach the new endpoint"
    )
    assert restarted.events("request.accepted")[0]["src"] == "10.60.1.1/30"
    assert lab.addresses(dev1) == {"eth12": ["10.60.1.1/30"]}
    assert lab.ping(dev1, "10.60.1.2")


def test_links_survive_many_token_lifetimes_and_registration_expiries(lab: Lab) -> None:
    lab.nsm_local("--registration-expiry", "2s")
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(
        dev2,
        ENDPOINT_NETWORK_SERVICE="p2p",
        ENDPOINT_LABELS="device=device-2",
        IP_ADDRESS="10.60.1.0/24",
        NSM_MAX_TOKEN_LIFETIME="3s",
        NSM_REQUEST_TIMEOUT="1s",
    )
    nsc = lab.nsc(
        dev1,
        NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21",
        NSM_MAX_TOKEN_LIFETIME="3s",
        NSM_REQUEST_TIMEOUT="1s",
        NSM_LOG_LEVEL="DEBUG",  # routine refreshes are logged at debug
    )
    wait_until(lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30"), 20, "the link")
    wait_until(lambda: len(nsc.events("link.refreshing")) >= 8, 30, "several refreshes (token lifetime 3s)")
    manager = lab.processes[0]
    assert not manager.events("endpoint.expired"), "the endpoint refreshes its 2s registration in time"
    assert not manager.events("connection.closed"), "the connection never expired"
    assert len(nse.events("request.accepted")) == 1, "refreshes reuse the connection, no new ones"
    assert lab.ping(dev1, "10.60.1.2")


def test_client_reselects_a_new_endpoint_when_the_pinned_one_vanishes(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    nse, nsc = lab.processes[1], lab.processes[2]
    nse.signal(signal.SIGKILL)
    nse.wait(10)
    run("ip", "netns", "delete", dev2)  # the endpoint's pod is gone, and our side of the link with it
    lab.namespaces.remove(dev2)
    dev3 = lab.netns("device-2b")
    lab.nse(
        dev3, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    wait_until(
        lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30") and lab.link_up(dev3, "eth21", "10.60.1.2/30"),
        30,
        "the link to the replacement endpoint",
    )
    # found by tests/interop: the pinned refresh must not keep failing until the backoff runs out
    assert nsc.events("heal.reselect"), nsc.log
    assert lab.ping(dev1, "10.60.1.2")
