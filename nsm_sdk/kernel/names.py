"""Linux interface name rules, checked before any netlink call.

The kernel (dev_valid_name) accepts 1..15 bytes without '/', ':' or whitespace, other than '.' and '..',
and treats a name with '%' as a template (`eth%d`) to number. We also require printable ASCII: the
kernel's isspace() takes some bytes of UTF-8 sequences for blanks, and no NSM name needs more.
"""

from __future__ import annotations

from nsm_sdk.kernel.errors import InvalidArgument

#: IFNAMSIZ is 16 including the terminating NUL.
MAX_IFNAME_LENGTH = 15


def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name, or None if it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_IFNAME_LENGTH:
        return f"is longer than {MAX_IFNAME_LENGTH} characters"
    if name in (".", ".."):
        return "is '.' or '..'"
    if any(not ("!" <= ch <= "~") for ch in name):
        return "contains a character other than printable, non-blank ASCII"
    if any(ch in name for ch in "/:%"):
        return "contains '/', ':' or '%'"
    return None


def check_ifname(name: str) -> str:
    """Return `name` unchanged, or raise InvalidArgument saying what is wrong with it."""
    problem = ifname_problem(name)
    if problem is not None:
        raise InvalidArgument(f"interface name {name!r} {problem}")
    return name
