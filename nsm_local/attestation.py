"""Who a local caller is, as nsm-local names it, and how long the SVIDs it issues live.

Kept apart from the CA and the Workload API (which need py-spiffe and cryptography's X.509 machinery) so
that the insecure mode, which also names callers this way for ownership, does not load them.

Two attestors exist: on one host (the default) `netns_uid_attestor`, from the caller's network namespace
and uid; in Kubernetes mode `nsm_local.kube.pods.PodAttestor`, from the pod the caller's container belongs
to. Both answer None for a caller they cannot name, and such a caller gets no identity.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from nsm_sdk.transport.peercred import PeerCredentials

Attestor = Callable[[PeerCredentials], str | None]
"""Who a connecting process is: its SPIFFE id, or None if it gets no identity."""

AsyncAttestor = Callable[[PeerCredentials], Awaitable[str | None]]
"""The same, for an attestor that may wait for what it needs to know (the Workload API awaits it)."""

DEFAULT_SVID_TTL = 3600.0
"""SPIRE's default X.509-SVID lifetime."""


def netns_uid_attestor(trust_domain: str) -> Attestor:
    """`spiffe://<trust domain>/netns/<netns inode>/uid/<uid>`; no identity if the netns is unknown."""

    def attest(credentials: PeerCredentials) -> str | None:
        if credentials.netns is None:
            return None
        return f"spiffe://{trust_domain}/netns/{credentials.netns}/uid/{credentials.uid}"

    return attest


_NETNS_ID = re.compile(r"^spiffe://[^/]+/netns/(\d+)/uid/\d+$")


def netns_named_by(spiffe_id: str | None) -> int | None:
    """The namespace inode a `netns_uid_attestor` identity names (None for any other identity)."""
    found = _NETNS_ID.match(spiffe_id or "")
    return int(found.group(1)) if found else None
