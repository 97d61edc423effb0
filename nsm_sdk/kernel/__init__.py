"""Kernel side of the KERNEL mechanism (protocol §9): "ensure" operations on links inside a given netns.

Synchronous, fork-free netlink code (a small rtnetlink client of our own, `rtnl`; its docstring says why
not pyroute2): namespaces are open fds (or None for our own), entered by short-lived helper threads (see
`_netns`), never by forking. Asyncio callers use `asyncio.to_thread`.
Every operation is idempotent, so heal and restart simply run it again.
"""

from __future__ import annotations

from nsm_sdk.kernel.addresses import Route, canonical_interface, parse_interface
from nsm_sdk.kernel.configure import configure_link, ensure_ipv6_enabled
from nsm_sdk.kernel.errors import (
    InvalidArgument,
    KernelError,
    LinkNameTaken,
    LinkNotFound,
    LinkWaitCancelled,
    LinkWaitTimeout,
    NetnsUnavailable,
)
from nsm_sdk.kernel.links import End, create_veth_pair, delete_link, find_link, get_link, rename_link
from nsm_sdk.kernel.names import MAX_IFNAME_LENGTH, check_ifname, ifname_problem
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.state import (
    LinkPredicate,
    LinkState,
    exists,
    inspect_link,
    link_problems,
    operational,
    read_link_states,
    verify_link,
    wait_for_link,
)

__all__ = [
    "MAX_IFNAME_LENGTH",
    "End",
    "InvalidArgument",
    "KernelError",
    "LinkNameTaken",
    "LinkNotFound",
    "LinkPredicate",
    "LinkState",
    "LinkWaitCancelled",
    "LinkWaitTimeout",
    "NetnsUnavailable",
    "Route",
    "canonical_interface",
    "check_ifname",
    "configure_link",
    "create_veth_pair",
    "delete_link",
    "ensure_ipv6_enabled",
    "exists",
    "find_link",
    "get_link",
    "ifname_problem",
    "inspect_link",
    "link_problems",
    "netlink_in",
    "operational",
    "parse_interface",
    "read_link_states",
    "rename_link",
    "verify_link",
    "wait_for_link",
]
