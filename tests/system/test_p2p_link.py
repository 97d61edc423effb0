"""The seed's two-device example and its variations, end to end through nsm-local."""

from __future__ import annotations

from lab import Lab, run, wait_until

P2P = """
apiVersion: networkservicemesh.io/v1alpha1
kind: NetworkService
metadata:
  name: p2p
spec:
  matches:
  - match:
    sourceSelector:
      link: net-0
    route:
    - destination:
      destinationSelector:
        device: device-2
  payload: IP
"""


def start_two_devices(
    lab: Lab, client_if: str = "eth12", endpoint_if: str = "eth21", nsm_local_args: tuple[str, ...] = ()
) -> tuple[str, str]:
    lab.nsm_local(*nsm_local_args)
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO=f"p2p/{client_if}?link=net-0&peerif={endpoint_if}")
    wait_until(
        lambda: (
            lab.link_up(dev1, client_if, "10.60.1.1/30") and lab.link_up(dev2, endpoint_if, "10.60.1.2/30")
        ),
        20,
        "both ends of the link with their /30 addresses",
    )
    return dev1, dev2


def test_two_device_example_names_addresses_and_pings_both_ways(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab)
    assert list(lab.addresses(dev1)) == ["eth12"]
    assert list(lab.addresses(dev2)) == ["eth21"]
    assert lab.ping(dev1, "10.60.1.2")
    assert lab.ping(dev2, "10.60.1.1")
    listing = lab.nsm_local_cli("list")
    assert listing.returncode == 0, listing.stderr
    assert "if=eth12" in listing.stdout and "state=UP" in listing.stdout


def test_both_sidecars_report_their_side_verified(lab: Lab) -> None:
    start_two_devices(lab)
    nse, nsc = lab.processes[1], lab.processes[2]
    wait_until(lambda: nsc.events("agent.ready") and nse.events("link.verified"), 10, "both sides verified")
    assert nsc.events("link.verified")[0]["addresses"] == "10.60.1.1/30"
    assert nse.events("link.verified")[0]["ifname"] == "eth21"


def test_same_interface_name_on_both_ends(lab: Lab) -> None:
    dev1, dev2 = start_two_devices(lab, client_if="eth1", endpoint_if="eth1")
    assert lab.ping(dev1, "10.60.1.2")
    assert lab.ping(dev2, "10.60.1.1")


def test_readiness_file_exists_only_while_links_are_verified(lab: Lab) -> None:
    lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    ready = lab.directory / "nsc-ready"
    nsc = lab.nsc(
        dev1, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21", NSM_READY_FILE=str(ready)
    )
    wait_until(lambda: nsc.events("request.failed"), 10, "a first failed request (no endpoint yet)")
    assert not ready.exists()
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    wait_until(ready.exists, 20, "the readiness file")
    nsc.signal()
    assert nsc.wait(20) == 0
    assert not ready.exists()


def test_ipv6_pool_gives_a_126_per_link(lab: Lab) -> None:
    lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="fd00:60:1::/64"
    )
    lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21")
    wait_until(
        lambda: (
            lab.link_up(dev1, "eth12", "fd00:60:1::1/126") and lab.link_up(dev2, "eth21", "fd00:60:1::2/126")
        ),
        20,
        "the IPv6 link",
    )
    wait_until(lambda: lab.ping(dev1, "fd00:60:1::2"), 10, "IPv6 ping (neighbour discovery settles)")


def test_nsm_v1_addressing_gives_32_pairs_with_routes(lab: Lab) -> None:
    lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.nse(dev2, NSM_SERVICE_NAMES="p2p", NSM_LABELS="device:device-2", NSM_CIDR_PREFIX="172.16.1.100/31")
    lab.nsc(dev1, NSM_NETWORK_SERVICES="kernel://p2p/nsm-1?link=net-0")
    wait_until(lambda: lab.link_up(dev1, "nsm-1", "172.16.1.101/32"), 20, "the client side /32")
    # the endpoint's side is checked (and renamed) by its own sidecar, on its own schedule
    endpoint_links = wait_until(
        lambda: (found := lab.addresses(dev2)) and list(found.values()) == [["172.16.1.100/32"]] and found,
        10,
        f"the endpoint side /32 (now {lab.addresses(dev2)})",
    )
    assert endpoint_links and next(iter(endpoint_links)).startswith("p2p-"), "a generated name without peerif"
    assert "172.16.1.100 dev nsm-1" in run("ip", "-n", dev1, "route").stdout
    assert lab.ping(dev1, "172.16.1.100")
