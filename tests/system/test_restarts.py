"""Sidecars killed (SIGKILL) and started again take over the links they left, rather than adding new ones.

The client finds its connections at the manager (cmd-nsc's start-up recovery) and refreshes them, so each
interface keeps its ifindex and its one address pair and the manager keeps one connection per link. The
endpoint keeps what its interfaces still carry for them, so refreshes get their addresses back and no new
link is given an address a live link uses.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field

import pytest
from lab import Lab, Process
from labtools import run, wait_until

SERVICE = """
apiVersion: networkservicemesh.io/v1alpha1
kind: NetworkService
metadata:
  name: p2p
spec:
  payload: IP
"""

SEED_POOL = "10.60.1.0/24"
LINKS = (("eth12", "eth21", "net-0"), ("eth13", "eth31", "net-1"), ("eth14", "eth41", "net-2"))
"""(client interface, endpoint interface, link label) of each link the client asks for."""
NEWCOMER = (("eth15", "eth51", "net-3"),)


@dataclass(frozen=True)
class Addressing:
    """How the endpoint hands out addresses, and the client variable and grammar that go with it."""

    nse_env: dict[str, str]
    nsc_variable: str
    url: str = "p2p/{client}?link={link}&peerif={endpoint}"
    nsc_env: dict[str, str] = field(default_factory=dict)

    def links(self, links: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
        value = ",".join(self.url.format(client=c, endpoint=e, link=k) for c, e, k in links)
        return {self.nsc_variable: value, **self.nsc_env}


SEED = Addressing(
    {"ENDPOINT_NETWORK_SERVICE": "p2p", "ENDPOINT_LABELS": "device=device-2", "IP_ADDRESS": SEED_POOL},
    "NS_NETWORKSERVICEMESH_IO",
)
NSM = Addressing(
    {"NSM_SERVICE_NAMES": "p2p", "NSM_LABELS": "device:device-2", "NSM_CIDR_PREFIX": "172.16.1.0/28"},
    "NSM_NETWORK_SERVICES",
    url="kernel://p2p/{client}?link={link}&peerif={endpoint}",
)


def seed_links(links: tuple[tuple[str, str, str], ...]) -> str:
    return SEED.links(links)[SEED.nsc_variable]


def ifindexes(netns: str) -> dict[str, int]:
    out = run("ip", "-n", netns, "-j", "link", "show").stdout
    return {
        link["ifname"]: int(link["ifindex"]) for link in json.loads(out or "[]") if link["ifname"] != "lo"
    }


def connection_lines(lab: Lab) -> list[str]:
    """The CONNECTIONS section of `nsm-local list`, one line per connection the manager holds."""
    listing = lab.nsm_local_cli("list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    start = lines.index("CONNECTIONS") + 1
    return [line for line in lines[start:] if line.startswith(" ")]


def one_per_link(lab: Lab, client_ifs: list[str]) -> bool:
    lines = connection_lines(lab)
    return len(lines) == len(client_ifs) and all(
        sum(f"if={name} " in line for line in lines) == 1 for name in client_ifs
    )


def start_links(
    lab: Lab, links: tuple[tuple[str, str, str], ...], addressing: Addressing = SEED, **nsc_env: str
) -> tuple[str, str, Process, Process]:
    """nsm-local, one endpoint in device-2 and one client in device-1 asking for `links`, all up."""
    lab.nsm_local()
    lab.apply(SERVICE)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(dev2, **addressing.nse_env)
    nsc = lab.nsc(dev1, **addressing.links(links), **nsc_env)
    wait_until(
        lambda: (
            all(lab.addresses(dev1).get(c) for c, _, _ in links)
            and all(lab.addresses(dev2).get(e) for _, e, _ in links)
        ),
        30,
        "every link up on both sides",
    )
    wait_until(lambda: nsc.events("agent.ready"), 10, "the client to verify its links")
    return dev1, dev2, nse, nsc


def assert_one_pair_each(lab: Lab, netns: str, expected: dict[str, list[str]]) -> None:
    assert lab.addresses(netns) == expected, f"{netns}: {lab.addresses(netns)} != {expected}"
    assert all(len(pair) == 1 for pair in expected.values())


def restart_client(lab: Lab, nsc: Process, dev1: str, links: tuple[tuple[str, str, str], ...]) -> Process:
    nsc.signal(signal.SIGKILL)
    nsc.wait(10)
    restarted = lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO=seed_links(links))
    wait_until(
        lambda: len(restarted.events("link.established")) == len(links) and restarted.events("agent.ready"),
        30,
        "the restarted client to establish and verify every link",
    )
    return restarted


def test_killed_client_adopts_its_link_keeping_ifindex_addresses_and_connection(lab: Lab) -> None:
    links = LINKS[:1]
    dev1, dev2, nse, nsc = start_links(lab, links)
    before_index, before_1, before_2 = ifindexes(dev1), lab.addresses(dev1), lab.addresses(dev2)
    assert one_per_link(lab, ["eth12"])
    restarted = restart_client(lab, nsc, dev1, links)
    assert [e["conn"] for e in restarted.events("link.adopting")] == [
        nsc.events("link.established")[0]["conn"]
    ]
    assert ifindexes(dev1) == before_index, "the interface was kept, not made anew"
    assert_one_pair_each(lab, dev1, before_1)
    assert_one_pair_each(lab, dev2, before_2)
    assert one_per_link(lab, ["eth12"]), connection_lines(lab)
    assert len(lab.processes[0].events("connection.up")) == 1, "the manager opened no second connection"
    assert len(nse.events("request.accepted")) == 1, "the endpoint saw a refresh, not a new connection"
    assert not restarted.events("request.failed"), restarted.log
    assert lab.ping(dev1, "10.60.1.2")


def test_killed_client_adopts_all_of_several_links(lab: Lab) -> None:
    dev1, dev2, nse, nsc = start_links(lab, LINKS)
    before_index, before_1, before_2 = ifindexes(dev1), lab.addresses(dev1), lab.addresses(dev2)
    client_ifs = [c for c, _, _ in LINKS]
    assert one_per_link(lab, client_ifs)
    restarted = restart_client(lab, nsc, dev1, LINKS)
    assert len(restarted.events("link.adopting")) == len(LINKS)
    assert ifindexes(dev1) == before_index
    assert_one_pair_each(lab, dev1, before_1)
    assert_one_pair_each(lab, dev2, before_2)
    assert one_per_link(lab, client_ifs), connection_lines(lab)
    assert len(nse.events("request.accepted")) == len(LINKS)
    for addresses in before_2.values():
        assert lab.ping(dev1, addresses[0].split("/")[0])
    # the adopted links still close cleanly
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(20) == 0
    wait_until(lambda: lab.addresses(dev2) == {} and connection_lines(lab) == [], 10, "every link closed")


@pytest.mark.parametrize("addressing", [SEED, NSM], ids=["seed-30", "nsm-32"])
def test_killed_endpoint_keeps_every_link_and_gives_a_newcomer_a_free_pair(
    lab: Lab, addressing: Addressing
) -> None:
    # Refreshes every 3 s: they reach the restarted endpoint soon after the client resumes, whether or not
    # the manager tells the client about the endpoint it lost; the links outlive the pause (13 s).
    timing = {"NSM_MAX_TOKEN_LIFETIME": "15s", "NSM_REQUEST_TIMEOUT": "2s"}
    dev1, dev2, nse, nsc = start_links(lab, LINKS, addressing, **timing)
    before_index_1, before_index_2 = ifindexes(dev1), ifindexes(dev2)
    before_1, before_2 = lab.addresses(dev1), lab.addresses(dev2)
    live = {a for pair in [*before_1.values(), *before_2.values()] for a in pair}
    # Hold the client still, so the newcomer reaches the restarted endpoint before any refresh does.
    nsc.signal(signal.SIGSTOP)
    try:
        nse.signal(signal.SIGKILL)
        nse.wait(10)
        restarted = lab.nse(dev2, **addressing.nse_env)
        dev3 = lab.netns("device-3")
        lab.nsc(dev3, **addressing.links(NEWCOMER))
        wait_until(lambda: lab.addresses(dev3).get("eth15"), 30, "the newcomer's link")
        newcomer = lab.addresses(dev3)["eth15"] + lab.addresses(dev2)["eth51"]
        assert not live & set(newcomer), f"the newcomer got {newcomer}, which live links use"
        assert len(restarted.events("ipam.kept")) == len(LINKS), restarted.log
    finally:
        nsc.signal(signal.SIGCONT)
    wait_until(
        lambda: len(restarted.events("request.accepted")) == len(LINKS) + 1,
        30,
        "the client's refreshes to reach the restarted endpoint",
    )
    wait_until(lambda: one_per_link(lab, [c for c, _, _ in LINKS] + ["eth15"]), 10, "one connection per link")
    assert ifindexes(dev1) == before_index_1
    assert {k: v for k, v in ifindexes(dev2).items() if k != "eth51"} == before_index_2
    assert_one_pair_each(lab, dev1, before_1)
    assert_one_pair_each(lab, dev2, {**before_2, "eth51": lab.addresses(dev2)["eth51"]})
    assert not restarted.events("ipam.kept_released"), "every kept pair went back to its own link"
    for addresses in [*before_2.values(), lab.addresses(dev2)["eth51"]]:
        peer = addresses[0].split("/")[0]
        assert lab.ping(dev1, peer) or lab.ping(dev3, peer), f"no answer from {peer}"


def test_killed_client_and_endpoint_both_restarted_keep_the_link(lab: Lab) -> None:
    links = LINKS[:1]
    dev1, dev2, nse, nsc = start_links(lab, links)
    before_index, before_1, before_2 = ifindexes(dev1), lab.addresses(dev1), lab.addresses(dev2)
    nse.signal(signal.SIGKILL)
    nse.wait(10)
    lab.nse(dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS=SEED_POOL)
    restart_client(lab, nsc, dev1, links)
    assert ifindexes(dev1) == before_index
    assert_one_pair_each(lab, dev1, before_1)
    assert_one_pair_each(lab, dev2, before_2)
    assert one_per_link(lab, ["eth12"]), connection_lines(lab)
    assert lab.ping(dev1, "10.60.1.2")


def test_killed_nsm_local_restarted_brings_back_every_link_on_both_sides_without_touching_a_sidecar(
    lab: Lab,
) -> None:
    dev1, dev2, nse, nsc = start_links(lab, LINKS)
    before = ifindexes(dev1), ifindexes(dev2), lab.addresses(dev1), lab.addresses(dev2)
    manager = lab.processes[0]
    manager.signal(signal.SIGKILL)
    manager.wait(10)
    assert all(lab.ping(dev1, f"10.60.1.{4 * i + 2}") for i in range(len(LINKS))), "the data plane stays"
    lab.nsm_local()
    wait_until(lambda: one_per_link(lab, [c for c, _, _ in LINKS]), 40, "every connection back in nsm-local")
    assert (ifindexes(dev1), ifindexes(dev2), lab.addresses(dev1), lab.addresses(dev2)) == before
    assert nse.alive() and nsc.alive(), "no sidecar was restarted"
    assert len(lab.processes) == 4, "and no other was started"
    assert all(lab.ping(dev1, f"10.60.1.{4 * i + 2}") for i in range(len(LINKS)))
    assert not nse.events("ipam.kept"), "the endpoint never restarted, so it kept nothing aside"
