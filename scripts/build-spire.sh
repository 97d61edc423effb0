#!/usr/bin/env bash
# Build SPIRE (spire-server and spire-agent v1.13.3, pinned by tests/interop/spire/go.mod and go.sum) into
# tests/interop/spire/bin/, for the interop tests' secure mode. The Go module proxy serves the spire module
# but refuses `go install ...@v1.13.3` (it has no version list), so the binaries are built from that small
# module. Cached: nothing is built when both binaries exist and are newer than go.mod and go.sum.
# Cold (empty module and build caches) about 9 min on 2 cores; a rebuild with a warm build cache is a link.
# Exit codes: 0 built or up to date, 3 no Go toolchain found, else a failure.
set -euo pipefail
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

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
fi
if [ -z "$GO" ]; then
    echo "build-spire: no Go toolchain (neither 'go' on PATH nor /usr/local/go/bin/go); Go >= 1.25.3 is needed" >&2
    exit 3
fi

# the go command needs a home for its module and build caches, also in a bare environment
if [ -z "${HOME:-}" ]; then
    HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
    export HOME
fi
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
