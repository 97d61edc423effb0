"""Settings of the NSC sidecar: one frozen tree, built once from the environment by `NscSettings.from_env`.

`NscSettings.from_env` is the only code of the agent that looks at environment variables. It checks every
variable in a fixed order and raises the first `ConfigError` (``VAR='value': problem``).

A variable that is unset, empty or only whitespace counts as unset and takes its default (k8s manifests
often carry ``value: ""``). The variables are listed once, in `ENVIRONMENT` (nsm-v1-protocol.md §2.2,
legacy-contract.md §1).

Labels are merged per link in this order, an earlier source winning on a key: the URL's query, then
``NSM_LABELS``, then the clientinfo labels. The name default does not use the hostname, so that this stays
a pure function of ``env``; Kubernetes sets ``POD_NAME`` through the downward API.
Seed single-client variables (``CLIENT_NETWORK_SERVICE``, ``CLIENT_LABELS``, ``NSC_INTERFACE_NAME``) and
v0 socket variables are not used; when set, they are reported in `NscSettings.warnings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from nsm_sdk.protocol import envdoc
from nsm_sdk.protocol.envdoc import NO_DEFAULT, EnvVar
from nsm_sdk.protocol.envvalues import (
    LogLevel,
    SecuritySettings,
    absolute_path,
    agent_name,
    client_info,
    duration,
    env_value,
    log_level,
    socket_url,
    token_lifetime,
)
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import FrozenLabels, checked_labels, parse_equals_labels, with_missing_labels
from nsm_sdk.protocol.nsurl import (
    DEFAULT_NSMGR_URL,
    LinkSpec,
    SocketUrl,
    parse_nsm_services,
    parse_seed_services,
)

# Seed (NSM v0) variables that this agent does not use, with what to do instead.
IGNORED_LEGACY = {
    "CLIENT_NETWORK_SERVICE": "single-client mode is not supported; use NS_NETWORKSERVICEMESH_IO",
    "CLIENT_LABELS": "single-client mode is not supported; put labels in the URL query or NSM_LABELS",
    "NSC_INTERFACE_NAME": "single-client mode is not supported; put the name in the URL path",
    "NSM_SERVER_SOCKET": "NSM v0 nsmd socket; use NSM_CONNECT_TO",
    "WORKSPACE": "NSM v0 workspace; not needed",
}


SUMMARY = (
    "The client sidecar of a router: asks the NSM manager for every link in NS_NETWORKSERVICEMESH_IO (or "
    "NSM_NETWORK_SERVICES), checks that each interface arrived with its name and addresses, keeps the links "
    "alive (refresh, heal) and closes them on SIGTERM."
)
EXAMPLE = "NS_NETWORKSERVICEMESH_IO='p2p/eth12?link=net-0&peerif=eth21' nsc-sidecar"
ENVIRONMENT = (
    EnvVar(
        ("NS_NETWORKSERVICEMESH_IO",),
        "seed grammar: comma list of `service[/ifname][?k=v&...]`, one entry per link; labels go into "
        "the request",
        NO_DEFAULT,
        "NS_NETWORKSERVICEMESH_IO='p2p/eth12?link=net-0&peerif=eth21'",
    ),
    EnvVar(
        ("NSM_NETWORK_SERVICES",),
        "NSM v1 grammar: comma list of `kernel://service[@domain]/ifname?k=v&...` (set one of the two)",
        NO_DEFAULT,
        "NSM_NETWORK_SERVICES='kernel://p2p/eth12?link=net-0'",
    ),
    EnvVar(
        ("NSM_NAME",),
        "client name (path segment, connection ids `<name>-<i>`)",
        "`POD_NAME`, else `nsc-<netns inode>`",
        "NSM_NAME=router-1",
    ),
    envdoc.CONNECT_TO,
    envdoc.REQUEST_TIMEOUT,
    EnvVar(
        ("NSM_DIAL_TIMEOUT",),
        "how long connecting to the manager may take before `manager.unreachable` says why "
        "(calls keep waiting)",
        "`5s`",
        "NSM_DIAL_TIMEOUT=10s",
    ),
    envdoc.MAX_TOKEN_LIFETIME,
    EnvVar(("NSM_LABELS",), "`k=v,k=v` added to every request", NO_DEFAULT, "NSM_LABELS=site=lab"),
    envdoc.CLIENT_INFO,
    EnvVar(
        ("NSM_READY_FILE",),
        "a file that exists exactly while every link is verified (readiness probe: `test -f`)",
        NO_DEFAULT,
        "NSM_READY_FILE=/run/nsm/ready",
    ),
    envdoc.LOG_LEVEL,
    *envdoc.SECURITY_AND_METRICS,
)
"""Every variable `from_env` reads (tests/unit/test_help_tables.py checks it), as `--help` and the README
show them."""


@dataclass(frozen=True, slots=True)
class NscSettings:
    """Everything the NSC sidecar needs, validated."""

    links: tuple[LinkSpec, ...] = ()
    """The links to request, in list order, labels already merged (URL > NSM_LABELS > clientinfo)."""
    links_variable: str = "NSM_NETWORK_SERVICES"
    """The variable the links came from (for log and error messages)."""
    name: str | None = None
    """Client name: path segment 0 name and prefix of connection ids ``<name>-<index>``. None: the agent uses
    ``nsc-<inode of its netns>``, unique per pod and stable across restarts of the sidecar."""
    connect_to: SocketUrl = DEFAULT_NSMGR_URL
    """nsmgr URL (``unix:///var/lib/networkservicemesh/nsm.io.sock`` by default)."""
    request_timeout: float = 15.0
    """Seconds allowed for each Request and for the final Close."""
    dial_timeout: float = 5.0
    """Seconds allowed to connect to nsmgr."""
    max_token_lifetime: float = 600.0
    """Upper bound, in seconds, of the lifetime of the path tokens we sign."""
    readiness_file: str | None = None
    """Absolute path touched once all links are verified (for an exec readiness probe); None: no file."""
    log_level: LogLevel = "INFO"
    """Log level; ``WARN`` is stored as ``WARNING``, ``TRACE`` is left to the agent to map."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """SPIFFE mTLS from ``SPIFFE_ENDPOINT_SOCKET`` (default), or plaintext with ``NSM_INSECURE=true``."""
    warnings: tuple[str, ...] = ()
    """Messages about variables that were set but ignored; the agent logs them at start-up."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NscSettings:
        """Build and validate the settings from ``env`` (e.g. ``os.environ``); raise the first ConfigError."""
        links_variable, links = _links(env)
        extra = parse_equals_labels("NSM_LABELS", env_value(env, "NSM_LABELS") or "")
        clientinfo = client_info(env)
        merged = tuple(
            replace(link, labels=_merged_labels(links_variable, env, link.labels, extra, clientinfo))
            for link in links
        )
        return cls(
            links=merged,
            links_variable=links_variable,
            name=agent_name(env),
            connect_to=socket_url(env, "NSM_CONNECT_TO"),
            request_timeout=duration(env, "NSM_REQUEST_TIMEOUT", 15.0),
            dial_timeout=duration(env, "NSM_DIAL_TIMEOUT", 5.0),
            max_token_lifetime=token_lifetime(env, duration(env, "NSM_REQUEST_TIMEOUT", 15.0)),
            readiness_file=absolute_path(env, "NSM_READY_FILE"),
            log_level=log_level(env, "NSM_LOG_LEVEL"),
            security=SecuritySettings.from_env(env),
            warnings=tuple(
                f"{variable} is set but ignored: {why}"
                for variable, why in IGNORED_LEGACY.items()
                if env_value(env, variable) is not None
            ),
        )


def _links(env: Mapping[str, str]) -> tuple[str, tuple[LinkSpec, ...]]:
    """The link list from exactly one of NSM_NETWORK_SERVICES and NS_NETWORKSERVICEMESH_IO."""
    nsm = env_value(env, "NSM_NETWORK_SERVICES")
    seed = env_value(env, "NS_NETWORKSERVICEMESH_IO")
    if nsm is not None and seed is not None:
        problem = (
            "NS_NETWORKSERVICEMESH_IO is also set; "
            "set only one of NSM_NETWORK_SERVICES and NS_NETWORKSERVICEMESH_IO"
        )
        raise ConfigError("NSM_NETWORK_SERVICES", nsm, problem)
    if nsm is not None:
        return "NSM_NETWORK_SERVICES", parse_nsm_services("NSM_NETWORK_SERVICES", nsm)
    if seed is not None:
        return "NS_NETWORKSERVICEMESH_IO", parse_seed_services("NS_NETWORKSERVICEMESH_IO", seed)
    raise ConfigError(
        "NSM_NETWORK_SERVICES",
        None,
        "required: set NSM_NETWORK_SERVICES (kernel://service/ifname?k=v,...) "
        "or NS_NETWORKSERVICEMESH_IO (service/ifname?k=v,...)",
    )


def _merged_labels(
    variable: str,
    env: Mapping[str, str],
    own: Mapping[str, str],
    extra: FrozenLabels,
    clientinfo: FrozenLabels,
) -> FrozenLabels:
    """A link's labels: its URL's, then NSM_LABELS, then clientinfo; the union must still be a sane map."""
    merged = with_missing_labels(with_missing_labels(own, extra), clientinfo)
    return checked_labels(variable, env[variable], merged)
