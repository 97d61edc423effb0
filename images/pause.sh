#!/usr/bin/env bash
# The pause image of the one-node test cluster (scripts/kube-up.sh; containerd's sandbox_image), written
# as an OCI image archive with tar and sha256sum: no container engine, no registry. It holds the
# busybox-static binary only; its entrypoint idles until SIGTERM (then exits 0) and, as PID 1 of a pod
# that shares its process namespace, reaps orphans. Named localhost/nsm-pause:latest inside the archive
# (annotation io.containerd.image.name), so `ctr -n k8s.io images import FILE` needs no other argument.
# The archive is reproducible (same busybox, same bytes) and rebuilt only when this recipe or busybox changed.
#
#   images/pause.sh [--out FILE] [--image NAME]     prints the archive's path on stdout
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT="$HERE/.build/nsm-pause.oci.tar"
IMAGE="localhost/nsm-pause:latest"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?}; shift 2 ;;
        --image) IMAGE=${2:?}; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "pause.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
BUSYBOX=$(command -v busybox || true)
if [ -z "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "pause.sh: needs a static busybox (apt-get install busybox-static)" >&2
    exit 2
fi
case "$(uname -m)" in
    x86_64|amd64) ARCH=amd64 ;;
    aarch64|arm64) ARCH=arm64 ;;
    *) echo "pause.sh: unsupported architecture $(uname -m)" >&2; exit 2 ;;
esac
# `wait` in busybox sh reaps any child (orphans of the pod included) while it waits for its sleep
IDLE='trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
RECIPE=$( { cat "$0"; sha256sum "$BUSYBOX"; echo "$IMAGE $ARCH"; } | sha256sum | cut -c1-32)
if [ -f "$OUT" ] && [ "$(cat "$OUT.recipe" 2>/dev/null)" = "$RECIPE" ]; then
    echo "$OUT"
    exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# tar with fixed owners, order and times: the same busybox always gives the same layer digest
det_tar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"; }
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc" "$WORK/rootfs/proc" "$WORK/rootfs/sys" "$WORK/rootfs/dev" \
    "$WORK/layout/blobs/sha256"
cp "$BUSYBOX" "$WORK/rootfs/bin/busybox"
ln -s busybox "$WORK/rootfs/bin/sh"
ln -s busybox "$WORK/rootfs/bin/sleep"
echo "root:x:0:0:root:/:/bin/sh" > "$WORK/rootfs/etc/passwd"
echo "root:x:0:" > "$WORK/rootfs/etc/group"
det_tar -C "$WORK/rootfs" -cf "$WORK/layer.tar" .

blob() {  # blob FILE -> "sha256:<hex> <size>", the file stored under blobs/sha256/
    local hex size
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$WORK/layout/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}
read -r layer layer_size < <(blob "$WORK/layer.tar")
idle_json=${IDLE//\"/\\\"}
printf '%s' "{\"architecture\":\"$ARCH\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/bin\"],\
\"Entrypoint\":[\"/bin/sh\",\"-c\",\"$idle_json\"],\"StopSignal\":\"SIGTERM\"},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$layer\"]}}" > "$WORK/config.json"
read -r config config_size < <(blob "$WORK/config.json")
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$config\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$layer\",\"size\":$layer_size}]}" \
    > "$WORK/manifest.json"
read -r manifest manifest_size < <(blob "$WORK/manifest.json")
printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"digest\":\"$manifest\",\"size\":$manifest_size,\"platform\":{\"architecture\":\"$ARCH\",\"os\":\"linux\"},\
\"annotations\":{\"io.containerd.image.name\":\"$IMAGE\",\"org.opencontainers.image.ref.name\":\"${IMAGE##*:}\"}}]}" \
    > "$WORK/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$WORK/layout/oci-layout"
mkdir -p "$(dirname "$OUT")"
det_tar -C "$WORK/layout" -cf "$OUT.tmp" .
mv -f "$OUT.tmp" "$OUT"
echo "$RECIPE" > "$OUT.recipe"
echo "==> $IMAGE: $OUT ($(($(stat -c %s "$OUT") / 1024)) KiB, $manifest)" >&2
echo "$OUT"
