"""A small rtnetlink client: the few requests the kernel layer makes, on a socket it is given.

Why our own and not pyroute2 (which this layer used until issue 10): the sidecars' targets are a process
ready in 0.35 s with at most 45 MiB, and nsm-local's is 5 ms of CPU per refresh. On the project's 2-core
machine pyroute2 cost 100-190 ms of CPU and 16-22 MiB of memory just to import (its package loads every
netlink family it supports), and about 0.3 ms per request (each synchronous call runs an asyncio loop of
its own), while what we need is a dozen fixed messages: look up, list, create, configure and delete links,
addresses and routes, and ask for a netns id (rtnetlink(7), linux/rtnetlink.h, linux/if_link.h). Here a
request is a `struct.pack` and a `sendto`, and only the attributes we read are parsed.

Sessions are synchronous and belong to one thread at a time. Dumps are filtered by the kernel (the socket
must have NETLINK_GET_STRICT_CHK, as `netlink.netlink_in` sets): the selectors go into the request's
header and attributes. Errors come back as `NetlinkError` (errno and the kernel's extended-ack message),
an interrupted dump as `DumpInterrupted`; `errors.kernel_errors` turns both into KernelError.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# linux/netlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLM_F_DUMP_INTR = 0x10
_NLM_F_ROOT_MATCH = 0x300  # NLM_F_DUMP
_NLM_F_REPLACE, _NLM_F_EXCL, _NLM_F_CREATE = 0x100, 0x200, 0x400
_NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the request's body is left out
_NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
_NLMSGERR_ATTR_MSG = 1
# linux/rtnetlink.h
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK, _RTM_SETLINK = 16, 17, 18, 19
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_RTM_GETNSID = 90
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
_RTPROT_STATIC = 4  # what pyroute2 set on our routes before
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
# linux/if_link.h, linux/if.h, linux/veth.h, linux/if_addr.h, linux/net_namespace.h
_IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_OPERSTATE = 3, 4, 5, 16
_IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_AF_SPEC, _IFLA_NET_NS_FD = 18, 20, 26, 28
_IFLA_GROUP, _IFLA_EXT_MASK, _IFLA_LINK_NETNSID = 27, 29, 37
_IFLA_INFO_KIND, _IFLA_INFO_DATA = 1, 2
_VETH_INFO_PEER = 1
_IFLA_INET6_CONF = 2
_DEVCONF_DISABLE_IPV6 = 26  # index in IFLA_INET6_CONF's array of s32 (enum in linux/ipv6.h)
_RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
_NETNSA_NSID, _NETNSA_FD = 1, 3
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")  # nlattr: length, type
_NLA_F_NESTED = 0x8000
_RECV_BYTES = 1 << 16


class NetlinkError(OSError):
    """The kernel refused a request: `errno`, and its own explanation when it gave one."""


class DumpInterrupted(Exception):
    """The objects changed while the kernel was dumping them (NLM_F_DUMP_INTR); dump again."""


@dataclass(frozen=True)
class Link:
    """The parts of an RTM_NEWLINK we use. `peer_index`/`peer_netnsid` are IFLA_LINK and
    IFLA_LINK_NETNSID; `ipv6_disabled` is the link's disable_ipv6 (None: no IPv6 on the link)."""

    index: int
    flags: int
    ifname: str
    mtu: int
    operstate: str
    alias: str | None
    kind: str | None
    peer_index: int | None
    peer_netnsid: int | None
    ipv6_disabled: bool | None
    group: int = 0


@dataclass(frozen=True)
class Address:
    index: int
    family: int
    prefixlen: int
    scope: int
    address: str
    """IFA_LOCAL, else IFA_ADDRESS (on point-to-point IPv4 links IFA_ADDRESS is the far end)."""


@dataclass(frozen=True)
class RouteEntry:
    family: int
    dst: str | None
    dst_len: int
    table: int
    type: int
    oif: int | None
    gateway: str | None


class Rtnl:
    """One rtnetlink session on `sock` (an AF_NETLINK/NETLINK_ROUTE socket; the caller owns it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    # --- links ----------------------------------------------------------------------------------------

    def get_link(self, ifname: str) -> Link | None:
        """The link called `ifname`, or None."""
        body = _ANY_LINK + _attr(_IFLA_IFNAME, _cstr(ifname)) + _SKIP_STATS
        try:
            (reply,) = self._request(_RTM_GETLINK, 0, body)
        except NetlinkError as exc:
            if exc.errno == 19:  # ENODEV
                return None
            raise
        return _link(reply)

    def links(self) -> list[Link]:
        return [_link(body) for body in self._dump(_RTM_GETLINK, _ANY_LINK + _SKIP_STATS)]

    def set_link(
        self,
        index: int,
        *,
        ifname: str | None = None,
        up: bool | None = None,
        mtu: int | None = None,
        alias: str | None = None,
    ) -> None:
        flags, change = (0, 0) if up is None else (IFF_UP if up else 0, IFF_UP)
        attrs = b""
        if ifname is not None:
            attrs += _attr(_IFLA_IFNAME, _cstr(ifname))
        if mtu is not None:
            attrs += _attr(_IFLA_MTU, struct.pack("=I", mtu))
        if alias is not None:
            attrs += _attr(_IFLA_IFALIAS, _cstr(alias))
        self._request(_RTM_SETLINK, _NLM_F_ACK, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def delete_link(self, index: int) -> None:
        self._request(_RTM_DELLINK, _NLM_F_ACK, _IFINFO.pack(0, 0, index, 0, 0))

    def set_group(self, index: int, group: int) -> None:
        """Put the link in device group `group` (IFLA_GROUP)."""
        body = _IFINFO.pack(0, 0, index, 0, 0) + _attr(_IFLA_GROUP, struct.pack("=I", group))
        self._request(_RTM_SETLINK, _NLM_F_ACK, body)

    def delete_group(self, group: int) -> None:
        """Delete every link of device group `group` in this namespace, in one go: the kernel unregisters
        them together (`rtnl_group_dellink`), waiting for RCU once per batch instead of once per link."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_GROUP, struct.pack("=I", group))
        self._request(_RTM_DELLINK, _NLM_F_ACK, body)

    def add_veth(self, ifname: str, ns_fd: int | None, peer_ifname: str, peer_ns_fd: int | None) -> None:
        """Create a veth pair, each end named and placed (IFLA_NET_NS_FD; None: this socket's netns)."""
        peer = _ANY_LINK + _end(peer_ifname, peer_ns_fd)
        info = _attr(_IFLA_INFO_KIND, _cstr("veth")) + _nested(
            _IFLA_INFO_DATA, _nested(_VETH_INFO_PEER, peer)
        )
        body = _ANY_LINK + _end(ifname, ns_fd) + _nested(_IFLA_LINKINFO, info)
        self._request(_RTM_NEWLINK, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)

    # --- addresses and routes ---------------------------------------------------------------------------

    def addresses(self, index: int = 0) -> list[Address]:
        """Every address of the namespace, or (index > 0) of one link only."""
        return [_address(body) for body in self._dump(_RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, index))]

    def add_address(
        self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface, replace: bool = False
    ) -> None:
        """Add a permanent address (IPv6 without duplicate detection); EEXIST if it is there, unless
        `replace`: then an address that is there is set again as it is, and the kernel announces it anew
        (RTM_NEWADDR to every listener) without removing it."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        flags = IFA_F_NODAD if address.version == 6 else 0
        packed = address.ip.packed
        body = _IFADDR.pack(family, address.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        body += _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed)
        exclusive = _NLM_F_REPLACE if replace else _NLM_F_EXCL
        self._request(_RTM_NEWADDR, _NLM_F_ACK | _NLM_F_CREATE | exclusive, body)

    def routes(self, oif: int = 0, table: int = 0) -> list[RouteEntry]:
        """Every route (IPv4 and IPv6) of the namespace, or those of one table and/or output link."""
        body = _RTMSG.pack(0, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0)
        if table:
            body += _attr(_RTA_TABLE, struct.pack("=I", table))
        if oif:
            body += _attr(_RTA_OIF, struct.pack("=I", oif))
        return [_route(body) for body in self._dump(_RTM_GETROUTE, body)]

    def replace_route(
        self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int, gateway: str | None
    ) -> None:
        """Add or replace a main-table unicast route through `oif` (no gateway: on-link; IPv4: scope link)."""
        family = socket.AF_INET if network.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_LINK if gateway is None and network.version == 4 else RT_SCOPE_UNIVERSE
        body = _RTMSG.pack(
            family, network.prefixlen, 0, 0, RT_TABLE_MAIN, _RTPROT_STATIC, scope, RTN_UNICAST, 0
        )
        body += _attr(_RTA_DST, network.network_address.packed) + _attr(_RTA_OIF, struct.pack("=I", oif))
        if gateway is not None:
            body += _attr(_RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        self._request(_RTM_NEWROUTE, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE, body)

    def netns_id(self, ns_fd: int) -> int | None:
        """The id this session's netns gives to the netns `ns_fd` (RTM_GETNSID); None if it has none."""
        body = struct.pack("=Bxxx", socket.AF_UNSPEC) + _attr(_NETNSA_FD, struct.pack("=I", ns_fd))
        (reply,) = self._request(_RTM_GETNSID, 0, body)
        nsid = _attrs(reply, 4).get(_NETNSA_NSID)
        value = None if nsid is None else struct.unpack("=i", nsid[:4])[0]
        return None if value is None or value < 0 else value

    # --- the wire ----------------------------------------------------------------------------------------

    def _request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the bodies of its replies (none for a plain ACK)."""
        seq = self._send(msg_type, _NLM_F_REQUEST | flags, body)
        return [payload for _, _, payload in self._receive(seq, dump=False)]

    def _dump(self, msg_type: int, body: bytes) -> list[bytes]:
        seq = self._send(msg_type, _NLM_F_REQUEST | _NLM_F_ROOT_MATCH, body)
        replies = []
        interrupted = False
        for _, msg_flags, payload in self._receive(seq, dump=True):
            interrupted |= bool(msg_flags & _NLM_F_DUMP_INTR)
            replies.append(payload)
        if interrupted:
            raise DumpInterrupted("the dump was interrupted by a concurrent change")
        return replies

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, flags, self._seq, 0) + body)
        return self._seq

    def _receive(self, seq: int, dump: bool) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, body) of each message answering `seq`: until NLMSG_DONE for a dump, else until
        the one reply or the ACK (an NLMSG_ERROR with code 0; another code raises NetlinkError)."""
        while True:
            data, _, msg_flags, _ = self._sock.recvmsg(_RECV_BYTES)
            if msg_flags & socket.MSG_TRUNC:
                raise NetlinkError(90, "netlink reply truncated")  # EMSGSIZE
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags, reply_seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                payload = data[offset + _HEADER.size : offset + length]
                offset += _align(length)
                if reply_seq != seq:
                    continue  # a late answer to an earlier request of this session
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    _raise_error(payload, flags)
                    return
                yield kind, flags, payload
                if not dump:
                    return


def _raise_error(payload: bytes, flags: int) -> None:
    (code,) = struct.unpack_from("=i", payload)
    if code == 0:
        return
    message = ""
    if flags & _NLM_F_ACK_TLVS:
        # nlmsgerr: the error code, the request (only its header when capped), then the TLVs
        (request_length,) = struct.unpack_from("=I", payload, 4)
        offset = 4 + (_HEADER.size if flags & _NLM_F_CAPPED else _align(request_length))
        text = _attrs(payload, offset).get(_NLMSGERR_ATTR_MSG)
        message = text.rstrip(b"\0").decode(errors="replace") if text else ""
    raise NetlinkError(-code, message or os.strerror(-code))


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _nested(kind: int, value: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, value)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _end(ifname: str, ns_fd: int | None) -> bytes:
    placed = b"" if ns_fd is None else _attr(_IFLA_NET_NS_FD, struct.pack("=I", ns_fd))
    return _attr(_IFLA_IFNAME, _cstr(ifname)) + placed


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes from `offset` on, by type (nested flag stripped; the last one of a type wins)."""
    found: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _ATTR.size : offset + length]
        offset += _align(length)
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.rstrip(b"\0").decode(errors="replace")


def _u32(value: bytes | None) -> int | None:
    return None if value is None else int(struct.unpack_from("=I", value)[0])


def _link(body: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    attrs = _attrs(body, _IFINFO.size)
    info = _attrs(attrs[_IFLA_LINKINFO], 0) if _IFLA_LINKINFO in attrs else {}
    operstate = attrs.get(_IFLA_OPERSTATE)
    state = operstate[0] if operstate else 0
    netnsid = attrs.get(_IFLA_LINK_NETNSID)
    return Link(
        index=index,
        flags=flags,
        ifname=_text(attrs.get(_IFLA_IFNAME)) or "",
        mtu=_u32(attrs.get(_IFLA_MTU)) or 0,
        operstate=_OPERSTATES[state] if state < len(_OPERSTATES) else "UNKNOWN",
        alias=_text(attrs.get(_IFLA_IFALIAS)) or None,
        kind=_text(info.get(_IFLA_INFO_KIND)),
        peer_index=_u32(attrs.get(_IFLA_LINK)),
        peer_netnsid=None if netnsid is None else int(struct.unpack_from("=i", netnsid)[0]),
        ipv6_disabled=_ipv6_disabled(attrs.get(_IFLA_AF_SPEC)),
        group=_u32(attrs.get(_IFLA_GROUP)) or 0,
    )


def _ipv6_disabled(af_spec: bytes | None) -> bool | None:
    inet6 = None if af_spec is None else _attrs(af_spec, 0).get(socket.AF_INET6)
    conf = None if inet6 is None else _attrs(inet6, 0).get(_IFLA_INET6_CONF)
    if conf is None or len(conf) < 4 * (_DEVCONF_DISABLE_IPV6 + 1):
        return None
    return bool(struct.unpack_from("=i", conf, 4 * _DEVCONF_DISABLE_IPV6)[0])


def _ip(family: int, value: bytes | None) -> str | None:
    if value is None:
        return None
    return str(ipaddress.ip_address(value[:4] if family == socket.AF_INET else value[:16]))


def _address(body: bytes) -> Address:
    family, prefixlen, _, scope, index = _IFADDR.unpack_from(body)
    attrs = _attrs(body, _IFADDR.size)
    address = _ip(family, attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)) or ""
    return Address(index=index, family=family, prefixlen=prefixlen, scope=scope, address=address)


def _route(body: bytes) -> RouteEntry:
    family, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(body)
    attrs = _attrs(body, _RTMSG.size)
    return RouteEntry(
        family=family,
        dst=_ip(family, attrs.get(_RTA_DST)),
        dst_len=dst_len,
        table=_u32(attrs.get(_RTA_TABLE)) or table,
        type=kind,
        oif=_u32(attrs.get(_RTA_OIF)),
        gateway=_ip(family, attrs.get(_RTA_GATEWAY)),
    )


_ANY_LINK = _IFINFO.pack(0, 0, 0, 0, 0)
"""An ifinfomsg that selects nothing by itself (the request's attributes, or a dump, do)."""
_SKIP_STATS = _attr(_IFLA_EXT_MASK, struct.pack("=I", _RTEXT_FILTER_SKIP_STATS))
"""Leave the link statistics out of the replies: we never read them."""
