#!/usr/bin/env bash
# Build SPIRE (spire-server and spire-agent v1.13.3, pinned by tests/interop/spire/go.mod and go.sum) into
# tests/interop/spire/bin/, for the interop tests' secure mode. The Go module proxy serves the spire module
# but refuses `go install ...@v1.13.3` (it has no version list), so the binaries are built from that small
# module. Cached: nothing is built when both binaries exist and are newer than go.mod and go.sum.
# Cold (empty module and build caches) about 9 min on 2 cores; a rebuild with a warm build cache is a link.
# Exit codes: 0 built or up to date, 3 no Go toolchain found, else a failure.
set -euo pipefail
# shellcheck source=lib/go.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
cd "$(dirname "$0")/../tests/interop/spire"

up_to_date() {
    local bin
    for bin in bin/spire-server bin/spire-agent; do
        [ -x "$bin" ] && [ "$bin" -nt go.mod ] && [ "$bin" -nt go.sum ] || return 1
    done
}
if [ "${1:-}" != "--force" ] && up_to_date; then
    echo "build-spire: tests/interop/spire/bin/spire-{server,agent} are up to date" >&2
    exit 0
fi

use_go build-spire 1.25.3
# local: never fetch another toolchain; readonly: go.mod/go.sum are committed and must be complete
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
echo "build-spire: $("$GO" version) -> tests/interop/spire/bin/spire-server, spire-agent" >&2
mkdir -p bin
# build into a scratch directory and move into place, so that an interrupted build never leaves a binary
# that looks up to date
tmp="$(mktemp -d bin/.build-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
"$GO" build -o "$tmp/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
mv -f "$tmp/spire-server" "$tmp/spire-agent" bin/
