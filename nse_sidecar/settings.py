"""Settings of the NSE sidecar: one frozen tree, built once from the environment by `NseSettings.from_env`.

`NseSettings.from_env` is the only code of the agent that looks at environment variables. It checks every
variable in a fixed order and raises the first `ConfigError` (``VAR='value': problem``).

A variable that is unset, empty or only whitespace counts as unset and takes its default. Seed variables
(legacy-contract.md §1.2) and NSM v1 variables (nsm-v1-protocol.md §2.3) are both read; within each pair
in `ENVIRONMENT` ("set one of the two"), set at most one side (both → ConfigError naming both). A legacy
alias is only read when the new name is unset.

The variables are listed once, in `ENVIRONMENT`.

Addressing: without ``IP_ADDRESS`` and ``NSM_CIDR_PREFIX`` we use NSM mode with cmd-nse's default
``169.254.0.0/16`` (the seed instead failed every Request with "no room"). A CIDR whose host bits are set
(``10.60.1.1/24``) is rejected in both variables, since it is almost always a typo; Go would silently
use the network. ``IP_ADDRESS`` must hold at least one /30 (IPv6: /126); each ``NSM_CIDR_PREFIX`` entry
at least two addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from nsm_sdk.protocol import envdoc
from nsm_sdk.protocol.envdoc import NO_DEFAULT, EnvVar
from nsm_sdk.protocol.envvalues import (
    LogLevel,
    SecuritySettings,
    absolute_path,
    agent_name,
    boolean,
    client_info,
    duration,
    env_value,
    log_level,
    socket_url,
    token_lifetime,
)
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import (
    FrozenLabels,
    checked_labels,
    label_problem,
    parse_colon_labels,
    parse_equals_labels,
    with_missing_labels,
)
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, SocketUrl, network_service_problem, parse_socket_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Payload = Literal["ETHERNET", "IP"]

#: cmd-nse-icmp-responder's default ``NSM_CIDR_PREFIX`` (nsm-v1-protocol.md §2.3).
DEFAULT_NSM_POOL = ipaddress.IPv4Network("169.254.0.0/16")

_PAYLOADS: dict[str, Payload] = {"ETHERNET": "ETHERNET", "IP": "IP"}

# Seed (NSM v0) variables that this agent does not use, with what to do instead.
IGNORED_LEGACY = {
    "NSM_SERVER_SOCKET": "NSM v0 nsmd socket; use NSM_CONNECT_TO",
    "NSM_CLIENT_SOCKET": "NSM v0 endpoint socket; use NSM_LISTEN_ON",
    "WORKSPACE": "NSM v0 workspace; not needed",
    "MECHANISM_TYPE": "the mechanism is always KERNEL",
    "ROUTES": "extra routes are not supported",
}


SUMMARY = (
    "The endpoint sidecar of a router: registers with the NSM manager as an endpoint of "
    "ENDPOINT_NETWORK_SERVICE (or NSM_SERVICE_NAMES), answers each link's Request with point-to-point "
    "addresses and the interface name the client asked for (peerif), and checks its side of every link."
)
EXAMPLE = "ENDPOINT_NETWORK_SERVICE=p2p ENDPOINT_LABELS=device=device-2 IP_ADDRESS=10.60.1.0/24 nse-sidecar"
ENVIRONMENT = (
    EnvVar(
        ("ENDPOINT_NETWORK_SERVICE", "ADVERTISE_NSE_NAME"),
        "seed: the service served (the second name is the seed's alias)",
        NO_DEFAULT,
        "ENDPOINT_NETWORK_SERVICE=p2p",
    ),
    EnvVar(
        ("NSM_SERVICE_NAMES",),
        "NSM v1: comma list of the services served (set one of the two)",
        NO_DEFAULT,
        "NSM_SERVICE_NAMES=p2p,backup",
    ),
    EnvVar(
        ("ENDPOINT_LABELS", "ADVERTISE_NSE_LABELS"),
        "seed: endpoint labels `k=v,k=v`, which NetworkService matches select on",
        NO_DEFAULT,
        "ENDPOINT_LABELS=device=device-2",
    ),
    EnvVar(
        ("NSM_LABELS",),
        "NSM v1: endpoint labels `k:v,k:v` (set one of the two)",
        NO_DEFAULT,
        "NSM_LABELS=device:device-2",
    ),
    EnvVar(
        ("IP_ADDRESS",),
        "seed addressing: one CIDR, a /30 (IPv6 /126) per link, client network+1, endpoint network+2",
        NO_DEFAULT,
        "IP_ADDRESS=10.60.1.0/24",
    ),
    EnvVar(
        ("ENDPOINT_LINKS",),
        "with `IP_ADDRESS`: `link` label values; the k-th always gets the k-th /30 "
        "(same addresses after restarts)",
        "first come, first served",
        "ENDPOINT_LINKS=net-0,net-3",
    ),
    EnvVar(
        ("NSM_CIDR_PREFIX",),
        "NSM v1 addressing: CIDRs (`[a,b],c` groups), /32 pairs with routes",
        "`169.254.0.0/16`",
        "NSM_CIDR_PREFIX=172.16.0.0/16",
    ),
    EnvVar(("NSM_NAME",), "endpoint name", "`POD_NAME`, else `nse-<netns inode>`", "NSM_NAME=router-2"),
    envdoc.CONNECT_TO,
    EnvVar(
        ("NSM_LISTEN_ON",),
        "its own socket, `unix:///path`",
        "a fresh `/tmp/<name>-*/listen.on`",
        "NSM_LISTEN_ON=unix:///run/nse/listen.on",
    ),
    EnvVar(
        ("NSM_REGISTER_SERVICE",),
        "create the NetworkService if it does not exist (never overwrites one with matches)",
        "`true`",
        "NSM_REGISTER_SERVICE=false",
    ),
    EnvVar(
        ("NSM_PAYLOAD",),
        "payload of a service it creates, `ETHERNET` or `IP`",
        "`ETHERNET`",
        "NSM_PAYLOAD=IP",
    ),
    envdoc.REQUEST_TIMEOUT,
    envdoc.MAX_TOKEN_LIFETIME,
    envdoc.CLIENT_INFO,
    EnvVar(
        ("NSM_READY_FILE",),
        "a file that exists exactly while the endpoint is registered (readiness probe: `test -f`)",
        NO_DEFAULT,
        "NSM_READY_FILE=/run/nsm/ready",
    ),
    envdoc.LOG_LEVEL,
    *envdoc.SECURITY_AND_METRICS,
)
"""Every variable `from_env` reads (tests/unit/test_help_tables.py checks it), as `--help` and the README
show them."""


@dataclass(frozen=True, slots=True)
class AddressingSettings:
    """Where link addresses come from."""

    mode: Literal["seed", "nsm"] = "nsm"
    """``seed``: a /30 (/126) per link, client network+1, endpoint network+2 (legacy-contract.md §2.1);
    ``nsm``: NSM v1 point-to-point addresses from the groups in order (nsm-v1-protocol.md §2.3)."""
    pools: tuple[tuple[IPNetwork, ...], ...] = ((DEFAULT_NSM_POOL,),)
    """The pools: one group holding one network in seed mode; the ``[a,b],c`` groups in NSM mode."""
    reserved: tuple[str, ...] = ()
    """Seed mode: the ``link`` label values whose blocks are fixed, block k for the k-th
    (``ENDPOINT_LINKS``), so a link gets the same addresses whenever and in whatever order it is
    (re)requested."""


@dataclass(frozen=True, slots=True)
class NseSettings:
    """Everything the NSE sidecar needs, validated."""

    services: tuple[str, ...] = ()
    """Network services this endpoint serves and registers."""
    labels: Mapping[str, str] = field(default_factory=FrozenLabels)
    """Registration labels, with podName/nodeName/clusterName added unless present."""
    addressing: AddressingSettings = AddressingSettings()
    """IPAM mode and pools."""
    name: str | None = None
    """Endpoint name: registration name and our path segment name. None: the agent uses
    ``nse-<inode of its netns>``, unique per pod and stable across restarts (clients pin it on refresh)."""
    connect_to: SocketUrl = DEFAULT_NSMGR_URL
    """nsmgr URL (``unix:///var/lib/networkservicemesh/nsm.io.sock`` by default)."""
    listen_on: SocketUrl | None = None
    """Our unix socket; None: a socket in a fresh temporary directory chosen at start (like cmd-nse)."""
    register_service: bool = True
    """Register the NetworkService object before the endpoint."""
    payload: Payload = "ETHERNET"
    """Payload of the registered NetworkService."""
    max_token_lifetime: float = 600.0
    """Upper bound, in seconds, of the lifetime of the path tokens we sign."""
    request_timeout: float = 15.0
    """Seconds allowed for each registry call."""
    readiness_file: str | None = None
    """Absolute path touched once the endpoint is registered (for an exec readiness probe); None: none."""
    log_level: LogLevel = "INFO"
    """Log level; ``WARN`` is stored as ``WARNING``, ``TRACE`` is left to the agent to map."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """SPIFFE mTLS from ``SPIFFE_ENDPOINT_SOCKET`` (default), or plaintext with ``NSM_INSECURE=true``."""
    warnings: tuple[str, ...] = ()
    """Messages about variables that were set but ignored; the agent logs them at start-up."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, FrozenLabels):
            object.__setattr__(self, "labels", FrozenLabels(self.labels))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NseSettings:
        """Build and validate the settings from ``env`` (e.g. ``os.environ``); raise the first ConfigError."""
        warnings: list[str] = []
        services = _services(env, warnings)
        labels_variable, labels_value, labels = _labels(env, warnings)
        clientinfo = client_info(env)
        warnings.extend(
            f"{variable} is set but ignored: {why}"
            for variable, why in IGNORED_LEGACY.items()
            if env_value(env, variable) is not None
        )
        return cls(
            services=services,
            labels=checked_labels(labels_variable, labels_value, with_missing_labels(labels, clientinfo)),
            addressing=_addressing(env),
            name=agent_name(env),
            connect_to=socket_url(env, "NSM_CONNECT_TO"),
            listen_on=_listen_url(env, "NSM_LISTEN_ON"),
            register_service=boolean(env, "NSM_REGISTER_SERVICE", default=True),
            payload=_payload(env, "NSM_PAYLOAD"),
            request_timeout=duration(env, "NSM_REQUEST_TIMEOUT", 15.0),
            max_token_lifetime=token_lifetime(env, duration(env, "NSM_REQUEST_TIMEOUT", 15.0)),
            readiness_file=absolute_path(env, "NSM_READY_FILE"),
            log_level=log_level(env, "NSM_LOG_LEVEL"),
            security=SecuritySettings.from_env(env),
            warnings=tuple(warnings),
        )


def parse_cidr_groups(variable: str, text: str) -> tuple[tuple[IPNetwork, ...], ...]:
    """Parse ``NSM_CIDR_PREFIX``: comma-separated CIDRs, ``[a,b]`` making one group (``sdk:cidr/group.go``).

    ``[a,b],c`` → ``((a, b), (c,))``. Whitespace is ignored, groups do not nest, and each CIDR must hold at
    least two addresses and have no host bits set.
    """
    value = "".join(text.split())
    if not value:
        raise ConfigError(variable, text, "no CIDR given")
    groups: list[tuple[IPNetwork, ...]] = []
    current: list[IPNetwork] | None = None
    for position, item in enumerate(value.split(",")):
        opens, closes = item.startswith("["), item.endswith("]")
        body = item[1 if opens else 0 : len(item) - 1 if closes else len(item)]
        if "[" in body or "]" in body:
            raise ConfigError(variable, text, f"misplaced bracket in entry {position} ({item!r})")
        if opens and current is not None:
            raise ConfigError(variable, text, f"entry {position} ({item!r}) opens a group inside a group")
        if closes and not opens and current is None:
            raise ConfigError(variable, text, f"entry {position} ({item!r}) closes a group never opened")
        if not body:
            raise ConfigError(variable, text, f"entry {position} is empty")
        network = _network(variable, text, body, smallest_prefix={4: 31, 6: 127}, need="two addresses")
        if opens:
            current = []
        if current is None:
            groups.append((network,))
        else:
            current.append(network)
            if closes:
                groups.append(tuple(current))
                current = None
    if current is not None:
        raise ConfigError(variable, text, "a '[' group is not closed with ']'")
    return tuple(groups)


def parse_seed_pool(variable: str, text: str) -> IPNetwork:
    """Parse ``IP_ADDRESS``: one CIDR with no host bits set, big enough for one /30 (IPv6: /126)."""
    return _network(variable, text, text.strip(), smallest_prefix={4: 30, 6: 126}, need="one /30 (v6: /126)")


def _network(variable: str, text: str, cidr: str, *, smallest_prefix: dict[int, int], need: str) -> IPNetwork:
    if "/" not in cidr:
        raise ConfigError(variable, text, f"{cidr!r} has no prefix length; expected a CIDR like 10.60.1.0/24")
    if "%" in cidr:  # ipaddress takes an IPv6 zone (fe80::%eth0/64); a pool has none
        raise ConfigError(variable, text, f"{cidr!r} has a zone ('%'); expected a CIDR like fd00::/64")
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(variable, text, f"{cidr!r} is not a CIDR like 10.60.1.0/24") from None
    if network.network_address != ipaddress.ip_interface(cidr).ip:
        raise ConfigError(variable, text, f"{cidr!r} has host bits set; did you mean {network}?")
    if network.prefixlen > smallest_prefix[network.version]:
        raise ConfigError(variable, text, f"pool too small: {network} must hold at least {need}")
    return network


def _services(env: Mapping[str, str], notes: list[str]) -> tuple[str, ...]:
    seed_variable, seed = _aliased(env, "ENDPOINT_NETWORK_SERVICE", "ADVERTISE_NSE_NAME", notes)
    nsm = env_value(env, "NSM_SERVICE_NAMES")
    if seed is not None and nsm is not None:
        both = f"NSM_SERVICE_NAMES is also set; set only one of {seed_variable} and NSM_SERVICE_NAMES"
        raise ConfigError(seed_variable, seed, both)
    if seed is not None:
        _check_service(seed_variable, seed, seed.strip())
        return (seed.strip(),)
    if nsm is None:
        required = "required: set ENDPOINT_NETWORK_SERVICE (one name) or NSM_SERVICE_NAMES (a comma list)"
        raise ConfigError("ENDPOINT_NETWORK_SERVICE", None, required)
    names: list[str] = []
    for position, raw in enumerate(nsm.split(",")):
        name = raw.strip()
        if not name:
            raise ConfigError("NSM_SERVICE_NAMES", nsm, f"entry {position} is empty (stray ',')")
        if name in names:
            raise ConfigError("NSM_SERVICE_NAMES", nsm, f"network service {name!r} is listed twice")
        _check_service("NSM_SERVICE_NAMES", nsm, name)
        names.append(name)
    return tuple(names)


def _check_service(variable: str, value: str, name: str) -> None:
    problem = network_service_problem(name)
    if problem is not None:
        raise ConfigError(variable, value, problem)


def _labels(env: Mapping[str, str], notes: list[str]) -> tuple[str, str, FrozenLabels]:
    """(variable, its value, the labels) of whichever label variable is set (NSM_LABELS, "" if none)."""
    seed_variable, seed = _aliased(env, "ENDPOINT_LABELS", "ADVERTISE_NSE_LABELS", notes)
    nsm = env_value(env, "NSM_LABELS")
    if seed is not None and nsm is not None:
        problem = f"NSM_LABELS is also set; set only one of {seed_variable} and NSM_LABELS"
        raise ConfigError(seed_variable, seed, problem)
    if seed is not None:
        return seed_variable, seed, parse_equals_labels(seed_variable, seed)
    return "NSM_LABELS", nsm or "", parse_colon_labels("NSM_LABELS", nsm or "")


def _addressing(env: Mapping[str, str]) -> AddressingSettings:
    seed = env_value(env, "IP_ADDRESS")
    nsm = env_value(env, "NSM_CIDR_PREFIX")
    if seed is not None and nsm is not None:
        raise ConfigError("IP_ADDRESS", seed, "NSM_CIDR_PREFIX is also set; set only one of them")
    links = env_value(env, "ENDPOINT_LINKS")
    if links is not None and seed is None:
        raise ConfigError("ENDPOINT_LINKS", links, "needs IP_ADDRESS (which /30 of it each link gets)")
    if seed is not None:
        pool = parse_seed_pool("IP_ADDRESS", seed)
        reserved = parse_endpoint_links("ENDPOINT_LINKS", links, pool) if links is not None else ()
        return AddressingSettings(mode="seed", pools=((pool,),), reserved=reserved)
    if nsm is not None:
        return AddressingSettings(mode="nsm", pools=parse_cidr_groups("NSM_CIDR_PREFIX", nsm))
    return AddressingSettings()


def parse_endpoint_links(variable: str, text: str, pool: IPNetwork) -> tuple[str, ...]:
    """``net-0,net-3``: distinct, non-empty link label values, no more than the pool has /30s (/126s)."""
    links = tuple(item.strip() for item in text.split(","))
    for position, link in enumerate(links):
        if not link:
            raise ConfigError(variable, text, f"entry {position} is empty")
        if link in links[:position]:
            raise ConfigError(variable, text, f"{link!r} is listed twice")
        problem = label_problem("link", link)
        if problem is not None:
            raise ConfigError(variable, text, problem)
    blocks = pool.num_addresses // 4
    if len(links) > blocks:
        raise ConfigError(variable, text, f"{len(links)} links; IP_ADDRESS {pool} holds {blocks} blocks")
    return links


def _aliased(env: Mapping[str, str], variable: str, alias: str, notes: list[str]) -> tuple[str, str | None]:
    """(name, value) of ``variable``, else of its legacy ``alias``; the new name wins when both are set."""
    value, legacy = env_value(env, variable), env_value(env, alias)
    if value is not None:
        if legacy is not None:
            notes.append(f"{alias} is set but ignored: {variable} takes precedence")
        return variable, value
    return (alias, legacy) if legacy is not None else (variable, None)


def _listen_url(env: Mapping[str, str], variable: str) -> SocketUrl | None:
    value = env_value(env, variable)
    return None if value is None else parse_socket_url(variable, value, allow_tcp=False)


def _payload(env: Mapping[str, str], variable: str) -> Payload:
    value = env_value(env, variable)
    if value is None:
        return "ETHERNET"
    payload = _PAYLOADS.get(value.strip().upper())
    if payload is None:
        raise ConfigError(variable, value, "payload must be ETHERNET or IP")
    return payload
