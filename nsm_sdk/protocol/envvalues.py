"""Reading single environment values for the agents' settings, with one error message style.

Blank counts as unset everywhere, so `value: ""` in a manifest means "use the default".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nsm_sdk.protocol.durations import parse_positive_duration
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import FrozenLabels, client_info_labels, label_problem
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, SocketUrl, parse_socket_url

LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

#: Where NSM's Kubernetes deployments put the SPIRE agent socket, and what we use when
#: ``SPIFFE_ENDPOINT_SOCKET`` is unset (nsm-local serves its development Workload API there too).
DEFAULT_SPIFFE_ENDPOINT = SocketUrl(path="/run/spire/sockets/agent.sock")

_LOG_LEVELS: dict[str, LogLevel] = {
    "TRACE": "TRACE",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
}


def env_value(env: Mapping[str, str], variable: str) -> str | None:
    """The raw value of ``variable``, or None when it is unset or blank."""
    value = env.get(variable)
    return value if value is not None and value.strip() else None


def agent_name(env: Mapping[str, str]) -> str | None:
    """``NSM_NAME``, else ``POD_NAME``, else None (the agent derives one at start)."""
    for variable in ("NSM_NAME", "POD_NAME"):
        value = env_value(env, variable)
        if value is not None:
            name = value.strip()
            if any(char.isspace() or not char.isprintable() for char in name):
                raise ConfigError(variable, value, "name must not contain whitespace or control characters")
            return name
    return None


def client_info(env: Mapping[str, str]) -> FrozenLabels:
    """NSM's clientinfo labels from ``POD_NAME``, ``NODE_NAME`` and ``CLUSTER_NAME`` (trimmed), each value
    checked like any label's."""
    found: dict[str, str] = {}
    for variable, key in _CLIENT_INFO.items():
        value = env_value(env, variable)
        if value is None:
            continue
        problem = label_problem(key, value.strip())
        if problem is not None:
            raise ConfigError(variable, value, problem)
        found[variable] = value.strip()
    return client_info_labels(
        pod_name=found.get("POD_NAME"),
        node_name=found.get("NODE_NAME"),
        cluster_name=found.get("CLUSTER_NAME"),
    )


_CLIENT_INFO = {"POD_NAME": "podName", "NODE_NAME": "nodeName", "CLUSTER_NAME": "clusterName"}


def socket_url(env: Mapping[str, str], variable: str) -> SocketUrl:
    value = env_value(env, variable)
    return DEFAULT_NSMGR_URL if value is None else parse_socket_url(variable, value)


def duration(env: Mapping[str, str], variable: str, default: float) -> float:
    value = env_value(env, variable)
    return default if value is None else parse_positive_duration(variable, value)


def token_lifetime(env: Mapping[str, str], request_timeout: float, default: float = 600.0) -> float:
    """NSM_MAX_TOKEN_LIFETIME, which must exceed twice the request timeout: a server closes a connection
    at its token's expiry minus the request deadline (§4.4), so a shorter lifetime closes every link
    right after it is made, over and over. The error names whichever of the two was set (the lifetime
    when both were)."""
    lifetime = duration(env, "NSM_MAX_TOKEN_LIFETIME", default)
    if lifetime > 2 * request_timeout:
        return lifetime
    why = "servers close a connection at the token's expiry minus the request deadline"
    set_lifetime = env_value(env, "NSM_MAX_TOKEN_LIFETIME")
    if set_lifetime is not None:
        raise ConfigError(
            "NSM_MAX_TOKEN_LIFETIME",
            set_lifetime,
            f"must be more than twice NSM_REQUEST_TIMEOUT ({request_timeout:g}s): {why}",
        )
    raise ConfigError(
        "NSM_REQUEST_TIMEOUT",
        env_value(env, "NSM_REQUEST_TIMEOUT"),
        f"must be less than half NSM_MAX_TOKEN_LIFETIME ({lifetime:g}s, its default): {why}",
    )


def absolute_path(env: Mapping[str, str], variable: str) -> str | None:
    value = env_value(env, variable)
    if value is None:
        return None
    path = value.strip()
    if not path.startswith("/") or path.endswith("/") or "\0" in path:
        raise ConfigError(variable, value, "must be an absolute file path, e.g. /run/nsm/ready")
    return path


def log_level(env: Mapping[str, str], variable: str) -> LogLevel:
    value = env_value(env, variable)
    if value is None:
        return "INFO"
    level = _LOG_LEVELS.get(value.strip().upper())
    if level is None:
        raise ConfigError(variable, value, "unknown log level; use TRACE, DEBUG, INFO, WARN(ING) or ERROR")
    return level


def boolean(env: Mapping[str, str], variable: str, *, default: bool) -> bool:
    value = env_value(env, variable)
    if value is None:
        return default
    parsed = _BOOLEANS.get(value.strip().lower())
    if parsed is None:
        raise ConfigError(variable, value, "expected true/false, 1/0 or yes/no")
    return parsed


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """How an agent authenticates: SPIFFE mTLS and signed tokens (the default), or nothing at all."""

    insecure: bool = False
    """``NSM_INSECURE``: plaintext gRPC and unverifiable tokens, for experiments only (logged loudly)."""
    spiffe_endpoint: SocketUrl = DEFAULT_SPIFFE_ENDPOINT
    """``SPIFFE_ENDPOINT_SOCKET``: the Workload API that hands out our X.509-SVID."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SecuritySettings:
        value = env_value(env, "SPIFFE_ENDPOINT_SOCKET")
        endpoint = (
            DEFAULT_SPIFFE_ENDPOINT if value is None else parse_socket_url("SPIFFE_ENDPOINT_SOCKET", value)
        )
        return cls(insecure=boolean(env, "NSM_INSECURE", default=False), spiffe_endpoint=endpoint)
