"""k8s-topo topology files: read, normalise and check them (legacy-contract.md §4.2).

A file is YAML with a required `links` list of `{endpoints: ["device:interface[:ip/prefix]", ...]}` and the
optional keys `nsm`, `prefix`, `conf_dir`, `custom_image` and `publish_base`. k8s-topo's rules apply:

* a device name loses anything after its first `.` and is lowercased (it becomes a pod name);
* `Ethernet` in an interface name becomes `eth`; a `/` becomes `_` (meshnet mode's rule: a `/` cannot
  be in a Linux interface name, nor in the NSM URL that carries it);
* an endpoint's IP is accepted and ignored: in NSM mode the addresses come from the endpoints' pools;
* the link at index i is `net-<i>`; its first endpoint is the client (NSC), its second the endpoint (NSE).

Unlike k8s-topo, a bad file is refused before anything is done, with one line naming the link or the
device (`TopologyError`): a name that cannot be a Kubernetes name or a Linux interface name, an interface
used twice on one device, a link with other than two ends. The addressing checks (pools) are the wiring's
(`wiring.py`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsm_sdk.protocol.errors import NsmError
from nsm_sdk.protocol.ifname import interface_name_problem

# Kubernetes DNS-1123 label: what a pod (and so a device) may be called.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_MAX = 63
# Interface names must also survive the sidecars' URL grammar (`svc/ifname?link=..&peerif=..`).
_IFNAME_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
KNOWN_KEYS = frozenset(
    {
        "links",
        "nsm",
        "prefix",
        "conf_dir",
        "custom_image",
        "publish_base",
        "etcd_port",
        "delay",
        "ceos_image",
        "VMX_IMAGE",
        "XRV_IMAGE",
        "CSR_IMAGE",
    }
)


class TopologyError(NsmError):
    """A topology file that cannot be used: one line naming the file, the place and the problem."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    device: str
    """Device (pod) name, normalised."""
    interface: str
    """Interface name, normalised."""
    ip: str | None = None
    """The file's address for this end, kept for reference; NSM mode assigns its own."""

    def __str__(self) -> str:
        return f"{self.device}:{self.interface}"


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    client: Endpoint
    """The first endpoint listed: its device runs the nsc-sidecar that requests this link."""
    endpoint: Endpoint
    """The second endpoint listed: its device's nse-sidecar answers for this link."""

    @property
    def name(self) -> str:
        return f"net-{self.index}"


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    """The topology's name (`prefix`, else the file's name without extension): the NetworkService's name,
    the `topo` label."""
    links: tuple[Link, ...]
    devices: tuple[str, ...]
    """Every device, in order of first appearance."""
    source: Path | None = None
    nsm: bool = True
    conf_dir: Path | None = None
    """Where per-device configurations are (`<conf_dir>/<device>`), resolved against the file's directory."""
    custom_image: Mapping[str, str] = field(default_factory=dict)
    """Name substring -> container image: a device whose name contains the key runs that image."""
    publish_base: int | Mapping[int, int] | None = None

    def links_of(self, device: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if device in (link.client.device, link.endpoint.device))

    def config_file(self, device: str) -> Path | None:
        """The device's configuration file in `conf_dir`, if there is one (k8s-topo names it after the
        device as written in the file; we look for the normalised name)."""
        if self.conf_dir is None:
            return None
        candidate = self.conf_dir / device
        return candidate if candidate.is_file() else None

    def image_of(self, device: str) -> str | None:
        """The container image a device asks for (`custom_image`), or None for a plain namespace."""
        for substring, image in self.custom_image.items():
            if substring in device:
                return image
        return None


def normalise_device(raw: str) -> str:
    return raw.split(".", 1)[0].lower()


def normalise_interface(raw: str) -> str:
    return raw.replace("Ethernet", "eth").replace("/", "_")


def _where(source: Path | None) -> str:
    return str(source) if source is not None else "<topology>"


def _device_problem(name: str) -> str | None:
    if not name:
        return "device name is empty"
    if len(name) > _DNS_LABEL_MAX or not _DNS_LABEL.match(name):
        return (
            f"device name {name!r} cannot be a Kubernetes pod name (lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {_DNS_LABEL_MAX} characters)"
        )
    return None


def _interface_problem(name: str) -> str | None:
    problem = interface_name_problem(name)
    if problem is not None:
        return problem
    if not _IFNAME_CHARS.match(name):
        return f"interface name {name!r} may hold only letters, digits, '.', '_' and '-'"
    return None


def parse_endpoint(text: str, where: str) -> Endpoint:
    """`device:interface[:ip/prefix]`, normalised and checked."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        expected = "expected device:interface or device:interface:ip/prefix"
        raise TopologyError(f"{where}: endpoint {text!r}: {expected}")
    device, interface = normalise_device(parts[0]), normalise_interface(parts[1])
    problem = _device_problem(device) or _interface_problem(interface)
    if problem is not None:
        raise TopologyError(f"{where}: endpoint {text!r}: {problem}")
    ip = None
    if len(parts) == 3:
        try:
            ipaddress.ip_interface(parts[2])
        except ValueError:
            raise TopologyError(f"{where}: endpoint {text!r}: {parts[2]!r} is not an ip/prefix") from None
        ip = parts[2]
    return Endpoint(device, interface, ip)


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)


def parse_topology(text: str, source: Path | None = None) -> Topology:
    """A topology from YAML text; `source` (the file) names it and anchors `conf_dir`."""
    where = _where(source)
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise TopologyError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{where}: expected a mapping with a 'links' list at the top")
    unknown = sorted(str(key) for key in data if key not in KNOWN_KEYS)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key {unknown[0]!r} (known: links, nsm, prefix, conf_dir, "
            "custom_image, publish_base)"
        )
    raw_links = data.get("links")
    if not isinstance(raw_links, list) or not raw_links:
        raise TopologyError(f"{where}: 'links' must be a non-empty list of {{endpoints: [a, b]}}")
    links = []
    devices: dict[str, None] = {}
    used: dict[tuple[str, str], str] = {}
    for index, item in enumerate(raw_links):
        name = f"link net-{index}"
        ends = item.get("endpoints") if isinstance(item, dict) else None
        if not isinstance(ends, list) or not all(isinstance(end, str) for end in ends):
            raise TopologyError(f'{where}: {name}: expected endpoints: ["device:interface", ...]')
        if len(ends) != 2:
            count = len(ends)
            raise TopologyError(f"{where}: {name}: a link has exactly two ends, this one has {count}: {ends}")
        client, endpoint = (parse_endpoint(end, f"{where}: {name}") for end in ends)
        if client.device == endpoint.device:
            raise TopologyError(f"{where}: {name}: both ends are on device {client.device}")
        for end in (client, endpoint):
            key = (end.device, end.interface)
            if key in used:
                raise TopologyError(
                    f"{where}: {name}: interface {end.interface} of device {end.device} is already used by "
                    f"{used[key]}"
                )
            used[key] = f"link net-{index}"
            devices.setdefault(end.device)
        links.append(Link(index, client, endpoint))

    default_name = source.stem if source is not None else "topology"
    name = str(data.get("prefix") or default_name).lower()
    problem = _device_problem(name)
    if problem is not None:
        raise TopologyError(f"{where}: prefix {name!r}: {problem.replace('device name', 'topology name')}")
    base = source.parent if source is not None else Path.cwd()
    conf_dir = data.get("conf_dir")
    custom = data.get("custom_image") or {}
    if not isinstance(custom, dict) or not all(isinstance(v, str) for v in custom.values()):
        raise TopologyError(f"{where}: custom_image must map a name substring to an image")
    publish = data.get("publish_base")
    if publish is not None and not isinstance(publish, int | dict):
        raise TopologyError(f"{where}: publish_base must be a port number or {{inside: outside}}")
    return Topology(
        name=name,
        links=tuple(links),
        devices=tuple(devices),
        source=source,
        nsm=_flag(data.get("nsm", True)),
        conf_dir=(base / str(conf_dir)) if conf_dir else base,
        custom_image={str(k): v for k, v in custom.items()},
        publish_base=publish,
    )


def load_topology(path: Path) -> Topology:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_topology(text, path)
