"""Label lists in environment variables, and an immutable label mapping.

Two syntaxes exist (legacy-contract.md §1.4, nsm-v1-protocol.md §2.2, §2.3):

* ``k=v,k=v``: the seed's ``ENDPOINT_LABELS`` and cmd-nsc's ``NSM_LABELS``;
* ``k:v,k:v``: envconfig's map syntax, cmd-nse's ``NSM_LABELS``.

Spaces around keys and values are trimmed in both (the seed trims; envconfig does not, but a label with
leading spaces is never what was meant). An empty or blank string means no labels.

We are stricter than the seed: there, a pair that does not split into exactly two parts silently became
the label ``""=""``. Here a pair without the separator, with the separator twice, with an empty key, an
empty pair (``a=1,,b=2``) or a repeated key is a ConfigError naming the variable.

Every label map, from configuration or from the wire, is also bounded (`label_map_problem`): at most
`MAX_LABELS` pairs, keys and values of at most `MAX_LABEL_BYTES` bytes of valid UTF-8 (what a protobuf
string must be). Real maps hold a handful of short pairs; an absurd one is refused, not copied around.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from nsm_sdk.protocol.errors import ConfigError

#: Most pairs one label map may hold (config, a Request's labels, a registration's).
MAX_LABELS = 128

#: Longest label key or value, in UTF-8 bytes (Kubernetes allows 63 for a value, 317 for a key).
MAX_LABEL_BYTES = 1024


def label_problem(key: str, value: str) -> str | None:
    """Why ``key=value`` cannot be a label (too long, or not encodable as UTF-8), or None."""
    for part in (key, value):
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            return f"label {_short(key)}={_short(value)} is not valid UTF-8 text"
        if size > MAX_LABEL_BYTES:
            return f"label {_short(key)}={_short(value)} is {size} bytes long; at most {MAX_LABEL_BYTES}"
    return None


def label_map_problem(labels: Mapping[str, str]) -> str | None:
    """Why ``labels`` is not an acceptable label map (`MAX_LABELS`, `label_problem`), or None."""
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels; at most {MAX_LABELS} are accepted"
    for key, value in labels.items():
        problem = label_problem(key, value)
        if problem is not None:
            return problem
    return None


def _short(text: str) -> str:
    """``repr`` of at most 40 characters of ``text`` (messages stay readable for huge values)."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


class FrozenLabels(Mapping[str, str]):
    """An immutable, hashable ``str -> str`` mapping; keeps insertion order, compares like a dict."""

    __slots__ = ("_items",)

    _items: dict[str, str]

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[FrozenLabels], tuple[dict[str, str]]]:
        return (type(self), (dict(self._items),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


def parse_equals_labels(variable: str, text: str) -> FrozenLabels:
    """Parse ``k=v,k=v`` (seed ``ENDPOINT_LABELS``, cmd-nsc ``NSM_LABELS``)."""
    return _parse_pairs(variable, text, "=")


def parse_colon_labels(variable: str, text: str) -> FrozenLabels:
    """Parse ``k:v,k:v`` (envconfig map syntax of cmd-nse ``NSM_LABELS``; values cannot hold ``:``)."""
    return _parse_pairs(variable, text, ":")


def format_labels(labels: Mapping[str, str], separator: str = "=") -> str:
    """Render ``labels`` in the syntax the parsers read (``separator`` is ``=`` or ``:``).

    Raises ValueError if a key or value cannot be written in that syntax (holds ``,`` or a separator,
    has surrounding spaces, or the key is empty).
    """
    if separator not in ("=", ":"):
        raise ValueError(f"separator must be '=' or ':', got {separator!r}")
    pairs = []
    for key, value in labels.items():
        for part in (key, value):
            if "," in part or separator in part or part != part.strip():
                raise ValueError(f"label {key!r}={value!r} cannot be written with separator {separator!r}")
        if not key:
            raise ValueError("label key is empty")
        pairs.append(f"{key}{separator}{value}")
    return ",".join(pairs)


def client_info_labels(
    *, pod_name: str | None = None, node_name: str | None = None, cluster_name: str | None = None
) -> FrozenLabels:
    """The labels NSM's ``clientinfo`` derives from ``POD_NAME``, ``NODE_NAME`` and ``CLUSTER_NAME``.

    nsm-v1-protocol.md §2.2: ``podName``, ``nodeName``, ``clusterName``. None or empty values are left out.
    """
    found = {"podName": pod_name, "nodeName": node_name, "clusterName": cluster_name}
    return FrozenLabels((key, value) for key, value in found.items() if value)


def with_missing_labels(labels: Mapping[str, str], extra: Mapping[str, str]) -> FrozenLabels:
    """``labels`` plus every pair of ``extra`` whose key is not already present (present keys win)."""
    merged = dict(labels)
    for key, value in extra.items():
        merged.setdefault(key, value)
    return FrozenLabels(merged)


def _parse_pairs(variable: str, text: str, separator: str) -> FrozenLabels:
    if not text.strip():
        return FrozenLabels()
    labels: dict[str, str] = {}
    for position, pair in enumerate(text.split(",")):
        parts = pair.split(separator)
        if not pair.strip():
            problem = f"empty label at position {position} (stray ',')"
        elif len(parts) != 2:
            what = "no" if len(parts) == 1 else "more than one"
            problem = f"label {pair.strip()!r} has {what} {separator!r}; expected key{separator}value"
        elif not parts[0].strip():
            problem = f"label {pair.strip()!r} has an empty key"
        elif parts[0].strip() in labels:
            problem = f"label key {parts[0].strip()!r} is given twice"
        else:
            labels[parts[0].strip()] = parts[1].strip()
            continue
        raise ConfigError(variable, text, problem)
    return checked_labels(variable, text, labels)


def checked_labels(variable: str, text: str, labels: Mapping[str, str]) -> FrozenLabels:
    """``labels`` as FrozenLabels, or a ConfigError for ``variable`` if `label_map_problem` finds one."""
    problem = label_map_problem(labels)
    if problem is not None:
        raise ConfigError(variable, text, problem)
    return FrozenLabels(labels)
