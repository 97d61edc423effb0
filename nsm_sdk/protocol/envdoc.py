"""The environment variables an agent reads, written down once: `--help` and the README show the same rows.

Each sidecar's settings module keeps a tuple of `EnvVar` beside its `from_env`. `help_text` renders it for
a terminal (`nsc-sidecar --help`), `markdown_table` for the README, between markers that
`scripts/sync-readme.py` rewrites; tests/unit/test_help_tables.py fails when the two drift apart, or when
`from_env` reads a variable no row names.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NO_DEFAULT = "–"  # noqa: RUF001 (an en dash, as the README's tables write "none")


@dataclass(frozen=True)
class EnvVar:
    """One row: the variable (and the aliases read in its place), what it means, its default, an example."""

    names: tuple[str, ...]
    meaning: str
    default: str = NO_DEFAULT
    example: str = ""
    """A whole assignment, as a shell would take it: ``NSM_REQUEST_TIMEOUT=30s``."""


def _code(text: str) -> str:
    return f"`{text}`" if text and text != NO_DEFAULT else text


def markdown_table(program: str, rows: Sequence[EnvVar]) -> str:
    """The README's table for `program` (no trailing newline)."""
    lines = [f"| `{program}` | meaning | default | example |", "| --- | --- | --- | --- |"]
    for row in rows:
        names = ", ".join(f"`{name}`" for name in row.names)
        meaning, default = (text.replace("|", "\\|") for text in (row.meaning, row.default))
        lines.append(f"| {names} | {meaning} | {default} | {_code(row.example)} |")
    return "\n".join(lines)


def _markers(program: str) -> tuple[str, str]:
    return (
        f"<!-- {program} environment: generated from its settings module by scripts/sync-readme.py -->",
        f"<!-- end of {program} environment -->",
    )


def readme_block(text: str, program: str) -> str | None:
    """The table between `program`'s markers in a README's `text`; None when the markers are missing."""
    begin, end = _markers(program)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[start + len(begin) : stop].strip("\n")


def with_readme_block(text: str, program: str, rows: Sequence[EnvVar]) -> str:
    """`text` with `program`'s table (between its markers) rewritten from `rows`."""
    begin, end = _markers(program)
    if readme_block(text, program) is None:
        raise ValueError(f"no {begin!r} ... {end!r} markers")
    start, stop = text.index(begin) + len(begin), text.index(end)
    return f"{text[:start]}\n{markdown_table(program, rows)}\n{text[stop:]}"


def help_text(
    program: str, summary: str, rows: Sequence[EnvVar], ignored: Iterable[str], example: str
) -> str:
    """What `program --help` prints: what it is, every variable with its default and an example, the
    variables it ignores (warned about at start), and one whole example."""
    out = [f"usage: {program} [--help | --version]", "", *textwrap.wrap(summary, 100), ""]
    out += [
        "Configuration comes from the environment only. Bad values: one line naming the variable, exit 2.",
        "",
    ]
    out.append("environment variables:")
    for row in rows:
        out.append("  " + ", ".join(row.names))
        out += textwrap.wrap(
            row.meaning.replace("`", ""), 96, initial_indent="      ", subsequent_indent="      "
        )
        out.append(f"      default: {row.default.replace('`', '')}")
        if row.example:
            out.append(f"      example: {row.example}")
    ignored = sorted(ignored)
    if ignored:
        out += ["", *textwrap.wrap("ignored, with a warning at start (NSM v0): " + ", ".join(ignored), 100)]
    out += ["", "example:", f"  {example}"]
    return "\n".join(out)


# Rows that mean the same to every agent.

CONNECT_TO = EnvVar(
    ("NSM_CONNECT_TO",),
    "manager URL, `unix:///path` or `tcp://host:port`",
    "`unix:///var/lib/networkservicemesh/nsm.io.sock`",
    "NSM_CONNECT_TO=unix:///run/nsm/nsm.io.sock",
)
REQUEST_TIMEOUT = EnvVar(
    ("NSM_REQUEST_TIMEOUT",),
    "deadline of each call to the manager (a Go duration)",
    "`15s`",
    "NSM_REQUEST_TIMEOUT=30s",
)
MAX_TOKEN_LIFETIME = EnvVar(
    ("NSM_MAX_TOKEN_LIFETIME",),
    "lifetime of the path tokens it signs (refresh at 1/5 of it); more than twice `NSM_REQUEST_TIMEOUT`",
    "`10m`",
    "NSM_MAX_TOKEN_LIFETIME=1m",
)
LOG_LEVEL = EnvVar(
    ("NSM_LOG_LEVEL",),
    "`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`",
    "`INFO`",
    "NSM_LOG_LEVEL=DEBUG",
)
CLIENT_INFO = EnvVar(
    ("POD_NAME", "NODE_NAME", "CLUSTER_NAME"),
    "added as labels `podName`, `nodeName`, `clusterName` (NSM clientinfo)",
    "not added",
    "NODE_NAME=worker-1",
)
SPIFFE_ENDPOINT = EnvVar(
    ("SPIFFE_ENDPOINT_SOCKET",),
    "SPIFFE Workload API (`unix://` or `tcp://`) that gives the X.509-SVID",
    "`unix:///run/spire/sockets/agent.sock`",
    "SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent.sock",
)
INSECURE = EnvVar(
    ("NSM_INSECURE",),
    "`true`: plaintext, no SPIFFE, tokens nobody can verify (experiments only)",
    "`false`",
    "NSM_INSECURE=true",
)
PROMETHEUS = EnvVar(
    ("NSM_PROMETHEUS_LISTEN_ON",),
    "serve Prometheus metrics at `http://HOST:PORT/metrics` (`HOST:PORT`, `:PORT`, `[v6]:PORT`)",
    "off",
    "NSM_PROMETHEUS_LISTEN_ON=:9090",
)
SECURITY_AND_METRICS = (SPIFFE_ENDPOINT, INSECURE, PROMETHEUS)
