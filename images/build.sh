#!/usr/bin/env bash
# Build the nsc-sidecar, nse-sidecar and nsm-local images from this checkout (see images/README.md).
#
# 1. Wheels, on the host: the project wheel is built from a copy of the checkout (the tree itself is left
#    untouched; setup.py generates nsm_sdk/_proto in the copy), then `pip download` fetches binary
#    dependency wheels for CPython 3.11 on this machine's architecture, whatever Python runs this script.
# 2. Images: images/Dockerfile, one --target per program, with podman or docker, installing those
#    wheels with `pip install --no-index`.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: images/build.sh [options] [TARGET ...]

TARGETs: nsc-sidecar nse-sidecar nsm-agent nsm-local (default: all four)

options:
  --engine podman|docker  container tool (default: podman if installed, else docker)
  --base IMAGE            base image with python3 3.11 + venv (default: python:3.11-slim)
  --local-base            make the base here with debootstrap (Debian bookworm, root needed) and use it;
                          for machines that cannot pull images. Reused if it already exists
  --vfs                   podman only: vfs storage, chroot isolation and a containers.conf with
                          cgroupfs and no default ulimits (a root shell without a container runtime)
  --tag TAG               image tag (default: the project version)
  --prefix PREFIX         image name prefix, e.g. registry.example.com/nsm/ (default: none)
  --source URL            org.opencontainers.image.source label (default: git remote origin, if any)
  --out DIR               work dir for wheels, source copy and base rootfs (default: images/.build)
  --wheels-only           stop after the wheels
  --skip-wheels           reuse the wheels already in DIR/wheels
  --if-changed            do nothing if every image exists already and was built from the same sources
                          (label nsm-topology-sidecars.tree: a hash of the files that make the wheel, the
                          Dockerfile, the base and GLIBC_MAX); what scripts/setup.sh and the tests run
  -h, --help              this text

environment: PYTHON (host python used for pip, default python3), GLIBC_MAX (newest manylinux glibc
allowed in dependency wheels, default 2.36 = Debian bookworm, the glibc of python:3.11-slim-bookworm).
EOF
}

die() { echo "build.sh: $*" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENGINE=""
BASE="python:3.11-slim"
LOCAL_BASE=0
LOCAL_BASE_IMAGE="localhost/debian-python:bookworm"
VFS=0
TAG=""
PREFIX=""
SOURCE=""
OUT="$ROOT/images/.build"
WHEELS_ONLY=0
SKIP_WHEELS=0
IF_CHANGED=0
TARGETS=()
PYTHON=${PYTHON:-python3}
GLIBC_MAX=${GLIBC_MAX:-2.36}

while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE=${2:?}; shift 2 ;;
        --base) BASE=${2:?}; shift 2 ;;
        --local-base) LOCAL_BASE=1; shift ;;
        --vfs) VFS=1; shift ;;
        --tag) TAG=${2:?}; shift 2 ;;
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --source) SOURCE=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --wheels-only) WHEELS_ONLY=1; shift ;;
        --skip-wheels) SKIP_WHEELS=1; shift ;;
        --if-changed) IF_CHANGED=1; shift ;;
        -h|--help) usage; exit 0 ;;
        nsc-sidecar|nse-sidecar|nsm-agent|nsm-local) TARGETS+=("$1"); shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nsc-sidecar nse-sidecar nsm-agent nsm-local)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# One build at a time per work dir (test sessions and setup may start one concurrently): wait for it.
exec 9>"$OUT/.lock"
flock 9
WHEELS="$OUT/wheels"

case "$(uname -m)" in
    x86_64|amd64) ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) die "unsupported architecture $(uname -m) (x86_64 and aarch64 have manylinux wheels)" ;;
esac

# --- 0. up to date? ----------------------------------------------------------------------------------
# The files the wheel and the images are made of (tests, docs and scripts are not in them).
IMAGE_SOURCES=(pyproject.toml setup.py setup.cfg MANIFEST.in proto nsm_sdk nsc_sidecar nse_sidecar nsm_local
               nsm_topo images/Dockerfile)
tree_hash() {
    # sha256 over (path, content) of every source file, the same set copy_source takes
    (
        cd "$ROOT"
        if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
            git ls-files -z --cached --others --exclude-standard -- "${IMAGE_SOURCES[@]}"
        else
            find "${IMAGE_SOURCES[@]}" -type f ! -path '*/__pycache__/*' -print0 2>/dev/null
        fi | sort -z | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
            | xargs -0 -r sha256sum
        echo "base=$BASE local=$LOCAL_BASE glibc=$GLIBC_MAX prefix=$PREFIX"
    ) | sha256sum | cut -c1-32
}
TREE=""
if [ "$IF_CHANGED" = 1 ]; then
    [ "$LOCAL_BASE" = 1 ] && BASE=$LOCAL_BASE_IMAGE
    TREE=$(tree_hash)
    if [ -z "$TAG" ]; then
        TAG=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
            "$ROOT/pyproject.toml") || die "--if-changed: cannot read the version from pyproject.toml"
    fi
    probe=${ENGINE:-}
    [ -n "$probe" ] || { command -v podman >/dev/null && probe=podman; } || probe=docker
    probe_args=()
    [ "$VFS" = 1 ] && probe_args+=(--storage-driver vfs)
    current=1
    for target in "${TARGETS[@]}"; do
        found=$("$probe" ${probe_args[@]+"${probe_args[@]}"} image inspect \
            --format '{{index .Config.Labels "nsm-topology-sidecars.tree"}}' "${PREFIX}${target}:${TAG}" 2>/dev/null \
            || true)
        [ "$found" = "$TREE" ] || { current=0; break; }
    done
    if [ "$current" = 1 ]; then
        echo "==> up to date (tree $TREE): ${TARGETS[*]/%/:$TAG}"
        exit 0
    fi
fi

# --- 1. wheels ---------------------------------------------------------------------------------------
copy_source() {
    # Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits would hold.
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- . ':!:images/.build' \
            | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
            | tar --null -T - -cf -) | tar -C "$dest" -xf -
    else
        tar -C "$ROOT" --exclude=./images/.build --exclude=./build --exclude='*.egg-info' -cf - . \
            | tar -C "$dest" -xf -
    fi
}

build_wheels() {
    local src="$OUT/src"
    echo "==> copying the source to $src"
    copy_source "$src"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    echo "==> building the project wheel (build deps, incl. grpcio-tools, in pip's isolated env)"
    "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WHEELS" "$src"
    local project
    project=$(ls "$WHEELS"/nsm_topology_sidecars-*.whl)
    # Every manylinux tag from GLIBC_MAX down to 2.17, newest first, so the wheels fit the image's glibc.
    local platforms=() minor=${GLIBC_MAX#2.}
    while [ "$minor" -ge 17 ]; do platforms+=(--platform "manylinux_2_${minor}_${ARCH}"); minor=$((minor - 1)); done
    platforms+=(--platform "manylinux2014_${ARCH}")
    echo "==> downloading dependency wheels for cp311 / manylinux <= glibc $GLIBC_MAX / $ARCH"
    "$PYTHON" -m pip download --dest "$WHEELS" --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" "$project[kube]"
    echo "==> wheels:"
    ls -1 "$WHEELS"
}

if [ "$SKIP_WHEELS" = 1 ]; then
    ls "$WHEELS"/nsm_topology_sidecars-*.whl >/dev/null 2>&1 || die "--skip-wheels: no project wheel in $WHEELS"
else
    build_wheels
fi
[ "$WHEELS_ONLY" = 1 ] && exit 0

PROJECT_WHEEL=$(basename "$(ls "$WHEELS"/nsm_topology_sidecars-*.whl | head -n1)")
VERSION=$(echo "$PROJECT_WHEEL" | cut -d- -f2)
[ -n "$TAG" ] || TAG=$VERSION
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
NSM_API=$(sed -n 's/^NSM_API_VERSION = "\(.*\)".*/\1/p' "$ROOT/nsm_sdk/version.py")  # the NSM API it speaks
[ -n "$NSM_API" ] || die "no NSM_API_VERSION in nsm_sdk/version.py"
if [ -z "$SOURCE" ]; then
    SOURCE=$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)
    [ -n "$SOURCE" ] || echo "build.sh: warning: no --source and no git remote; the source label stays empty" >&2
fi

# --- 2. images ---------------------------------------------------------------------------------------
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null; then ENGINE=podman
    elif command -v docker >/dev/null; then ENGINE=docker
    else die "neither podman nor docker found"; fi
fi
ENGINE_ARGS=()
BUILD_ARGS=()
if [ "$VFS" = 1 ]; then
    [ "$ENGINE" = podman ] || die "--vfs needs --engine podman"
    ENGINE_ARGS+=(--storage-driver vfs)
    BUILD_ARGS+=(--isolation chroot)
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        printf '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n' \
            > "$OUT/containers.conf"
        export CONTAINERS_CONF="$OUT/containers.conf"
    fi
fi
engine() { "$ENGINE" ${ENGINE_ARGS[@]+"${ENGINE_ARGS[@]}"} "$@"; }

make_local_base() {
    if engine image exists "$LOCAL_BASE_IMAGE" 2>/dev/null \
        || { [ "$ENGINE" = docker ] && docker image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1; }; then
        echo "==> reusing base $LOCAL_BASE_IMAGE"
        return
    fi
    command -v debootstrap >/dev/null || die "--local-base needs debootstrap (apt-get install -y debootstrap)"
    local rootfs="$OUT/rootfs"
    rm -rf "$rootfs"
    echo "==> debootstrap bookworm into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
        http://deb.debian.org/debian
    # Trim what python:3.11-slim also leaves out: apt caches and lists, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    echo "==> importing it as $LOCAL_BASE_IMAGE"
    tar -C "$rootfs" -c . | engine import - "$LOCAL_BASE_IMAGE"
    rm -rf "$rootfs"
}
if [ "$LOCAL_BASE" = 1 ]; then
    make_local_base
    BASE=$LOCAL_BASE_IMAGE
fi

# Only wheels/ goes into the build context (podman and docker both read .dockerignore).
printf '*\n!wheels/\n' > "$OUT/.dockerignore"
OLD_IDS=()
for target in "${TARGETS[@]}"; do
    OLD_IDS+=("$(engine image inspect --format '{{.Id}}' "${PREFIX}${target}:${TAG}" 2>/dev/null || true)")
done
for target in "${TARGETS[@]}"; do
    image="${PREFIX}${target}:${TAG}"
    echo "==> $ENGINE build --target $target -t $image (base $BASE)"
    engine build ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} -f "$ROOT/images/Dockerfile" --target "$target" -t "$image" \
        --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
        --build-arg "NSM_API=$NSM_API" --build-arg "SOURCE=$SOURCE" --build-arg "TREE=${TREE:-$(tree_hash)}" "$OUT"
done
# A rebuild leaves the previous images and install stage untagged: remove those (nothing else).
for id in ${OLD_IDS[@]+"${OLD_IDS[@]}"}; do [ -z "$id" ] || engine rmi "$id" >/dev/null 2>&1 || true; done
engine image prune --force --filter label=nsm-topology-sidecars.stage=install >/dev/null 2>&1 || true
echo "==> built:"
for target in "${TARGETS[@]}"; do echo "    ${PREFIX}${target}:${TAG}"; done
