#!/usr/bin/env bash
# Build the Kubernetes programs of the one-node test cluster (scripts/kube-up.sh): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kubectl, all v1.34.4, from the Go module proxy,
# into ~/.cache/nsm-topology-sidecars/kube-build/bin/: outside the checkout, so every clone of the
# project on a machine (CI's clean clones included) shares one build.
#
#   scripts/build-kube.sh [--force]
#
# The proxy serves k8s.io/kubernetes but `go install ...@v1.34.4` is refused (its go.mod replaces the
# k8s.io/* staging modules with ./staging directories, which the module zip leaves out). So: download the
# module, copy it to <build dir>/src/, point each staging replace at the published k8s.io/X v0.34.4, and
# build there with the version stamped in (without it `kubectl version` cannot parse the server's version).
# Cached: nothing is built when <build dir>/bin/.stamp names the same version and every binary is there.
# Cold (empty module and build caches) about 8 min on 2 cores; a rerun with the same version is instant.
# Environment: KUBE_BUILD_DIR (default ${XDG_CACHE_HOME:-~/.cache}/nsm-topology-sidecars/kube-build), GOMODCACHE and GOCACHE as the go command reads them.
# Exit codes: 0 built or up to date, 3 no Go toolchain found, else a failure.
set -euo pipefail
# shellcheck source=lib/go.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
cd "$(dirname "$0")/.."

KUBE_VERSION=v1.34.4
STAGING_VERSION=v0.34.4  # the k8s.io/* staging modules published with KUBE_VERSION
PROGRAMS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
OUT=${KUBE_BUILD_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/nsm-topology-sidecars/kube-build}
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "build-kube: unknown argument: $1" >&2; exit 2 ;;
    esac
done

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
# -s -w: no symbol table or DWARF (as Kubernetes' own release builds): a quicker link, a third of the size
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    LDFLAGS+=" -X $pkg.gitTreeState=clean"
done
STAMP="kubernetes $KUBE_VERSION staging $STAGING_VERSION programs ${PROGRAMS[*]} ldflags $LDFLAGS"

up_to_date() {
    local program
    [ "$(cat "$OUT/bin/.stamp" 2>/dev/null)" = "$STAMP" ] || return 1
    for program in "${PROGRAMS[@]}"; do [ -x "$OUT/bin/$program" ] || return 1; done
}
if [ "$FORCE" = 0 ] && up_to_date; then
    echo "build-kube: $OUT/bin has Kubernetes $KUBE_VERSION (${PROGRAMS[*]})" >&2
    exit 0
fi

use_go build-kube 1.24
# local: never fetch another toolchain; mod: the rewritten go.mod gains go.sum lines for the staging modules
export GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"

mkdir -p "$OUT/bin" "$OUT/src"
OUT=$(cd "$OUT" && pwd)  # absolute: go build runs in the module's copy
# git ignores the whole directory, and so does images/build.sh when it copies the checkout
[ -f "$OUT/.gitignore" ] || printf '# binaries and sources of scripts/build-kube.sh\n*\n' > "$OUT/.gitignore"
exec 9>"$OUT/.lock"  # one build at a time (CI steps or a person may start two)
flock 9
if [ "$FORCE" = 0 ] && up_to_date; then
    echo "build-kube: $OUT/bin has Kubernetes $KUBE_VERSION (built meanwhile)" >&2
    exit 0
fi
start=$SECONDS
echo "==> Kubernetes $KUBE_VERSION with $("$GO" version | cut -d' ' -f3-) -> $OUT/bin (${PROGRAMS[*]})"

# ---- the module, copied out of the (read-only) module cache, with the staging replaces rewritten ---------
SRC="$OUT/src/kubernetes-$KUBE_VERSION"
if [ ! -f "$SRC/.prepared" ]; then
    # run outside any module (go.mod in a parent directory would be edited otherwise)
    json=$(cd / && "$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION") || {
        echo "$json" >&2; echo "build-kube: go mod download k8s.io/kubernetes@$KUBE_VERSION failed" >&2; exit 1; }
    moddir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$moddir/go.mod" ] || { echo "$json" >&2; echo "build-kube: no module directory in that answer" >&2; exit 1; }
    echo "==> module k8s.io/kubernetes@$KUBE_VERSION ($((SECONDS - start)) s), copying to $SRC"
    rm -rf "$SRC"
    cp -r "$moddir" "$SRC"
    chmod -R u+w "$SRC"
    # k8s.io/api => ./staging/src/k8s.io/api   becomes   k8s.io/api => k8s.io/api v0.34.4
    sed -i -E "s#^([[:space:]]*)(k8s\.io/[^[:space:]]+) => \./staging/[^[:space:]]+[[:space:]]*\$#\1\2 => \2 $STAGING_VERSION#" \
        "$SRC/go.mod"
    if grep -q '=> \./' "$SRC/go.mod"; then
        grep -n '=> \./' "$SRC/go.mod" >&2
        echo "build-kube: replaces into the module's own directories are left in $SRC/go.mod" >&2
        exit 1
    fi
    echo "==> $(grep -c "=> k8s.io/[^ ]* $STAGING_VERSION\$" "$SRC/go.mod") staging modules at $STAGING_VERSION"
    touch "$SRC/.prepared"
fi

# ---- one go build for all programs: they share most packages, and go runs compiles and links in parallel --
# Build into a scratch directory and move into place, so that an interrupted build never leaves a binary
# that looks up to date.
tmp="$(mktemp -d "$OUT/bin/.build-XXXXXX")"
log="$OUT/build.log"
watcher=""
cleanup() {
    [ -z "$watcher" ] || kill "$watcher" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
echo "==> go build on $(nproc) cores (modules download on first use; log: $log)"
# one line per program as its binary appears
(
    left=("${PROGRAMS[@]}")
    while [ ${#left[@]} -gt 0 ]; do
        sleep 1
        still=()
        for program in "${left[@]}"; do
            if [ -e "$tmp/$program" ]; then
                echo "==> $program ($((SECONDS - start)) s)"
            else
                still+=("$program")
            fi
        done
        left=(${still[@]+"${still[@]}"})
    done
) &
watcher=$!
pkgs=()
for program in "${PROGRAMS[@]}"; do pkgs+=("./cmd/$program"); done
if ! (cd "$SRC" && "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$tmp/" "${pkgs[@]}") >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "build-kube: go build failed after $((SECONDS - start)) s (log: $log)" >&2
    exit 1
fi
for program in "${PROGRAMS[@]}"; do
    [ -x "$tmp/$program" ] || { echo "build-kube: go build made no $program" >&2; exit 1; }
done
wait "$watcher" || true  # it ends by itself within a second once every binary is there
watcher=""
for program in "${PROGRAMS[@]}"; do mv -f "$tmp/$program" "$OUT/bin/$program"; done
echo "$STAMP" > "$OUT/bin/.stamp"
echo "==> built in $((SECONDS - start)) s: $("$OUT/bin/kubectl" version --client 2>/dev/null | head -n1)"
