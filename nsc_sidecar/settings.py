"""Settings of the NSC sidecar: one frozen tree, built once from the environment by `NscSettings.from_env`.

`NscSettings.from_env` is the only code of the agent that looks at environment variables. It checks every
variable in a fixed order and raises the first `ConfigError` (``VAR='value': problem``).

A variable that is unset, empty or only whitespace counts as unset and takes its default (k8s manifests
often carry ``value: ""``). Variables (nsm-v1-protocol.md §2.2, legacy-contract.md §1):

======================== ============================================== ===========================
variable                 meaning                                        default
======================== ============================================== ===========================
NSM_NETWORK_SERVICES     ``kernel://ns[@domain][/ifname][?k=v&..]`` list  \\ exactly one of the two
NS_NETWORKSERVICEMESH_IO seed list ``ns[/ifname][?k=v&..]``              / is required
NSM_NAME                 client name (path segment, connection ids)     POD_NAME, else ``nsc-<netns inode>``
NSM_CONNECT_TO           nsmgr URL, ``unix:///abs`` or ``tcp://h:p``      the nsmgr socket (§2.1)
NSM_REQUEST_TIMEOUT      deadline of each Request / Close               ``15s``
NSM_DIAL_TIMEOUT         deadline of connecting to nsmgr                ``5s``
NSM_MAX_TOKEN_LIFETIME   lifetime cap of our path tokens                ``10m``
NSM_LABELS               ``k=v,k=v`` added to every link's labels         none
POD_NAME / NODE_NAME /   labels ``podName`` / ``nodeName`` /            not added
CLUSTER_NAME             ``clusterName`` (NSM clientinfo)
NSM_READY_FILE           file touched once every link is verified       none
NSM_LOG_LEVEL            TRACE, DEBUG, INFO, WARN(ING), ERROR           ``INFO``
SPIFFE_ENDPOINT_SOCKET   SPIFFE Workload API (our X.509-SVID)           the SPIRE agent socket
NSM_INSECURE             plaintext, no SPIFFE (experiments only)        ``false``
======================== ============================================== ===========================

Labels are merged per link in this order, an earlier source winning on a key: the URL's query, then
``NSM_LABELS``, then the clientinfo labels. The name default does not use the hostname, so that this stays
a pure function of ``env``; Kubernetes sets ``POD_NAME`` through the downward API.
Seed single-client variables (``CLIENT_NETWORK_SERVICE``, ``CLIENT_LABELS``, ``NSC_INTERFACE_NAME``) and
v0 socket variables are not used; when set, they are reported in `NscSettings.warnings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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
_IGNORED_LEGACY = {
    "CLIENT_NETWORK_SERVICE": "single-client mode is not supported; use NS_NETWORKSERVICEMESH_IO",
    "CLIENT_LABELS": "single-client mode is not supported; put labels in the URL query or NSM_LABELS",
    "NSC_INTERFACE_NAME": "single-client mode is not supported; put the name in the URL path",
    "NSM_SERVER_SOCKET": "NSM v0 nsmd socket; use NSM_CONNECT_TO",
    "WORKSPACE": "NSM v0 workspace; not needed",
}


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
                for variable, why in _IGNORED_LEGACY.items()
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
