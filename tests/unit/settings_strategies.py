"""Hypothesis strategies for hostile environment values: arbitrary text and near-valid variants of good
values (one piece inserted, dropped or replaced), for every variable of both sidecars."""

from __future__ import annotations

from hypothesis import strategies as st

# Pieces that sit on the edges of the grammars: separators, escapes, units, scopes, digits of other
# scripts, surrogates (undecodable bytes in os.environ), control characters and sheer size.
EDGE_PIECES = [
    "kernel://",
    "unix:///",
    "tcp://",
    "inode://1/2",
    "/",
    "//",
    "?",
    "&",
    "=",
    ":",
    ",",
    ",,",
    "[",
    "]",
    "%",
    "%2",
    "%zz",
    "%00",
    "%ff",
    "@",
    "#",
    " ",
    "\t",
    "\n",
    "\x00",
    "\x7f",
    "\udcff",
    "\ud800",
    "\u0663",
    "\u00b2",
    "\u00b5s",
    "\u03bcs",
    "1e3",
    ".",
    "..",
    "-",
    "+",
    "0",
    "00",
    "65536",
    "9" * 30,
    "9" * 5000,
    "x" * 2000,
    "fe80::%eth0/64",
    "::/0",
    "10.0.0.0/24",
    "10.0.0.1/24",
    "1.2.3.4/31",
    "::1",
    "[::1]",
    "eth1",
    "nsm0",
    "link=net-0",
    "a:b",
    "a=b",
    "true",
    "no",
    "IP",
    "warn",
]

VALID = {
    "NSM_NETWORK_SERVICES": ["kernel://p2p/eth1?link=net-0&peerif=eth21", "kernel://a@b/x/eth2,kernel://c"],
    "NS_NETWORKSERVICEMESH_IO": ["nsm-5node/eth41?link=net-3&peerif=eth14,nsm-5node/eth42", "p2p"],
    "NSM_NAME": ["router-1"],
    "POD_NAME": ["pod-1"],
    "NODE_NAME": ["node-1"],
    "CLUSTER_NAME": ["cluster-1"],
    "NSM_CONNECT_TO": ["unix:///var/lib/networkservicemesh/nsm.io.sock", "tcp://[::1]:5001", "tcp://h:1"],
    "NSM_LISTEN_ON": ["unix:///run/nse.sock"],
    "SPIFFE_ENDPOINT_SOCKET": ["unix:///run/spire/sockets/agent.sock"],
    "NSM_REQUEST_TIMEOUT": ["15s", "1m30s", "1.5h", "300ms"],
    "NSM_DIAL_TIMEOUT": ["5s"],
    "NSM_MAX_TOKEN_LIFETIME": ["10m", "2562047h"],
    "NSM_LABELS": ["a=1,b=2", "a:1,b:2"],
    "ENDPOINT_LABELS": ["device=qrtr-4"],
    "ADVERTISE_NSE_LABELS": ["device=qrtr-4"],
    "NSM_READY_FILE": ["/run/nsm/ready"],
    "NSM_LOG_LEVEL": ["debug", "WARN"],
    "NSM_INSECURE": ["true", "0"],
    "NSM_REGISTER_SERVICE": ["yes"],
    "NSM_PAYLOAD": ["ETHERNET", "ip"],
    "ENDPOINT_NETWORK_SERVICE": ["nsm-5node"],
    "ADVERTISE_NSE_NAME": ["p2p"],
    "NSM_SERVICE_NAMES": ["p2p,other"],
    "IP_ADDRESS": ["10.60.5.0/24", "fd00::/120"],
    "NSM_CIDR_PREFIX": ["[10.0.0.0/24,fd00::/64],172.16.0.0/16"],
    "ENDPOINT_LINKS": ["net-0,net-3"],
}

NSC_VARIABLES = [
    "NSM_NETWORK_SERVICES",
    "NS_NETWORKSERVICEMESH_IO",
    "NSM_NAME",
    "POD_NAME",
    "NODE_NAME",
    "CLUSTER_NAME",
    "NSM_CONNECT_TO",
    "SPIFFE_ENDPOINT_SOCKET",
    "NSM_REQUEST_TIMEOUT",
    "NSM_DIAL_TIMEOUT",
    "NSM_MAX_TOKEN_LIFETIME",
    "NSM_LABELS",
    "NSM_READY_FILE",
    "NSM_LOG_LEVEL",
    "NSM_INSECURE",
]
NSE_VARIABLES = [
    "ENDPOINT_NETWORK_SERVICE",
    "ADVERTISE_NSE_NAME",
    "NSM_SERVICE_NAMES",
    "ENDPOINT_LABELS",
    "ADVERTISE_NSE_LABELS",
    "NSM_LABELS",
    "IP_ADDRESS",
    "NSM_CIDR_PREFIX",
    "ENDPOINT_LINKS",
    "NSM_NAME",
    "POD_NAME",
    "NODE_NAME",
    "CLUSTER_NAME",
    "NSM_CONNECT_TO",
    "NSM_LISTEN_ON",
    "NSM_REGISTER_SERVICE",
    "NSM_PAYLOAD",
    "NSM_MAX_TOKEN_LIFETIME",
    "NSM_REQUEST_TIMEOUT",
    "NSM_READY_FILE",
    "NSM_LOG_LEVEL",
    "SPIFFE_ENDPOINT_SOCKET",
    "NSM_INSECURE",
]

pieces = st.one_of(st.sampled_from(EDGE_PIECES), st.text(max_size=3))


@st.composite
def near_valid(draw: st.DrawFn, good: str) -> str:
    """``good`` with one piece inserted, one slice dropped or replaced."""
    start = draw(st.integers(0, len(good)))
    end = draw(st.integers(start, len(good)))
    kind = draw(st.sampled_from(["insert", "drop", "replace"]))
    if kind == "insert":
        return good[:start] + draw(pieces) + good[start:]
    if kind == "drop":
        return good[:start] + good[end:]
    return good[:start] + draw(pieces) + good[end:]


def hostile_value(variable: str) -> st.SearchStrategy[str]:
    """Any text, pieces glued together, or a near-valid variant of a good value of ``variable``."""
    glued = st.lists(pieces, max_size=6).map("".join)
    good = VALID.get(variable, ["x"])
    return st.one_of(st.text(), glued, st.sampled_from(good).flatmap(near_valid))


def hostile_env(variables: list[str]) -> st.SearchStrategy[dict[str, str]]:
    """One to three variables set to hostile values (the rest comes from a valid base)."""
    return st.lists(st.sampled_from(variables), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: hostile_value(name) for name in names})
    )
