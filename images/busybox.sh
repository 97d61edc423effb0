#!/usr/bin/env bash
# A 2 MB device image for labs and their tests: the busybox-static binary with its applets (sh, ip, ping,
# ...), imported as localhost/nsm-busybox:latest. Its command idles until SIGTERM, then exits 0, so
# `podman stop` is quick. Reused if it exists.
#
#   images/busybox.sh [--engine podman|docker] [--image NAME]
set -euo pipefail
ENGINE=""
IMAGE="localhost/nsm-busybox:latest"
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE=${2:?}; shift 2 ;;
        --image) IMAGE=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "busybox.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
if "$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" >/dev/null 2>&1; then
    echo "==> reusing $IMAGE"
    exit 0
fi
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 \
    || { echo "busybox.sh: needs a static busybox (apt-get install busybox-static)" >&2; exit 2; }
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS"/bin "$ROOTFS"/etc "$ROOTFS"/tmp "$ROOTFS"/proc "$ROOTFS"/sys "$ROOTFS"/dev "$ROOTFS"/run
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do [ "$applet" = busybox ] || ln -s busybox "$ROOTFS/bin/$applet"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
echo "root:x:0:" > "$ROOTFS/etc/group"
echo "==> importing $IMAGE ($($BUSYBOX | head -n1 | cut -d' ' -f1-2))"
tar -C "$ROOTFS" -c . | "$ENGINE" import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' \
    - "$IMAGE" >/dev/null
echo "==> $IMAGE"
