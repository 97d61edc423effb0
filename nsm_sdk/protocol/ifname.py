"""Linux interface names: validation, the `nsm<index>` default and NSM's random name generator.

The kernel (``dev_valid_name``) accepts a name of 1..15 bytes (IFNAMSIZ 16 minus the NUL) that is not
``.`` or ``..`` and holds no ``/``, ``:`` or whitespace, and treats a name with ``%`` as a template
(``eth%d``) to number. We also require printable ASCII: the kernel's isspace() takes some bytes of UTF-8
sequences for blanks, and no NSM name needs more. This is the one rule for every name: configuration
(a bad name fails at start-up with the variable named, not deep inside a netlink call), requests (a
``peerif`` label) and the kernel layer (``nsm_sdk.kernel.names``) all use it. NSM's kernel mechanism
silently truncates longer names (nsm-v1-protocol.md §5.2), which is why we check up front.
"""

from __future__ import annotations

from collections.abc import Callable

from nsm_sdk.protocol.errors import ConfigError

#: Longest Linux interface name in bytes (``IFNAMSIZ - 1``; NSM's ``LinuxIfMaxLength``).
MAX_INTERFACE_NAME_BYTES = 15

#: Prefix of default names: ``nsm0``, ``nsm1``, ... (legacy-contract.md §2.3).
DEFAULT_NAME_PREFIX = "nsm"

#: Characters of the random part of a generated name (nsm-v1-protocol.md §5.2 ``[0-9A-Za-z]``).
GENERATED_NAME_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Longest piece of the network service name kept in a generated name (15 - "-" - 4 random chars).
_GENERATED_PREFIX_BYTES = MAX_INTERFACE_NAME_BYTES - 5


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid Linux interface name, or None when it is.

    Returned as text so both config parsing (ConfigError) and request handling (ProtocolError, e.g. a
    ``peerif`` label) can use it.
    """
    if not name:
        return "interface name is empty"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size > MAX_INTERFACE_NAME_BYTES:
        return f"interface name {name!r} is {size} bytes long, the Linux limit is {MAX_INTERFACE_NAME_BYTES}"
    if name in (".", ".."):
        return f"interface name {name!r} is not allowed"
    for char in name:
        if char in "/:%" or not ("!" <= char <= "~"):
            return f"interface name {name!r} contains the forbidden character {char!r} ({_ALLOWED})"
    return None


_ALLOWED = "printable ASCII other than blanks, '/', ':' and '%'"


def validate_interface_name(variable: str, name: str, *, value: str | None = None) -> str:
    """Return ``name`` if valid, else raise ConfigError for ``variable``.

    ``value`` is the variable's whole raw value when the name is only part of it (default: ``name``).
    """
    problem = interface_name_problem(name)
    if problem is not None:
        raise ConfigError(variable, name if value is None else value, problem)
    return name


def indexed_interface_name(index: int) -> str:
    """The default name of the link at 0-based list position ``index``: ``nsm<index>``."""
    if index < 0:
        raise ValueError(f"link index must not be negative, got {index}")
    return f"{DEFAULT_NAME_PREFIX}{index}"


def generate_interface_name(network_service: str, random_bytes: Callable[[int], bytes]) -> str:
    """A random name in the style of NSM's ``nanoid.GenerateLinuxInterfaceName`` (nsm-v1-protocol.md §5.2).

    Layout: up to 10 bytes of the network service name, ``-``, then random characters from
    ``[0-9A-Za-z]`` up to exactly 15 bytes (e.g. ``icmp-respo-a8Zq``). ``random_bytes(n)`` returns ``n``
    random bytes (``os.urandom`` or ``secrets.token_bytes`` in production; a fixed source in tests).

    Differences from upstream, all to keep the result a valid name: characters the kernel forbids are
    replaced with ``-``, the service name is cut on a character boundary, and an empty service name uses
    the ``nsm`` prefix. Upstream's current alphabet also contains punctuation; §5.2 and we use alphanumerics.
    """
    prefix = _name_prefix(network_service)
    random_part = _random_string(MAX_INTERFACE_NAME_BYTES - len(prefix.encode()) - 1, random_bytes)
    return f"{prefix}-{random_part}"


def _name_prefix(network_service: str) -> str:
    """At most 10 bytes of the service name, with forbidden characters replaced by ``-``."""
    kept: list[str] = []
    size = 0
    for char in network_service:
        safe = "-" if char in "/:%" or not ("!" <= char <= "~") else char
        char_size = len(safe.encode("utf-8", errors="surrogatepass"))
        if size + char_size > _GENERATED_PREFIX_BYTES:
            break
        kept.append(safe)
        size += char_size
    return "".join(kept) or DEFAULT_NAME_PREFIX


def _random_string(length: int, random_bytes: Callable[[int], bytes]) -> str:
    """``length`` unbiased picks from the alphabet: 6-bit masks, values >= 62 are thrown away."""
    chosen: list[str] = []
    while len(chosen) < length:
        chunk = random_bytes(2 * (length - len(chosen)))
        if not chunk:
            raise ValueError("random source returned no bytes")
        for byte in chunk:
            index = byte & 0x3F
            if index < len(GENERATED_NAME_ALPHABET):
                chosen.append(GENERATED_NAME_ALPHABET[index])
                if len(chosen) == length:
                    break
    return "".join(chosen)
