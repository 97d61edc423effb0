"""Bad configuration: one clear line naming the variable, exit code 2, nothing half-configured."""

from __future__ import annotations

import pytest
from lab import Lab

CLIENT_CASES = [
    ({}, "NS_NETWORKSERVICEMESH_IO"),
    ({"NS_NETWORKSERVICEMESH_IO": "p2p/averyveryverylongname?link=net-0"}, "averyveryverylongname"),
    ({"NSM_NETWORK_SERVICES": "memif://p2p/eth1"}, "memif"),
    ({"NS_NETWORKSERVICEMESH_IO": "p2p/eth1", "NSM_REQUEST_TIMEOUT": "soon"}, "NSM_REQUEST_TIMEOUT"),
    ({"NS_NETWORKSERVICEMESH_IO": "p2p/eth1", "NSM_CONNECT_TO": "http://x"}, "NSM_CONNECT_TO"),
    ({"NS_NETWORKSERVICEMESH_IO": "p2p/eth1", "SPIFFE_ENDPOINT_SOCKET": "sock"}, "SPIFFE_ENDPOINT_SOCKET"),
    ({"NS_NETWORKSERVICEMESH_IO": "p2p/eth1", "NSM_INSECURE": "maybe"}, "NSM_INSECURE"),
]

ENDPOINT_CASES = [
    ({}, "ENDPOINT_NETWORK_SERVICE"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "IP_ADDRESS": "10.60.1.0/33"}, "IP_ADDRESS"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "IP_ADDRESS": "10.60.1.1/31"}, "IP_ADDRESS"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "ENDPOINT_LABELS": "device"}, "ENDPOINT_LABELS"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "NSM_CIDR_PREFIX": "nonsense"}, "NSM_CIDR_PREFIX"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "SPIFFE_ENDPOINT_SOCKET": "unix://rel"}, "SPIFFE_ENDPOINT_SOCKET"),
    ({"ENDPOINT_NETWORK_SERVICE": "p2p", "NSM_INSECURE": "2"}, "NSM_INSECURE"),
]


@pytest.mark.parametrize(("env", "named"), CLIENT_CASES)
def test_client_rejects_bad_configuration_before_doing_anything(
    lab: Lab, env: dict[str, str], named: str
) -> None:
    manager = lab.nsm_local()
    dev = lab.netns("device")
    nsc = lab.nsc(dev, **env)
    assert nsc.wait(20) == 2
    lines = nsc.log.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], nsc.log
    assert lab.addresses(dev) == {}
    assert "request" not in manager.log


@pytest.mark.parametrize(("env", "named"), ENDPOINT_CASES)
def test_endpoint_rejects_bad_configuration_before_registering(
    lab: Lab, env: dict[str, str], named: str
) -> None:
    manager = lab.nsm_local()
    nse = lab.nse(lab.netns("device"), **env)
    assert nse.wait(20) == 2
    lines = nse.log.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], nse.log
    assert "endpoint.registered" not in manager.log


def test_apply_of_a_broken_manifest_registers_nothing(lab: Lab) -> None:
    lab.nsm_local()
    path = lab.directory / "broken.yaml"
    path.write_text(
        "apiVersion: networkservicemesh.io/v1alpha1\nkind: NetworkService\nmetadata:\n  name: ok\n"
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: nope\n"
    )
    result = lab.nsm_local_cli("apply", "-f", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "document 2" in result.stderr and "apiVersion" in result.stderr
    assert "ok" not in lab.nsm_local_cli("list").stdout.split("ENDPOINTS")[0].replace("NETWORK SERVICES", "")
