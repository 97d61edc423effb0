"""Addresses and routes as the kernel layer takes and reports them, in one canonical text form."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nsm_sdk.kernel.errors import InvalidArgument

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def parse_interface(cidr: str) -> IPInterface:
    """`10.0.0.1/30` or `fd00::1/126` (a bare address means /32 or /128); InvalidArgument if malformed."""
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise InvalidArgument(f"bad interface address {cidr!r}: {exc}") from exc


def canonical_interface(cidr: str) -> str:
    """The canonical text of an interface address: compressed IPv6, explicit prefix length."""
    return parse_interface(cidr).with_prefixlen


@dataclass(frozen=True)
class Route:
    """A route through one link: destination prefix and an optional next hop (None: on-link, scope link).

    Both fields are normalised on construction (host bits cleared, IPv6 compressed), so Routes compare
    equal exactly when the kernel would treat them as the same route.
    """

    prefix: str
    via: str | None = None

    def __post_init__(self) -> None:
        try:
            network = ipaddress.ip_network(self.prefix, strict=False)
            gateway = None if self.via is None else ipaddress.ip_address(self.via)
        except ValueError as exc:
            raise InvalidArgument(f"bad route {self.prefix!r} via {self.via!r}: {exc}") from exc
        if gateway is not None and gateway.version != network.version:
            raise InvalidArgument(f"route {self.prefix!r}: next hop {self.via!r} is another IP version")
        object.__setattr__(self, "prefix", network.with_prefixlen)
        object.__setattr__(self, "via", None if gateway is None else str(gateway))

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.prefix).version

    def __str__(self) -> str:
        return self.prefix if self.via is None else f"{self.prefix} via {self.via}"
