"""Point-to-point address allocation for endpoints, keyed by connection id.

Two policies (architecture.md "Decisions already taken"):

* `SeedP2PAllocator` (`IP_ADDRESS`, legacy-contract.md §2.1): one /30 (/126) per connection, lowest free
  block first; client (src) = network+1, endpoint (dst) = network+2, both with the block's prefix length.
  The block covers the peer, so no routes are needed. With reserved keys (`ENDPOINT_LINKS`), the k-th
  block belongs to the k-th key: a request carrying that key (its `link` label) gets it whenever it is
  free, so a link keeps its addresses whatever order links are requested or re-requested in; other
  requests take the lowest free block after the reserved ones.
* `NsmP2PAllocator` (`NSM_CIDR_PREFIX`, protocol doc §8.4 step 4, Go point2pointipam/groupipam): per group
  of CIDRs, the two lowest free single addresses (network address included), first → dst (NSE),
  second → src (NSC), as /32 (/128), each side with a route to the other.

Both are deterministic, pure bookkeeping: `request()` is the whole per-Request flow (reuse what the id
holds unless it became excluded, else recover what the request carries, else allocate); `release()` runs
on Close. `src` is always the client side and `dst` the endpoint side.

After an endpoint restart the pool starts empty while links made before are still live. The endpoint
therefore `keep_for_interface()`s what its own interfaces still carry: kept addresses are never allocated;
only a refresh for that same interface that carries them recovers them (`request(..., interface=...)`),
and `release_interface()` frees them once the interface no longer carries them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nsm_sdk._proto.networkservice.connectioncontext_pb2 import IPContext
from nsm_sdk.protocol.errors import ConfigError, TemporaryError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PoolExhausted(TemporaryError):
    """No free block/pair left in the pool (Go: "IPPool is empty"); a Close elsewhere may free one."""

    grpc_status = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class P2PAddresses:
    """One point-to-point link's addressing, all as "addr/prefix" text."""

    src_ip: str
    dst_ip: str
    src_routes: tuple[str, ...] = ()
    dst_routes: tuple[str, ...] = ()


class P2PAllocator(Protocol):
    """What an endpoint needs of either allocator."""

    def request(
        self,
        conn_id: str,
        src_addrs: Sequence[str] = (),
        dst_addrs: Sequence[str] = (),
        excluded: Iterable[str] = (),
        key: str | None = None,
        interface: str | None = None,
    ) -> tuple[P2PAddresses, ...]: ...

    def held(self, conn_id: str) -> tuple[P2PAddresses, ...]: ...

    def release(self, conn_id: str) -> tuple[P2PAddresses, ...]: ...

    def keep_for_interface(self, ifname: str, addresses: Iterable[str]) -> frozenset[str]: ...

    def kept(self) -> dict[str, frozenset[str]]: ...

    def release_interface(self, ifname: str) -> frozenset[str]: ...


def parse_excluded(prefixes: Iterable[str]) -> list[Network]:
    """Excluded prefixes from a request; unparsable entries are ignored, as Go's `AddNetString` does."""
    networks: list[Network] = []
    for prefix in prefixes:
        try:
            networks.append(ipaddress.ip_network(prefix.strip(), strict=False))
        except ValueError:
            continue
    return networks


def _as_network(value: Network | str, variable: str) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(variable, value, f"not a CIDR prefix: {exc}") from exc


def _as_interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    try:
        return ipaddress.ip_interface(text.strip())
    except ValueError:
        return None


def _excluded_end(start: int, end: int, version: int, excluded: Sequence[Network]) -> int | None:
    """Last address of an excluded prefix overlapping [start, end], or None when none overlaps."""
    last: int | None = None
    for network in excluded:
        if network.version != version:
            continue
        low, high = int(network.network_address), int(network.broadcast_address)
        if low <= end and start <= high:
            last = high if last is None else max(last, high)
    return last


class SeedP2PAllocator:
    """One /30 (IPv6: /126) per connection out of `pool` (legacy `IP_ADDRESS`, legacy-contract.md §2.1)."""

    def __init__(
        self, pool: Network | str, *, variable: str = "IP_ADDRESS", reserved: Sequence[str] = ()
    ) -> None:
        self.pool = _as_network(pool, variable)
        self.block_prefix = 30 if self.pool.version == 4 else 126
        if self.pool.prefixlen > self.block_prefix:
            raise ConfigError(variable, str(pool), f"pool must be /{self.block_prefix} or larger")
        self._blocks = self.pool.num_addresses // 4
        if len(reserved) > self._blocks or len(set(reserved)) != len(reserved):
            raise ValueError(f"{len(reserved)} reserved keys (distinct?) for {self._blocks} blocks")
        self._reserved = {key: block for block, key in enumerate(reserved)}
        self._by_id: dict[str, int] = {}
        self._owner: dict[int, str] = {}
        self._kept_for: dict[int, str] = {}  # block -> the interface of ours that still carries it

    def _block_start(self, block: int) -> int:
        return int(self.pool.network_address) + 4 * block

    def _addresses(self, block: int) -> P2PAddresses:
        start = self._block_start(block)
        make = ipaddress.ip_address
        return P2PAddresses(
            src_ip=f"{make(start + 1)}/{self.block_prefix}",
            dst_ip=f"{make(start + 2)}/{self.block_prefix}",
        )

    def _is_excluded(self, block: int, excluded: Sequence[Network]) -> bool:
        start = self._block_start(block)
        return _excluded_end(start, start + 3, self.pool.version, excluded) is not None

    def _lowest_free(self, excluded: Sequence[Network]) -> int | None:
        block = len(self._reserved)  # reserved blocks go only to their keys
        while block < self._blocks:
            start = self._block_start(block)
            last = _excluded_end(start, start + 3, self.pool.version, excluded)
            if last is not None:
                block = (last - int(self.pool.network_address)) // 4 + 1
            elif block in self._owner or block in self._kept_for:
                block += 1
            else:
                return block
        return None

    def _free(self, block: int) -> bool:
        return block not in self._owner and block not in self._kept_for

    def _block_of_address(self, text: str) -> int | None:
        """The pool's block an `addr/len` of block length lies in (what our side of a link carries)."""
        interface = _as_interface(text)
        if interface is None or interface.version != self.pool.version:
            return None
        if interface.network.prefixlen != self.block_prefix or interface.ip not in self.pool:
            return None
        return (int(interface.ip) - int(self.pool.network_address)) // 4

    def keep_for_interface(self, ifname: str, addresses: Iterable[str]) -> frozenset[str]:
        """Keep the free blocks that `addresses` (what our interface `ifname` carries) lie in; returns the
        endpoint addresses (network+2) of the blocks now kept for it."""
        for text in addresses:
            block = self._block_of_address(text)
            if block is not None and self._free(block):
                self._kept_for[block] = ifname
        return self.kept().get(ifname, frozenset())

    def kept(self) -> dict[str, frozenset[str]]:
        """Interface -> the endpoint addresses kept for it."""
        found: dict[str, set[str]] = {}
        for block, ifname in self._kept_for.items():
            found.setdefault(ifname, set()).add(self._addresses(block).dst_ip)
        return {ifname: frozenset(addresses) for ifname, addresses in found.items()}

    def release_interface(self, ifname: str) -> frozenset[str]:
        """Stop keeping what is kept for `ifname`; returns the endpoint addresses freed."""
        blocks = [block for block, kept in self._kept_for.items() if kept == ifname]
        for block in blocks:
            del self._kept_for[block]
        return frozenset(self._addresses(block).dst_ip for block in blocks)

    def _claim(self, conn_id: str, block: int) -> P2PAddresses:
        self._kept_for.pop(block, None)
        self._by_id[conn_id] = block
        self._owner[block] = conn_id
        return self._addresses(block)

    def held(self, conn_id: str) -> tuple[P2PAddresses, ...]:
        block = self._by_id.get(conn_id)
        return () if block is None else (self._addresses(block),)

    def allocate(self, conn_id: str, excluded: Iterable[str] = (), key: str | None = None) -> P2PAddresses:
        """The id's block if it holds one, else the block reserved for `key` if it is free and not excluded
        (a stale connection of the same link may still hold it), else the lowest free unreserved block not
        overlapping `excluded`."""
        if conn_id in self._by_id:
            return self._addresses(self._by_id[conn_id])
        networks = parse_excluded(excluded)
        mine = self._reserved.get(key) if key is not None else None
        if mine is not None and self._free(mine) and not self._is_excluded(mine, networks):
            return self._claim(conn_id, mine)
        block = self._lowest_free(networks)
        if block is None:
            raise PoolExhausted(f"IPPool is empty: no free /{self.block_prefix} left in {self.pool}")
        return self._claim(conn_id, block)

    def _block_of_pair(self, src: str, dst: str) -> int | None:
        src_if, dst_if = _as_interface(src), _as_interface(dst)
        if src_if is None or dst_if is None:
            return None
        for side in (src_if, dst_if):
            if side.version != self.pool.version or side.network.prefixlen != self.block_prefix:
                return None
        start = int(src_if.network.network_address)
        if (
            src_if.network != dst_if.network
            or not 0 <= start - int(self.pool.network_address) < 4 * self._blocks
        ):
            return None
        if int(src_if.ip) != start + 1 or int(dst_if.ip) != start + 2:
            return None
        return (start - int(self.pool.network_address)) // 4

    def recover(
        self, conn_id: str, src: str, dst: str, excluded: Iterable[str] = (), interface: str | None = None
    ) -> P2PAddresses | None:
        """Re-claim the pair a refresh carries (e.g. after an endpoint restart lost the pool).

        Succeeds when `src`/`dst` are network+1/network+2 of one /30 of the pool that overlaps no excluded
        prefix and is free (or already this id's, or kept for `interface`). Returns None, changing nothing,
        otherwise; an id that holds a different block keeps it.
        """
        block = self._block_of_pair(src, dst)
        if block is None or self._is_excluded(block, parse_excluded(excluded)):
            return None
        owner = self._owner.get(block)
        if owner == conn_id:
            return self._addresses(block)
        if owner is not None or conn_id in self._by_id:
            return None
        kept = self._kept_for.get(block)
        if kept is not None and kept != interface:
            return None
        return self._claim(conn_id, block)

    def request(
        self,
        conn_id: str,
        src_addrs: Sequence[str] = (),
        dst_addrs: Sequence[str] = (),
        excluded: Iterable[str] = (),
        key: str | None = None,
        interface: str | None = None,
    ) -> tuple[P2PAddresses, ...]:
        """Per-Request flow: keep the held block unless now excluded, else recover (also a block kept for
        `interface`, our side's name), else allocate (the block reserved for `key` first).

        A request that fails (PoolExhausted) changes nothing, not even an excluded block it held.
        """
        excluded = list(excluded)
        block = self._by_id.get(conn_id)
        if block is not None:
            if not self._is_excluded(block, parse_excluded(excluded)):
                return (self._addresses(block),)
            self.release(conn_id)
        for src in src_addrs:
            for dst in dst_addrs:
                recovered = self.recover(conn_id, src, dst, excluded, interface)
                if recovered is not None:
                    return (recovered,)
        try:
            return (self.allocate(conn_id, excluded, key),)
        except PoolExhausted:
            if block is not None:
                self._claim(conn_id, block)
            raise

    def release(self, conn_id: str) -> tuple[P2PAddresses, ...]:
        """Free the id's block (Close); returns what was freed, () if it held none."""
        block = self._by_id.pop(conn_id, None)
        if block is None:
            return ()
        del self._owner[block]
        return (self._addresses(block),)

    def __repr__(self) -> str:
        return (
            f"SeedP2PAllocator(pool={self.pool}, reserved={len(self._reserved)}, live={len(self._by_id)}, "
            f"kept={len(self._kept_for)})"
        )


@dataclass(frozen=True)
class _Pair:
    src: Address
    dst: Address

    def addresses(self) -> P2PAddresses:
        bits = self.src.max_prefixlen
        src, dst = f"{self.src}/{bits}", f"{self.dst}/{bits}"
        return P2PAddresses(src_ip=src, dst_ip=dst, src_routes=(dst,), dst_routes=(src,))


class NsmP2PAllocator:
    """NSM point2pointipam over CIDR groups (`NSM_CIDR_PREFIX`, protocol doc §8.4 step 4).

    Each group (e.g. one IPv4 and one IPv6 prefix list) yields one `P2PAddresses` per connection; inside a
    group the prefixes are tried in order. A `request()` that fails in any group changes nothing.
    """

    def __init__(
        self, groups: Sequence[Sequence[Network | str]], *, variable: str = "NSM_CIDR_PREFIX"
    ) -> None:
        if not groups or any(not group for group in groups):
            raise ConfigError(variable, repr(groups), "required one or more prefixes in every group")
        self.groups: tuple[tuple[Network, ...], ...] = tuple(
            tuple(_as_network(prefix, variable) for prefix in group) for group in groups
        )
        self._held: dict[str, tuple[_Pair, ...]] = {}
        self._taken: set[Address] = set()  # held by a connection or kept for an interface
        self._kept_for: dict[Address, str] = {}  # address -> the interface of ours that still uses it

    @staticmethod
    def _is_excluded(address: Address, excluded: Sequence[Network]) -> bool:
        return any(address.version == network.version and address in network for network in excluded)

    @staticmethod
    def _lowest_free(
        pool: Network, after: int, excluded: Sequence[Network], taken: set[Address]
    ) -> Address | None:
        candidate, end = max(after, int(pool.network_address)), int(pool.broadcast_address)
        while candidate <= end:
            last = _excluded_end(candidate, candidate, pool.version, excluded)
            if last is not None:
                candidate = last + 1
                continue
            address = ipaddress.ip_address(candidate)
            if address not in taken:
                return address
            candidate += 1
        return None

    def _allocate_group(
        self, group: Sequence[Network], excluded: Sequence[Network], taken: set[Address]
    ) -> _Pair | None:
        for pool in group:
            dst = self._lowest_free(pool, 0, excluded, taken)
            if dst is None:
                continue
            src = self._lowest_free(pool, int(dst) + 1, excluded, taken)
            if src is None:
                continue
            taken.update((src, dst))
            return _Pair(src=src, dst=dst)
        return None

    def _recover_group(
        self,
        group: Sequence[Network],
        src_addrs: Sequence[str],
        dst_addrs: Sequence[str],
        excluded: Sequence[Network],
        taken: set[Address],
        interface: str | None = None,
    ) -> _Pair | None:
        def usable(text: str, pool: Network, also_taken: Address | None) -> Address | None:
            parsed = _as_interface(text)
            if parsed is None or parsed.version != pool.version:
                return None
            address = parsed.ip
            mine = interface is not None and self._kept_for.get(address) == interface
            if address not in pool or (address in taken and not mine) or address == also_taken:
                return None
            return None if self._is_excluded(address, excluded) else address

        for pool in group:
            src = next((a for a in (usable(t, pool, None) for t in src_addrs) if a is not None), None)
            if src is None:
                continue
            dst = next((a for a in (usable(t, pool, src) for t in dst_addrs) if a is not None), None)
            if dst is None:
                continue
            taken.update((src, dst))
            return _Pair(src=src, dst=dst)
        return None

    def held(self, conn_id: str) -> tuple[P2PAddresses, ...]:
        return tuple(pair.addresses() for pair in self._held.get(conn_id, ()))

    def _commit(self, conn_id: str, pairs: Sequence[_Pair], taken: set[Address]) -> tuple[P2PAddresses, ...]:
        self._held[conn_id] = tuple(pairs)
        self._taken = taken
        for pair in pairs:
            self._kept_for.pop(pair.src, None)
            self._kept_for.pop(pair.dst, None)
        return self.held(conn_id)

    def allocate(self, conn_id: str, excluded: Iterable[str] = ()) -> tuple[P2PAddresses, ...]:
        """The id's addresses if it holds some, else the two lowest free addresses of every group."""
        if conn_id in self._held:
            return self.held(conn_id)
        networks, taken = parse_excluded(excluded), set(self._taken)
        pairs = []
        for group in self.groups:
            pair = self._allocate_group(group, networks, taken)
            if pair is None:
                raise PoolExhausted(f"IPPool is empty: no free address pair in {[str(n) for n in group]}")
            pairs.append(pair)
        return self._commit(conn_id, pairs, taken)

    def recover(
        self,
        conn_id: str,
        src_addrs: Sequence[str],
        dst_addrs: Sequence[str],
        excluded: Iterable[str] = (),
        interface: str | None = None,
    ) -> tuple[P2PAddresses, ...] | None:
        """Claim what the request carries for every group (Go `recoverAddrs`): per group, the first src and
        the first dst address that lie in one of its prefixes, are not excluded and are free (or kept for
        `interface`). None, with nothing changed, when any group cannot be recovered or the id already
        holds addresses."""
        if conn_id in self._held:
            return None
        networks, taken = parse_excluded(excluded), set(self._taken)
        pairs = []
        for group in self.groups:
            pair = self._recover_group(group, src_addrs, dst_addrs, networks, taken, interface)
            if pair is None:
                return None
            pairs.append(pair)
        return self._commit(conn_id, pairs, taken)

    def request(
        self,
        conn_id: str,
        src_addrs: Sequence[str] = (),
        dst_addrs: Sequence[str] = (),
        excluded: Iterable[str] = (),
        key: str | None = None,
        interface: str | None = None,
    ) -> tuple[P2PAddresses, ...]:
        """Per-Request flow, group by group as Go's groupipam chain: keep the held pair unless an address
        of it is now excluded; else recover from `src_addrs`/`dst_addrs` (also addresses kept for
        `interface`, our side's name); else allocate. `key` is not used: NSM's allocator has no
        reservations (pairs of single addresses, as Go's)."""
        networks, taken = parse_excluded(excluded), set(self._taken)
        previous = self._held.get(conn_id, ())
        pairs = []
        for index, group in enumerate(self.groups):
            pair = previous[index] if index < len(previous) else None
            if pair is not None and (
                self._is_excluded(pair.src, networks) or self._is_excluded(pair.dst, networks)
            ):
                taken.difference_update((pair.src, pair.dst))
                pair = None
            if pair is None:
                pair = self._recover_group(group, src_addrs, dst_addrs, networks, taken, interface)
            if pair is None:
                pair = self._allocate_group(group, networks, taken)
            if pair is None:
                raise PoolExhausted(f"IPPool is empty: no free address pair in {[str(n) for n in group]}")
            pairs.append(pair)
        return self._commit(conn_id, pairs, taken)

    def release(self, conn_id: str) -> tuple[P2PAddresses, ...]:
        """Free the id's addresses (Close); returns what was freed, () if it held none."""
        pairs = self._held.pop(conn_id, ())
        for pair in pairs:
            self._taken.difference_update((pair.src, pair.dst))
        return tuple(pair.addresses() for pair in pairs)

    def _in_pools(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for group in self.groups for n in group)

    def keep_for_interface(self, ifname: str, addresses: Iterable[str]) -> frozenset[str]:
        """Keep the free host addresses (/32, /128) of our pools among `addresses` (what our interface
        `ifname` carries, its address and its route to the peer); returns all kept for it."""
        for text in addresses:
            parsed = _as_interface(text)
            if parsed is None or parsed.network.prefixlen != parsed.max_prefixlen:
                continue
            if self._in_pools(parsed.ip) and parsed.ip not in self._taken:
                self._taken.add(parsed.ip)
                self._kept_for[parsed.ip] = ifname
        return self.kept().get(ifname, frozenset())

    def kept(self) -> dict[str, frozenset[str]]:
        """Interface -> the addresses kept for it (as /32 or /128)."""
        found: dict[str, set[str]] = {}
        for address, ifname in self._kept_for.items():
            found.setdefault(ifname, set()).add(f"{address}/{address.max_prefixlen}")
        return {ifname: frozenset(addresses) for ifname, addresses in found.items()}

    def release_interface(self, ifname: str) -> frozenset[str]:
        """Stop keeping what is kept for `ifname`; returns the addresses freed."""
        addresses = [address for address, kept in self._kept_for.items() if kept == ifname]
        for address in addresses:
            del self._kept_for[address]
            self._taken.discard(address)
        return frozenset(f"{address}/{address.max_prefixlen}" for address in addresses)

    def __repr__(self) -> str:
        groups = [[str(network) for network in group] for group in self.groups]
        return f"NsmP2PAllocator(groups={groups}, live={len(self._held)}, kept={len(self._kept_for)})"


def apply_to_ip_context(ip_context: IPContext, addresses: Iterable[P2PAddresses]) -> None:
    """Add (when absent) src/dst addresses and routes to a Connection's IPContext (§8.4 step 4).

    Seed-mode results carry no routes: their /30 already covers the peer.
    """
    for addrs in addresses:
        if addrs.src_ip not in ip_context.src_ip_addrs:
            ip_context.src_ip_addrs.append(addrs.src_ip)
        if addrs.dst_ip not in ip_context.dst_ip_addrs:
            ip_context.dst_ip_addrs.append(addrs.dst_ip)
        for prefix in addrs.src_routes:
            if all(route.prefix != prefix for route in ip_context.src_routes):
                ip_context.src_routes.add(prefix=prefix)
        for prefix in addrs.dst_routes:
            if all(route.prefix != prefix for route in ip_context.dst_routes):
                ip_context.dst_routes.add(prefix=prefix)


def remove_from_ip_context(ip_context: IPContext, addresses: Iterable[P2PAddresses]) -> None:
    """Undo `apply_to_ip_context` for addresses that were replaced (Go does this when a held address
    became excluded): the first matching address and route of each is removed."""
    for addrs in addresses:
        for container, address in (
            (ip_context.src_ip_addrs, addrs.src_ip),
            (ip_context.dst_ip_addrs, addrs.dst_ip),
        ):
            if address in container:
                container.remove(address)
        for routes, prefixes in (
            (ip_context.src_routes, addrs.src_routes),
            (ip_context.dst_routes, addrs.dst_routes),
        ):
            for prefix in prefixes:
                for position, route in enumerate(routes):
                    if route.prefix == prefix:
                        del routes[position]
                        break
