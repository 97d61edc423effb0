#!/usr/bin/env bash
# The router image for Kubernetes labs: Debian bookworm (minbase) with FRR, iproute2 and ping from
# Debian's packages, made with debootstrap (nothing is pulled from a registry) and imported as
# localhost/nsm-frr:bookworm. Its entrypoint, images/frr-start.sh, starts FRR from /etc/frr/daemons and
# /etc/frr/frr.conf (the ConfigMap files nsm-topo mounts) and stops it cleanly on SIGTERM.
# Rebuilt only when this recipe changed (label nsm-topology-sidecars.recipe); about 1 min, root needed.
#
#   images/frr.sh [--engine podman|docker] [--image NAME] [--mirror URL] [--force]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENGINE=""
IMAGE="localhost/nsm-frr:bookworm"
MIRROR="http://deb.debian.org/debian"
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE=${2:?}; shift 2 ;;
        --image) IMAGE=${2:?}; shift 2 ;;
        --mirror) MIRROR=${2:?}; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "frr.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
PACKAGES="frr,iproute2,iputils-ping"
RECIPE=$( { cat "$HERE/frr.sh" "$HERE/frr-start.sh"; echo "$PACKAGES"; } | sha256sum | cut -c1-32)
found=$("$ENGINE" image inspect --format '{{index .Config.Labels "nsm-topology-sidecars.recipe"}}' "$IMAGE" \
    2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$found" = "$RECIPE" ]; then
    echo "==> up to date: $IMAGE"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "frr.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }

ROOTFS=$(mktemp -d /var/tmp/nsm-frr-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "==> debootstrap bookworm (+ $PACKAGES) into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# What a container does not need: apt's caches and lists, docs, man pages, locales.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
install -m 0755 "$HERE/frr-start.sh" "$ROOTFS/usr/local/sbin/frr-start"
# shellcheck disable=SC2016  # dpkg-query's format, not the shell's
version=$(chroot "$ROOTFS" dpkg-query -W -f '${Version}' frr)

echo "==> importing $IMAGE (FRR $version)"
old=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
quiet=()
if [ "$ENGINE" = podman ]; then quiet=(--quiet); fi  # no progress lines
tar -C "$ROOTFS" -c . | "$ENGINE" import "${quiet[@]}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENTRYPOINT ["/usr/local/sbin/frr-start"]' \
    --change 'STOPSIGNAL SIGTERM' \
    --change "LABEL nsm-topology-sidecars.recipe=$RECIPE" \
    --change "LABEL org.opencontainers.image.version=$version" \
    --change 'LABEL org.opencontainers.image.title=nsm-frr' \
    --change 'LABEL org.opencontainers.image.description=FRR from Debian bookworm for router pods' \
    - "$IMAGE" >/dev/null
# the previous build, now untagged
[ -z "$old" ] || [ "$old" = "$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")" ] \
    || "$ENGINE" rmi "$old" >/dev/null 2>&1 || true
echo "==> $IMAGE"
