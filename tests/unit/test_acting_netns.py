"""Which namespace nsm-local lets a caller put links in or offer: the one its identity names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from nsm_local.attestation import netns_named_by
from nsm_local.identities import ControlPlaneIdentity
from nsm_sdk.transport.peercred import PeerCredentials


def connection(peer_id: str | None, netns: int, process_netns: int) -> Any:
    """What acting_netns reads of a relay connection: the TLS peer and the kernel's credentials."""
    peer = SimpleNamespace(spiffe_id=peer_id) if peer_id is not None else None
    credentials = PeerCredentials(pid=1, uid=0, gid=0, netns=netns, process_netns=process_netns)
    return SimpleNamespace(peer=peer, credentials=credentials)


def test_netns_identities_name_their_namespace_and_others_none() -> None:
    assert netns_named_by("spiffe://nsm.local/netns/4026532174/uid/0") == 4026532174
    assert netns_named_by("spiffe://example.org/ns/default/pod/r1") is None
    assert netns_named_by("spiffe://nsm.local/netns/x/uid/0") is None
    assert netns_named_by(None) is None


def test_a_caller_acts_in_the_namespace_its_identity_names_not_the_one_it_sent() -> None:
    identity = ControlPlaneIdentity.insecure("nsm.local", 600.0)
    router = "spiffe://nsm.local/netns/200/uid/0"
    # an agent host for router 200: sent 200's fd, shows 200's SVID
    assert identity.acting_netns(connection(router, netns=200, process_netns=100)) == 200
    # someone in namespace 300 that sent 200's fd but shows its own SVID gets its own namespace
    assert identity.acting_netns(connection("spiffe://nsm.local/netns/300/uid/0", 200, 300)) == 300
    # a pod's identity names no namespace: the process's own, never one it sent
    assert identity.acting_netns(connection("spiffe://cluster.local/ns/lab/pod/r1", 200, 300)) == 300
    # plaintext: the identity is attested from the credentials, so the namespace it acts in
    assert identity.acting_netns(connection(None, netns=200, process_netns=100)) == 200
    assert identity.acting_netns(None) is None
