"""Network-service URL lists (what an NSC requests) and nsmgr socket URLs.

Two list grammars produce the same `LinkSpec` values:

* **Seed** ``NS_NETWORKSERVICEMESH_IO`` (legacy-contract.md §1.3): ``service[/ifname][?k=v&k=v]`` items,
  comma separated, no scheme. More than one ``/`` is an error; the query is percent-decoded and the first
  value of a repeated key wins. k8s-topo writes ``nsm-5node/eth41?link=net-3&peerif=eth14,...``.
* **NSM v1** ``NSM_NETWORK_SERVICES`` (nsm-v1-protocol.md §2.2, ``sdk:pkg/tools/nsurl``):
  ``kernel://service[@domain][/ifname][?k=v&...]`` items. The scheme must be ``kernel`` (any case); the
  network service is the host, or ``user@host`` kept whole (interdomain); the interface name is the last
  ``/``-separated path element; repeated query keys are joined with ``,``.

Choices that differ from upstream, on purpose:

* A missing (or empty) interface name becomes ``nsm<index>``, the 0-based position in the list, in *both*
  grammars. The seed did this; upstream cmd-nsc instead generates a random name per Request, which is
  unpredictable and changes on heal. Predictable names are what a topology lab needs.
* Items are trimmed of surrounding whitespace in both grammars, and an empty item is an error.
* Network service names may only hold letters, digits, ``.``, ``_`` and ``-``, plus one ``@`` for
  ``service@domain`` (both grammars); Go's URL parser would silently drop a ``:port`` or a ``#fragment``.
* Interface names are checked against the full kernel rules (`nsm_sdk.protocol.ifname`), not only the
  15-character limit, and two items may not use the same interface name. Two items may request the same
  network service with the same labels.
* A query pair without ``=`` or with an empty key is an error (Go makes it a label with an empty value).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, unquote_plus

from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.ifname import indexed_interface_name, interface_name_problem
from nsm_sdk.protocol.labels import FrozenLabels, label_map_problem

#: Mechanism type of every link we request (nsm-v1-protocol.md §5.2).
KERNEL_MECHANISM = "KERNEL"

#: Default nsmgr socket (nsm-v1-protocol.md §2.1).
DEFAULT_NSMGR_SOCKET_PATH = "/var/lib/networkservicemesh/nsm.io.sock"

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_PATH_BYTES = 107

_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+")

_NSM_FORM = "kernel://service[@domain][/ifname][?key=value&...]"
_SEED_FORM = "service[/ifname][?key=value&...]"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One requested link: the NSC asks ``network_service`` for a KERNEL interface ``interface_name``."""

    network_service: str
    """Network service name; ``service@domain`` for an interdomain request."""
    interface_name: str
    """Client-side interface name, valid for Linux (at most 15 bytes)."""
    labels: Mapping[str, str] = field(default_factory=FrozenLabels)
    """Request labels (an immutable `FrozenLabels`; a dict passed in is converted)."""
    index: int = 0
    """0-based position of the item in its list; also the ``<i>`` of the connection id ``<name>-<i>``."""
    mechanism: str = KERNEL_MECHANISM
    """Mechanism type; always ``KERNEL`` here."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, FrozenLabels):
            object.__setattr__(self, "labels", FrozenLabels(self.labels))


def network_service_problem(name: str, *, allow_domain: bool = False) -> str | None:
    """Why ``name`` is not an acceptable network service name, or None when it is.

    ``allow_domain`` permits one ``@`` between two non-empty parts (``service@domain``).
    """
    parts = name.split("@") if allow_domain else [name]
    if not name:
        return "network service name is empty"
    if len(parts) > 2:
        return f"network service {name!r} has more than one '@'"
    if any(not part for part in parts):
        return f"network service {name!r} has an empty part around '@'"
    if not all(_SERVICE_NAME.fullmatch(part) for part in parts):
        allowed = "letters, digits, '.', '_' and '-'" + (" (and one '@')" if allow_domain else "")
        return f"network service {name!r} may only contain {allowed}"
    return None


def parse_seed_services(variable: str, text: str) -> tuple[LinkSpec, ...]:
    """Parse a seed ``NS_NETWORKSERVICEMESH_IO`` value (see the module docstring)."""
    return _parse_list(variable, text, _parse_seed_item)


def parse_nsm_services(variable: str, text: str) -> tuple[LinkSpec, ...]:
    """Parse an NSM v1 ``NSM_NETWORK_SERVICES`` value (see the module docstring)."""
    return _parse_list(variable, text, _parse_nsm_item)


def format_seed_url(spec: LinkSpec) -> str:
    """``spec`` as a seed item, ``service/ifname?k=v&...`` (keys and values percent-encoded)."""
    return f"{spec.network_service}/{quote(spec.interface_name, safe='')}{_format_query(spec.labels)}"


def format_nsm_url(spec: LinkSpec) -> str:
    """``spec`` as an NSM v1 item, ``kernel://service/ifname?k=v&...`` (keys and values percent-encoded)."""
    return f"kernel://{format_seed_url(spec)}"


def format_seed_services(specs: Iterable[LinkSpec]) -> str:
    """A whole ``NS_NETWORKSERVICEMESH_IO`` value."""
    return ",".join(format_seed_url(spec) for spec in specs)


def format_nsm_services(specs: Iterable[LinkSpec]) -> str:
    """A whole ``NSM_NETWORK_SERVICES`` value."""
    return ",".join(format_nsm_url(spec) for spec in specs)


_ItemParser = Callable[[str, str, str, int], LinkSpec]


def _parse_list(variable: str, text: str, parse_item: _ItemParser) -> tuple[LinkSpec, ...]:
    if not text.strip():
        raise ConfigError(variable, text, "no network service given")
    specs: list[LinkSpec] = []
    used_names: dict[str, int] = {}
    for index, raw_item in enumerate(text.split(",")):
        item = raw_item.strip()
        if not item:
            raise ConfigError(variable, text, f"entry {index} is empty (stray ',')")
        spec = parse_item(variable, text, item, index)
        first = used_names.setdefault(spec.interface_name, index)
        if first != index:
            problem = f"interface name {spec.interface_name!r} is used by entries {first} and {index}"
            raise ConfigError(variable, text, problem)
        specs.append(spec)
    return tuple(specs)


def _parse_seed_item(variable: str, text: str, item: str, index: int) -> LinkSpec:
    def fail(problem: str) -> ConfigError:
        return ConfigError(variable, text, f"entry {index} ({item!r}): {problem}")

    _check_escapes(item, fail)
    if "#" in item:
        raise fail("'#' is not allowed")
    if "://" in item:
        raise fail(f"no scheme allowed; expected {_SEED_FORM} (kernel:// URLs go in NSM_NETWORK_SERVICES)")
    path, _, query = item.partition("?")
    segments = path.split("/")
    if len(segments) > 2:
        raise fail(f"more than one '/'; expected {_SEED_FORM}")
    service = unquote(segments[0])
    ifname = unquote(segments[1]) if len(segments) == 2 else ""
    return _build_spec(service, ifname, _parse_query(query, join_repeated=False, fail=fail), index, fail)


def _parse_nsm_item(variable: str, text: str, item: str, index: int) -> LinkSpec:
    def fail(problem: str) -> ConfigError:
        return ConfigError(variable, text, f"entry {index} ({item!r}): {problem}")

    scheme = _SCHEME.match(item)
    if scheme is None:
        raise fail(f"missing scheme; expected {_NSM_FORM}")
    if scheme.group(1).lower() != "kernel":
        raise fail(f"unsupported mechanism scheme {scheme.group(1)!r}; only kernel:// is supported")
    rest = item[scheme.end() :]
    _check_escapes(rest, fail)
    if "#" in rest:
        raise fail("'#' is not allowed")
    before_query, _, query = rest.partition("?")
    authority, _, path = before_query.partition("/")
    ifname = unquote(path.split("/")[-1])
    return _build_spec(authority, ifname, _parse_query(query, join_repeated=True, fail=fail), index, fail)


def _build_spec(
    service: str, ifname: str, labels: FrozenLabels, index: int, fail: Callable[[str], ConfigError]
) -> LinkSpec:
    problem = network_service_problem(service, allow_domain=True)
    if problem is not None:
        raise fail(problem)
    name = ifname or indexed_interface_name(index)
    problem = interface_name_problem(name)
    if problem is not None:
        raise fail(problem)
    return LinkSpec(network_service=service, interface_name=name, labels=labels, index=index)


def _parse_query(query: str, *, join_repeated: bool, fail: Callable[[str], ConfigError]) -> FrozenLabels:
    """Query pairs as labels: Go ``url.ParseQuery`` decoding, stricter about malformed pairs."""
    if not query:
        return FrozenLabels()
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            raise fail("empty query parameter (stray '&')")
        raw_key, separator, raw_value = pair.partition("=")
        if not separator:
            raise fail(f"query parameter {pair!r} has no '='; expected key=value")
        key = unquote_plus(raw_key)
        if not key:
            raise fail(f"query parameter {pair!r} has an empty key")
        values.setdefault(key, []).append(unquote_plus(raw_value))
    if join_repeated:
        labels = FrozenLabels((key, ",".join(found)) for key, found in values.items())
    else:
        labels = FrozenLabels((key, found[0]) for key, found in values.items())
    problem = label_map_problem(labels)
    if problem is not None:
        raise fail(problem)
    return labels


def _format_query(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "?" + "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in labels.items())


def _check_escapes(text: str, fail: Callable[[str], ConfigError]) -> None:
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        raise fail(f"invalid percent-escape {text[bad.start() : bad.start() + 3]!r}")


# --- nsmgr and listen socket URLs (nsm-v1-protocol.md §2.1) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketUrl:
    """A parsed ``unix:///abs/path`` or ``tcp://host:port`` URL."""

    scheme: Literal["unix", "tcp"] = "unix"
    """``unix`` or ``tcp``."""
    path: str = DEFAULT_NSMGR_SOCKET_PATH
    """Absolute socket path (unix only; empty for tcp)."""
    host: str = ""
    """Host name, IPv4 address or ``[IPv6]`` (tcp only)."""
    port: int = 0
    """TCP port (tcp only)."""

    @property
    def grpc_target(self) -> str:
        """The gRPC dial target: ``unix:///abs/path`` as is, ``tcp://h:p`` as ``h:p`` (§2.1)."""
        return f"unix://{self.path}" if self.scheme == "unix" else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.scheme == "unix" else f"tcp://{self.host}:{self.port}"


#: ``unix:///var/lib/networkservicemesh/nsm.io.sock``, the default of ``NSM_CONNECT_TO``.
DEFAULT_NSMGR_URL = SocketUrl()


def parse_socket_url(variable: str, text: str, *, allow_tcp: bool = True) -> SocketUrl:
    """Parse ``unix:///abs/path`` (or, if ``allow_tcp``, ``tcp://host:port``) naming ``variable`` on error."""
    value = text.strip()
    scheme = _SCHEME.match(value)
    expected = "unix:///absolute/path" + (" or tcp://host:port" if allow_tcp else "")
    if scheme is None:
        raise ConfigError(variable, text, f"expected {expected}")
    kind = scheme.group(1).lower()
    rest = value[scheme.end() :]
    if kind == "unix":
        return SocketUrl(scheme="unix", path=_unix_path(variable, text, rest))
    if kind == "tcp" and allow_tcp:
        host, port = _tcp_host_port(variable, text, rest)
        return SocketUrl(scheme="tcp", path="", host=host, port=port)
    schemes = "unix or tcp" if allow_tcp else "unix"
    raise ConfigError(variable, text, f"scheme must be {schemes}; expected {expected}")


def _unix_path(variable: str, text: str, path: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(variable, text, "unix socket path must be absolute (unix:///absolute/path)")
    if any(char in path for char in "?#\0"):
        raise ConfigError(variable, text, "unix socket path must not contain '?', '#' or NUL")
    if path.endswith("/"):
        raise ConfigError(variable, text, "unix socket path must name a file, not a directory")
    try:
        size = len(os.fsencode(path))  # the bytes the kernel gets (undecodable env bytes come back as is)
    except UnicodeEncodeError:
        raise ConfigError(variable, text, "unix socket path is not a valid file name") from None
    if size > _MAX_UNIX_PATH_BYTES:
        raise ConfigError(variable, text, f"unix socket path is longer than {_MAX_UNIX_PATH_BYTES} bytes")
    return path


def _tcp_host_port(variable: str, text: str, rest: str) -> tuple[str, int]:
    host, separator, port_text = rest.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5  # int() takes '²' too
    if not separator or not digits or not 0 < int(port_text) < 65536:
        raise ConfigError(variable, text, "tcp URL needs a port from 1 to 65535 (tcp://host:port)")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if not (bracketed and _is_ipv6(host[1:-1])) and not _HOSTNAME.fullmatch(host):
        problem = f"invalid tcp host {host!r} (use a name, an IPv4 address or [IPv6])"
        raise ConfigError(variable, text, problem)
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
