#!/usr/bin/env bash
# Build the interop harness (tests/interop/harness, a Go module pinned to NSM sdk/sdk-kernel/api v1.18.0)
# into tests/interop/harness/bin/nsmharness. Module downloads come from the Go module proxy on first use.
# Exit codes: 0 built, 3 no Go toolchain found (the interop tests then skip, or fail in CI), else a failure.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop/harness"

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
fi
if [ -z "$GO" ]; then
    echo "build-interop: no Go toolchain (neither 'go' on PATH nor /usr/local/go/bin/go); Go >= 1.24 is needed" >&2
    exit 3
fi

# the go command needs a home for its module and build caches, also in a bare environment
if [ -z "${HOME:-}" ]; then
    HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
    export HOME
fi
# local: never fetch another toolchain; readonly: go.mod/go.sum are committed and must be complete
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
echo "build-interop: $("$GO" version) -> tests/interop/harness/bin/nsmharness" >&2
"$GO" build -trimpath -o bin/nsmharness .
