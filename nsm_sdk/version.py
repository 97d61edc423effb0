"""What every program reports as its version: the one source of it.

The package version is the installed distribution's (`pyproject.toml`'s `version`, the only place it is
written); the NSM API version is the networkservicemesh/api release whose protos `proto/` carries (wire
identical, docs/nsm-v1-protocol.md §0) and the one the interop tier runs NSM's Go control plane at
(`tests/interop/harness/go.mod`; a unit test keeps the two the same).
"""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "nsm-topology-sidecars"
NSM_API_VERSION = "v1.18.0"


def package_version(unknown: str = "0+unknown") -> str:
    """The installed package's version (`unknown` when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return unknown


def version_line(program: str) -> str:
    """`nsc-sidecar 0.1.0 (NSM API v1.18.0)`: what `--version` prints."""
    return f"{program} {package_version()} (NSM API {NSM_API_VERSION})"
