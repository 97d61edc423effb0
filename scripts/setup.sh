#!/usr/bin/env bash
# Install everything the project and its tests need on a fresh Debian/Ubuntu machine (run as root):
# iproute2, iputils-ping and frr from apt, then the project with its test and dev tools in ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
[ -x /usr/lib/frr/zebra ] || need_apt+=(frr)  # the routers of nsm-topo labs (FRR from the distribution)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python >= 3.11 is required, found $(python3 --version)" >&2; exit 1; }

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: done. Programs are in .venv/bin (nsm-local, nse-sidecar, nsc-sidecar)."

# ---- optional: the interop harness (NSM's real Go control plane, tests/interop) --------------------------
# Only if a Go toolchain is installed (on PATH or at /usr/local/go/bin/go, where the CI machines have it):
# downloads the pinned Go modules and builds tests/interop/harness/bin/nsmharness. Without Go the interop
# tests skip with a message on a developer machine (and fail in CI).
if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then
    echo "setup: building the interop harness (Go modules download on first use)"
    bash scripts/build-interop.sh
    # SPIRE (server + agent, pinned in tests/interop/spire) for the interop tests' secure mode; skipped when
    # tests/interop/spire/bin is up to date (a cold build takes about 9 min on 2 cores)
    echo "setup: building SPIRE for the secure interop tests (cached in tests/interop/spire/bin)"
    bash scripts/build-spire.sh
else
    echo "setup: no Go toolchain found; skipping the interop harness (tests/interop will skip)"
fi
