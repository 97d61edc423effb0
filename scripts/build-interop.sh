#!/usr/bin/env bash
# Build the interop harness (tests/interop/harness, a Go module pinned to NSM sdk/sdk-kernel/api v1.18.0)
# into tests/interop/harness/bin/nsmharness. Module downloads come from the Go module proxy on first use.
# Exit codes: 0 built, 3 no Go toolchain found (the interop tests then skip, or fail in CI), else a failure.
set -euo pipefail
# shellcheck source=lib/go.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
cd "$(dirname "$0")/../tests/interop/harness"

use_go build-interop 1.24
# local: never fetch another toolchain; readonly: go.mod/go.sum are committed and must be complete
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
echo "build-interop: $("$GO" version) -> tests/interop/harness/bin/nsmharness" >&2
"$GO" build -trimpath -o bin/nsmharness .
