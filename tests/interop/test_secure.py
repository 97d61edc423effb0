"""Secure mode against NSM's real Go control plane, Go <-> Go: what SPIFFE adds to the matrix's checks
(test_matrix.TestSecureLink runs those in a secure lab).

- every hop is mTLS and a cleartext client or one without an SVID gets nothing;
- the path tokens are ES256 JWTs signed with the SVID keys of the four hops, chained by `aud`;
- X.509-SVID rotation (short TTLs) under a live link;
- ownership: what a workload with another SPIFFE id can do to a connection it does not own.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from interop_lab import (
    CONN_ID,
    IFNAME,
    NSC_ADDRESS,
    NSC_NAME,
    NSE_ADDRESS,
    REQUEST_TIMEOUT,
    SERVICE,
    TOKEN_LIFETIME,
    Lab,
    Link,
    establish,
    go_duration,
)
from labtools import wait_until
from spire_lab import IDENTITIES, INTRUDER_GID, SpireLab

pytestmark = pytest.mark.timeout(300)

ID = {role: identity.spiffe_id for role, identity in IDENTITIES.items()}


def first_der(chain: bytes) -> bytes:
    """The leaf of a DER chain (certificates concatenated, leaf first): one ASN.1 SEQUENCE."""
    if chain[1] & 0x80:
        size = chain[1] & 0x7F
        return chain[: 2 + size + int.from_bytes(chain[2 : 2 + size], "big")]
    return chain[: 2 + chain[1]]


def svid_certificates(spire: SpireLab, gid: int) -> dict[str, x509.Certificate]:
    """SPIFFE id -> current leaf certificate, for a gid."""
    found = {}
    for svid in spire.fetch_x509(gid):
        chain = base64.b64decode(svid["x509_svid"])
        found[svid["spiffe_id"]] = x509.load_der_x509_certificate(first_der(chain))
    return found


def verify_es256(token: str, cert: x509.Certificate) -> dict[str, Any]:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"  # SVID keys: P-256
    claims: dict[str, Any] = jwt.decode(
        token, key=key, algorithms=["ES256"], options={"verify_aud": False, "verify_exp": False}
    )
    return claims


def verifies(token: str, cert: x509.Certificate) -> bool:
    try:
        verify_es256(token, cert)
    except jwt.InvalidSignatureError:
        return False
    return True


@pytest.fixture
def secure_go_link(secure_lab: Lab) -> Link:
    return establish(secure_lab, "go", "go")


def test_each_component_has_its_own_identity(secure_lab: Lab) -> None:
    assert secure_lab.ready["spiffe_ids"] == {
        "registry": ID["registry"],
        "nsmgr": ID["nsmgr"],
        "forwarder": ID["forwarder"],
    }


def test_path_tokens_are_es256_signed_by_each_hops_svid_and_chained(secure_go_link: Link) -> None:
    lab = secure_go_link.lab
    assert lab.spire is not None
    certs = {
        **svid_certificates(lab.spire, lab.gids["control-plane"]),
        **svid_certificates(lab.spire, lab.gids["nsc"]),
        **svid_certificates(lab.spire, lab.gids["nse"]),
    }
    reply = lab.connection_file(NSC_NAME)  # what the Go client got back, written once its Request returned
    wait_until(reply.exists, 10, "the Go client's connection file")
    conn = json.loads(reply.read_text())
    segments = conn["path"]["path_segments"]
    expected = [ID["nsc"], ID["nsmgr"], ID["forwarder"], ID["nse"]]
    claims = []
    for segment, owner in zip(segments, expected, strict=True):
        header = jwt.get_unverified_header(segment["token"])
        assert header["alg"] == "ES256" and "kid" not in header, header
        claims.append(verify_es256(segment["token"], certs[owner]))
    assert [c["sub"] for c in claims] == expected
    # each token names the next hop as its audience (a JSON array), the endpoint's names its caller
    assert [c["aud"] for c in claims] == [[ID["nsmgr"]], [ID["forwarder"]], [ID["nse"]], [ID["forwarder"]]]
    for c in claims:
        assert c["exp"] <= time.time() + TOKEN_LIFETIME + 1
        assert set(c) == {"sub", "aud", "exp"}


def test_cleartext_clients_and_workloads_without_an_svid_get_nothing(secure_lab: Lab) -> None:
    find = ("find-nse", "-connect-to", secure_lab.nsmgr_url, "-service", SERVICE, "-timeout", "2s")
    # the same client without TLS (the insecure harness's): no handshake, no answer
    cleartext = secure_lab.helper(*find, spiffe=False)
    assert cleartext.returncode != 0, cleartext
    assert "context deadline exceeded" in cleartext.stderr, cleartext.stderr
    # a gid without a registration entry gets no SVID from the Workload API, so no client certificate
    nobody = secure_lab.helper(*find, "-spiffe-timeout", "2s", gid=2099)
    assert nobody.returncode != 0 and "X509 source" in nobody.stderr, nobody.stderr
    # the baseline: the same call with the client's identity works
    ok = secure_lab.helper(*find)
    assert ok.returncode == 0, ok.stderr


# ----- X.509-SVID rotation -----

# A second set of workloads whose SVIDs live SVID_TTL seconds. SPIRE backdates NotBefore by 10 s and the
# agent renews an SVID at half its certificate's lifetime, so with 20 s they rotate every ~5 s.
ROTATING_GIDS = {"control-plane": 2100, "nsc": 2101, "nse": 2102}
SVID_TTL = 20.0


@pytest.fixture
def rotating_lab(harness: Path, spire: SpireLab) -> Iterator[Lab]:
    """A secure lab whose processes get short-lived SVIDs (same SPIFFE ids, other gids)."""
    wanted = [(ID[role], ROTATING_GIDS["control-plane"]) for role in ("nsmgr", "registry", "forwarder")]
    wanted += [(ID["nsc"], ROTATING_GIDS["nsc"]), (ID["nse"], ROTATING_GIDS["nse"])]
    for sid, gid in wanted:
        spire.add_entry(sid, gid, x509_ttl=SVID_TTL, wait=False)
    for sid, gid in wanted:
        spire.wait_for_svid(sid, gid)
    lab = Lab(spire=spire, gids=dict(ROTATING_GIDS))
    try:
        lab.control_plane(strict=True)
        yield lab
    finally:
        lab.close()


class SvidRecorder:
    """Every X.509-SVID the SPIRE agent hands the given gids, polled every `every` seconds in a thread for
    as long as it runs: the test's own loop is slowed by pings and link checks (and establishing the link
    takes seconds under load), so it could miss a whole rotation of ~5 s and with it a certificate the client
    signed tokens with."""

    def __init__(self, spire: SpireLab, gids: tuple[int, ...], every: float = 0.25) -> None:
        self._spire, self._gids, self._every = spire, gids, every
        self.seen: dict[str, dict[int, x509.Certificate]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="svid-recorder", daemon=True)

    def current(self) -> dict[str, x509.Certificate]:
        found: dict[str, x509.Certificate] = {}
        for gid in self._gids:
            found.update(svid_certificates(self._spire, gid))
        for sid, cert in found.items():
            self.seen.setdefault(sid, {})[cert.serial_number] = cert
        return found

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.current()

    def __enter__(self) -> SvidRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("pair", [("go", "go"), ("py", "py")], ids=["go-nsc-go-nse", "py-nsc-py-nse"])
def test_link_survives_svid_rotation(rotating_lab: Lab, pair: tuple[str, str]) -> None:
    lab = rotating_lab
    spire = lab.spire
    assert spire is not None
    recorder = SvidRecorder(spire, (ROTATING_GIDS["nsc"], ROTATING_GIDS["control-plane"]))
    before = recorder.current()
    assert before[ID["nsc"]].not_valid_after_utc.timestamp() - time.time() <= SVID_TTL + 1
    with recorder:
        # Establish right after the nsmgr's SVID rotated, so that the first Request does not cross a
        # rotation: that case (a first reply signed with a key the connection did not show) has its own
        # retry path and left a second veth in one CI run; this test is about a live link surviving the
        # rotations that follow.
        rotated_from = recorder.current()[ID["nsmgr"]].serial_number
        wait_until(
            lambda: recorder.current()[ID["nsmgr"]].serial_number != rotated_from, SVID_TTL, "a rotation"
        )
        link = establish(lab, *pair)
        deadline = time.monotonic() + 2.5 * SVID_TTL
        while time.monotonic() < deadline:  # up and pinging all along, through several rotations
            assert lab.link_up(link.nsc_ns, IFNAME, NSC_ADDRESS)
            assert lab.ping(link.nsc_ns, NSE_ADDRESS)
            time.sleep(0.5)
    after = recorder.current()
    for sid in (ID["nsc"], ID["nsmgr"], ID["forwarder"]):
        assert after[sid].serial_number != before[sid].serial_number, sid  # rotated
    failed = lab.events("nsmgr.request_failed")
    # Characterization of sdk v1.18.0, not of our code. Under load the Go chain (the nsmgr and forwarder
    # of every pair here) races its own rotation once in a while: a token signed with the new SVID goes
    # out on a connection made with the old one and is checked against that old certificate; the chain
    # retries and the link never drops (checked above). Go's authorize servers say only "no sufficient
    # privileges"; our endpoint names the policy and the forwarder's segment (2), seen once in a CI run of
    # stop 15. A refusal of our client's own token (segment 0) is never waved through.
    upstream = ["the token of path segment 2 is not signed by the TLS peer's key"]
    if pair[0] == "go":
        # The Go client dials anew for every refresh, and now and then its grpcfd has already closed the
        # netns file the nsmgr asks it for ("failed to send a file ... file already closed"); retried alike.
        upstream += ["failed to send a file", "no sufficient privileges"]
    failed = [e for e in failed if not any(known in e.get("error", "") for known in upstream)]
    assert failed == []
    refused = lab.events("registry.register_failed")
    if refused:
        # Characterization of sdk v1.18.0 again, seen once in many runs for each endpoint (ours in a CI run
        # of stop 13, the Go icmp-responder in one of stop 14): one registration refresh refused by the
        # registry policy `client_allowed` ("no sufficient privileges") while SVIDs rotated
        # (docs/security.md, "Open questions"). What must hold is that a later refresh registers again and
        # the endpoint stays reachable (the link checks above).
        assert all("no sufficient privileges" in e.get("error", "") for e in refused), refused
        events = lab.events()  # in the order the control plane wrote them
        last_refusal = max(events.index(e) for e in refused)
        later = events[last_refusal + 1 :]
        assert any(e.get("event") == "registry.register" and e.get("name") == "nse-1" for e in later), refused
        refused = []
    assert refused == []
    assert lab.events("veth.deleted") == [] and len(lab.events("veth.created")) == 1
    if pair[0] == "go":
        assert "heal" not in link.nsc.log.lower() and "Control plane is down" not in link.nsc.log
    else:  # one channel, retired (and its monitor re-opened) when its SVID is 3/4 through its life
        assert "event=heal.reselect" not in link.nsc.log and "event=request.failed" not in link.nsc.log
        assert "event=relay.retired" in link.nsc.log
    # the client signed each token with the key of an SVID of its own: Go with the newest (it dials anew for
    # every Request), Python with the one its connection presented (a new one after each retirement)
    signers = []
    client_certs = recorder.seen[ID["nsc"]]
    for event in lab.events("nsmgr.request", id=CONN_ID):
        token = event["connection"]["path"]["path_segments"][0]["token"]
        found = [serial for serial, cert in client_certs.items() if verifies(token, cert)]
        signers.append((event["time"], found, jwt.decode(token, options={"verify_signature": False})))
    certs = [(c.serial_number, c.not_valid_before_utc, c.not_valid_after_utc) for c in client_certs.values()]
    assert all(found for _, found, _ in signers), (signers, certs)
    assert len({found[0] for _, found, _ in signers}) >= (5 if pair[0] == "go" else 2), signers


# ----- ownership -----
#
# Characterization of NSM sdk v1.18.0 with cmd-nsmgr's default policies, not a wish: the nsmgr does not
# tie a connection to the SPIFFE id that made it. Its authorize server checks the path left of itself
# after updatetoken has put the CALLER's token into the previous segment, so tokens_chained and
# prev_token_signed hold for any caller with a valid SVID; the monitor authorizer has no policy by default,
# so anyone can read every connection's path ids. If an sdk upgrade makes these tests fail, ownership is
# enforced now: turn them around.


def foreign(link: Link, op: str, gid: int, *extra: str) -> dict[str, dict[str, Any]]:
    """`nsmharness foreign` as a workload with `gid`, in the client's netns (a refresh then carries the very
    netns the owner uses: only the identity differs): its steps by name."""
    result = link.lab.helper(
        "foreign",
        "-connect-to",
        link.lab.nsmgr_url,
        "-conn-id",
        CONN_ID,
        "-op",
        op,
        "-token-lifetime",
        go_duration(TOKEN_LIFETIME),
        "-timeout",
        go_duration(4 * REQUEST_TIMEOUT),
        *extra,
        gid=gid,
        netns=link.nsc_ns,
    )
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {step["step"]: step for step in steps}


def token_subject(token: str) -> str:
    sub: str = jwt.decode(token, options={"verify_signature": False})["sub"]
    return sub


def test_any_identity_reads_every_connection_through_the_nsmgr_monitor(secure_go_link: Link) -> None:
    found = foreign(secure_go_link, "none", INTRUDER_GID)["found"]
    assert "error" not in found, found
    segments = found["connection"]["path"]["path_segments"]
    assert segments[0]["id"] == CONN_ID and len(segments) == 4
    assert token_subject(segments[0]["token"]) == ID["nsc"]  # someone else's connection


def test_go_nsmgr_accepts_a_refresh_from_another_identity(secure_go_link: Link) -> None:
    lab = secure_go_link.lab
    steps = foreign(secure_go_link, "refresh", INTRUDER_GID)
    assert "error" not in steps["refresh"], steps["refresh"]
    served = lab.events("nsmgr.request", id=CONN_ID)
    subjects = [token_subject(e["connection"]["path"]["path_segments"][0]["token"]) for e in served]
    assert ID["intruder"] in subjects  # the nsmgr served the intruder, in the owner's connection
    assert len(lab.events("veth.created")) == 1 and lab.events("veth.deleted") == []


def test_go_nsmgr_accepts_a_close_from_another_identity(secure_go_link: Link) -> None:
    lab = secure_go_link.lab
    steps = foreign(secure_go_link, "close", INTRUDER_GID)
    assert "error" not in steps["close"], steps["close"]
    assert [e["why"] for e in lab.events("veth.deleted")] == ["close"]  # the owner's link, gone
    assert lab.events("endpoint.close")
    # the owner's client notices and heals: a new link, requested by its own identity
    wait_until(lambda: "Heal success" in secure_go_link.nsc.log, 20, "the client to heal")
    wait_until(lambda: lab.link_up(secure_go_link.nsc_ns, IFNAME, NSC_ADDRESS), 20, "the link back")
    assert len(lab.events("veth.created")) == 2


def test_the_guessable_client_id_alone_closes_nothing(secure_go_link: Link) -> None:
    lab = secure_go_link.lab
    steps = foreign(secure_go_link, "close", INTRUDER_GID, "-client-segment-only")
    assert "error" not in steps["close"], steps["close"]
    # without the nsmgr's segment id the Close names a connection the nsmgr does not know: a no-op
    time.sleep(1)
    assert lab.events("veth.deleted") == []
    assert lab.link_up(secure_go_link.nsc_ns, IFNAME, NSC_ADDRESS)
