"""Who nsm-local is, and who calls it.

Secure (the default): nsm-local runs a development CA for its trust domain (`dev_ca`), hands SVIDs to
local workloads through its Workload API (`workload_api`), and gives itself two SVIDs from the same CA,
one per role, exactly like a real cluster where nsmgr and the forwarder are different workloads:

* `spiffe://<td>/nsm-local/nsmgr` serves the manager socket and signs the nsmgr path segment;
* `spiffe://<td>/nsm-local/forwarder` dials endpoints and signs the forwarder segment.

Both are re-issued at half their lifetime (new handshakes and tokens use the new ones).

Callers are identified by their TLS SPIFFE id; in plaintext (`--insecure`) by what the kernel says of
the connecting process (the same `netns/<inode>/uid/<uid>` id the Workload API would give it), so that
ownership holds in both modes. The operator is whoever has nsm-local's own uid and network namespace
(the user who started it, e.g. `nsm-local apply` on the host): it may manage any NetworkService and see
every connection. In Kubernetes mode (`nsm_local.kube`) callers are named by their pod instead (the
attestor is given), and the operator is nsm-local's own pod (`kubectl exec` into it); outside a pod there
is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nsm_local.attestation import Attestor, netns_named_by, netns_uid_attestor
from nsm_sdk.agent.credentials import CallTokens
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.security import prepare, secure_identity
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.transport.peercred import PeerCredentials
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.security import PLAINTEXT, StreamSecurity

if TYPE_CHECKING:  # the CA (py-spiffe, X.509 building) is loaded only in secure mode
    from nsm_local.dev_ca import DevCA

MANAGER_PATH = "nsm-local/nsmgr"
FORWARDER_PATH = "nsm-local/forwarder"


class RotatingSvid:
    """One SVID of nsm-local itself, re-issued from the CA at half of its lifetime."""

    def __init__(self, ca: DevCA, spiffe_id: str, ttl: float, log: EventLog) -> None:
        self._ca = ca
        self.spiffe_id = spiffe_id
        self._ttl = ttl
        self._log = log
        self._material = ca.issue(spiffe_id, ttl)

    def __repr__(self) -> str:
        return f"<RotatingSvid {self._material!r}>"

    def current(self) -> X509Material:
        return self._material

    async def rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 2)
            self._material = self._ca.issue(self.spiffe_id, self._ttl)
            self._log.debug("identity.rotated", spiffe_id=self.spiffe_id)


@dataclass
class Role:
    """What one role dials or serves with, and signs its path segment with."""

    security: StreamSecurity
    tokens: CallTokens


class ControlPlaneIdentity:
    """The manager's and the forwarder's identities, and how callers are named."""

    def __init__(
        self,
        trust_domain: str,
        manager: Role,
        forwarder: Role,
        svids: tuple[RotatingSvid, ...] = (),
        ca: DevCA | None = None,
        attest: Attestor | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.manager = manager
        self.forwarder = forwarder
        self.ca = ca
        self._svids = svids
        self._attest = attest if attest is not None else netns_uid_attestor(trust_domain)
        self._operator = self._attest(_own_credentials())
        self._operator_asked = time.monotonic()
        self._rotations: list[asyncio.Task[None]] = []

    @property
    def operator(self) -> str | None:
        """nsm-local's own identity as a caller would have it. Asked again until it is known: in Kubernetes
        mode nsm-local's own pod is named only once the pods of the node have been listed (at most once a
        second: the monitor asks for every event)."""
        if self._operator is None and time.monotonic() - self._operator_asked >= 1.0:
            self._operator_asked = time.monotonic()
            self._operator = self._attest(_own_credentials())
        return self._operator

    @property
    def secure(self) -> bool:
        return self.ca is not None

    @classmethod
    def secure_from(
        cls,
        ca: DevCA,
        svid_ttl: float,
        token_lifetime: float,
        log: EventLog,
        attest: Attestor | None = None,
    ) -> ControlPlaneIdentity:
        roles: list[Role] = []
        svids = []
        for path in (MANAGER_PATH, FORWARDER_PATH):
            svid = RotatingSvid(ca, f"spiffe://{ca.trust_domain}/{path}", svid_ttl, log)
            svids.append(svid)
            roles.append(Role(*secure_identity(svid.current, token_lifetime)))
        return cls(ca.trust_domain, roles[0], roles[1], tuple(svids), ca, attest)

    @classmethod
    def insecure(
        cls, trust_domain: str, token_lifetime: float, attest: Attestor | None = None
    ) -> ControlPlaneIdentity:
        def role(path: str) -> Role:
            signer = TokenSigner(spiffe_id=f"spiffe://{trust_domain}/{path}")
            return Role(PLAINTEXT, CallTokens(signer, token_lifetime))

        return cls(trust_domain, role(MANAGER_PATH), role(FORWARDER_PATH), attest=attest)

    def start(self) -> None:
        for role in (self.manager, self.forwarder):
            prepare(role.security)
        self._rotations = [asyncio.create_task(svid.rotate_forever()) for svid in self._svids]

    async def aclose(self) -> None:
        for task in self._rotations:
            task.cancel()
        for task in self._rotations:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._rotations = []

    def caller(self, connection: RelayConnection | None) -> str | None:
        """The identity behind a call: its TLS SPIFFE id, else (plaintext) its kernel-attested id."""
        if connection is None:
            return None
        if connection.peer is not None:
            return connection.peer.spiffe_id
        if connection.credentials is not None:
            return self._attest(connection.credentials)
        return None

    def acting_netns(self, connection: RelayConnection | None) -> int | None:
        """The namespace a caller may put links in or offer (None: unknown): the one its identity names
        (`.../netns/<inode>/uid/<uid>`), else the one its process runs in. A caller that sent another
        namespace's fd (`PeerCredentials.acting_in`) but shows an identity of its own so gets its own
        namespace, not the one it sent."""
        if connection is None or connection.credentials is None:
            return None
        named = netns_named_by(self.caller(connection))
        if named is not None:
            return named
        credentials = connection.credentials  # a pod's identity names no namespace: the process's own
        return credentials.process_netns if credentials.process_netns is not None else credentials.netns

    def forwarder_peer(self) -> PeerIdentity | None:
        """The forwarder as nsmgr's peer (in one process): the audience of nsmgr's token to it."""
        if len(self._svids) < 2:
            return None
        material = self._svids[1].current()
        return PeerIdentity(material.spiffe_id, material.leaf)

    def is_operator(self, caller: str | None) -> bool:
        return caller is not None and caller == self.operator

    def attested(self, credentials: PeerCredentials) -> str | None:
        return self._attest(credentials)


def _own_credentials() -> PeerCredentials:
    return PeerCredentials(
        pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), netns=os.stat("/proc/self/ns/net").st_ino
    )

