"""Linux interface name rules, checked before any netlink call: the one rule of
`nsm_sdk.protocol.ifname` (1..15 bytes of printable, non-blank ASCII other than '/', ':' and '%'; not '.'
or '..'), raised here as the kernel layer's InvalidArgument.
"""

from __future__ import annotations

from nsm_sdk.kernel.errors import InvalidArgument
from nsm_sdk.protocol.ifname import MAX_INTERFACE_NAME_BYTES, interface_name_problem

#: IFNAMSIZ is 16 including the terminating NUL.
MAX_IFNAME_LENGTH = MAX_INTERFACE_NAME_BYTES


def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name, or None if it can."""
    return interface_name_problem(name)


def check_ifname(name: str) -> str:
    """Return `name` unchanged, or raise InvalidArgument saying what is wrong with it."""
    problem = ifname_problem(name)
    if problem is not None:
        raise InvalidArgument(problem)
    return name
