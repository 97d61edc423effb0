#!/usr/bin/env bash
# Install everything the project and its tests need on a fresh Debian/Ubuntu machine (run as root):
# iproute2, iputils-ping, frr and chromium (headless, for tests) from apt, then the project with its test and
# dev tools in ./.venv; podman and the images; with Go, the interop harness, SPIRE and Kubernetes (for the
# kube tests' one-node cluster, scripts/kube-up.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
[ -x /usr/lib/frr/zebra ] || need_apt+=(frr)  # the routers of nsm-topo labs (FRR from the distribution)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # headless, for the tests of nsm-topo graph's page
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Containers (images/, docs/containers.md, lab devices with an image): podman with runc, debootstrap for the
# local base image, busybox-static for the lab device image. No recommends: they would bring crun, which
# cannot run containers with hybrid cgroups (shared/docs/build-environment.md).
need_containers=()
command -v podman >/dev/null 2>&1 || need_containers+=(podman runc conmon containernetworking-plugins catatonit)
command -v buildah >/dev/null 2>&1 || need_containers+=(buildah)  # images/check.sh runs commands in images without a runtime
command -v debootstrap >/dev/null 2>&1 || need_containers+=(debootstrap)
# the kube tests' cluster (scripts/kube-up.sh installs them too): etcd, containerd, the bridge's iptables
[ -x /usr/bin/etcd ] || need_containers+=(etcd-server)
command -v containerd >/dev/null 2>&1 || need_containers+=(containerd)
command -v iptables >/dev/null 2>&1 || need_containers+=(iptables)
{ command -v busybox >/dev/null 2>&1 && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } \
    || need_containers+=(busybox-static)
if [ ${#need_containers[@]} -gt 0 ]; then
    echo "setup: installing ${need_containers[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    [ ${#need_apt[@]} -gt 0 ] || apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_containers[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python >= 3.11 is required, found $(python3 --version)" >&2; exit 1; }

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# ---- containers: podman's configuration, then the images the tests run (docs/containers.md) -------------
# podman's built-in defaults fail on machines like the CI's: crun refuses hybrid cgroups, and the default
# ulimits are above root's hard limits. Write /etc/containers/containers.conf (what podman, the tests and
# users' own podman commands read) only if there is none: an existing one is the administrator's.
CONTAINERS_CONF_FILE=/etc/containers/containers.conf
if grep -q "^# Written by nsm-topology-sidecars" "$CONTAINERS_CONF_FILE" 2>/dev/null; then
    echo "setup: $CONTAINERS_CONF_FILE is in place"
elif [ -e "$CONTAINERS_CONF_FILE" ]; then
    echo "setup: keeping $CONTAINERS_CONF_FILE as it is (containers here need runc, cgroupfs and ulimits" \
        "within the hard limits: docs/containers.md)"
else
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then nofile=1048576; fi
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi  # podman's own limit
    mkdir -p /etc/containers
    cat > "$CONTAINERS_CONF_FILE" <<CONF
# Written by nsm-topology-sidecars' scripts/setup.sh (delete it to go back to podman's defaults).
# runc: crun cannot run with hybrid cgroups; ulimits within this host's hard limits (root cannot raise them).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    echo "setup: wrote $CONTAINERS_CONF_FILE (runc, cgroupfs, ulimits nofile=$nofile nproc=$nproc)"
fi
# The four images from this checkout on a local debootstrap base (no registry needed), rebuilt only when
# their sources changed (about 1 min cold, 25 s after a change, 1 s when current), and the busybox image
# that lab tests run as a device.
build_log=images/.build/setup-build.log
mkdir -p images/.build
echo "setup: building the images (images/build.sh --local-base --if-changed; log: $build_log)"
PYTHON=.venv/bin/python bash images/build.sh --local-base --if-changed >"$build_log" 2>&1 || {
    tail -n 20 "$build_log" >&2; echo "setup: building the images failed (log: $build_log)" >&2; exit 1; }
sed -n '/^==> up to date/p; /^==> built:/,$p' "$build_log"
bash images/busybox.sh
# The router image of Kubernetes labs (FRR from Debian by debootstrap; 2-3 min cold, then cached): mostly
# network and disk, so it is built in the background while Go builds below.
frr_log=images/.build/setup-frr.log
bash images/frr.sh >"$frr_log" 2>&1 &
frr_pid=$!

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
    # Kubernetes v1.34.4 (apiserver, controller-manager, scheduler, kubelet, kubectl) for tests/kube's
    # cluster; cached in ~/.cache/nsm-topology-sidecars (a cold build takes about 9 min on 2 cores)
    echo "setup: building Kubernetes for the kube tests (cached in ~/.cache/nsm-topology-sidecars)"
    bash scripts/build-kube.sh
else
    echo "setup: no Go toolchain found; skipping the interop harness, SPIRE and Kubernetes (tests/interop will skip, tests/kube fail: Go >= 1.24 is needed)"
fi
wait "$frr_pid" || { tail -n 20 "$frr_log" >&2; echo "setup: building the router image failed (log: $frr_log)" >&2; exit 1; }
cat "$frr_log"
echo "setup: done. Programs are in .venv/bin (nsm-local, nse-sidecar, nsc-sidecar)."
