#!/usr/bin/env bash
# Check the images built by images/build.sh without a container runtime: every command is executed inside
# the image with `buildah run` (see images/README.md). Prints PASS/FAIL per check; exit 1 if any failed.
#
#   images/check.sh [--vfs] [--tag TAG] [--prefix PREFIX] [--e2e]
#
# --vfs   the storage/isolation used by `build.sh --vfs` (vfs, chroot, images/.build/containers.conf)
# --e2e   also bring one link up (root; uses network namespaces nsmimg-cp/-d1/-d2): nsm-local serve, then
#         nse-sidecar and nsc-sidecar, each run from its image in its own netns with CAP_NET_ADMIN as its
#         only capability (nsm-local: NET_ADMIN + SYS_ADMIN only); ping across, probe the readiness
#         files, SIGTERM everything and check that the link is gone. Everything is removed on exit.
# `cond && pass || fail` is fine here: pass only echoes. cleanup is called through the EXIT trap.
# shellcheck disable=SC2015,SC2317
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/images/.build"
TAG=""
PREFIX=""
VFS=0
E2E=0
while [ $# -gt 0 ]; do
    case "$1" in
        --vfs) VFS=1; shift ;;
        --tag) TAG=${2:?}; shift 2 ;;
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --e2e) E2E=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "check.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$TAG" ]; then
    TAG=$(ls "$OUT"/wheels/nsm_topology_sidecars-*.whl 2>/dev/null | head -n1 | xargs -r basename | cut -d- -f2)
    [ -n "$TAG" ] || { echo "check.sh: no --tag and no wheel in $OUT/wheels" >&2; exit 2; }
fi
BUILDAH=(buildah)
RUN_ARGS=()
if [ "$VFS" = 1 ]; then
    BUILDAH+=(--storage-driver vfs)
    RUN_ARGS+=(--isolation chroot)
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$OUT/containers.conf}
fi
bah() { "${BUILDAH[@]}" "$@"; }
brun() { bah run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "$@"; }

FAILED=0
CONTAINERS=()
NETNS=()
PIDS=()
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
# Capability flags giving exactly the named caps (buildah 1.28 ignores --cap-add after --cap-drop ALL,
# so every default capability of containers.conf, plus NET_RAW, is dropped by name).
only_caps() {
    local x
    for x in CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT MKNOD \
             AUDIT_WRITE SETFCAP NET_RAW; do printf -- '--cap-drop\nCAP_%s\n' "$x"; done
    for x in "$@"; do printf -- '--cap-add\nCAP_%s\n' "$x"; done
}
descendants() { local p; for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$p"; descendants "$p"; done; }
cleanup() {
    local p c
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        for c in $(descendants "$p") "$p"; do kill -KILL "$c" 2>/dev/null; done
    done
    for c in ${NETNS[@]+"${NETNS[@]}"}; do ip netns del "$c" 2>/dev/null; done
    for c in ${CONTAINERS[@]+"${CONTAINERS[@]}"}; do bah umount "$c" >/dev/null 2>&1; bah rm "$c" >/dev/null 2>&1; done
    [ -z "${WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

container() {  # container NAME IMAGE: a fresh working container, removed on exit
    bah rm "$1" >/dev/null 2>&1
    bah from --name "$1" "$2" >/dev/null || { fail "buildah from $2"; return 1; }
    CONTAINERS+=("$1")
}

# expect_config_error PROGRAM VARIABLE: no configuration → exit 2, one stderr line naming VARIABLE
expect_config_error() {
    local c=$1 program=$2 variable=$3 out rc
    out=$(brun "$c" -- sh -c "$program >/tmp/check.out 2>/tmp/check.err; echo \$?; wc -l </tmp/check.out;
                                wc -l </tmp/check.err; cat /tmp/check.err" 2>&1)
    rc=$(echo "$out" | sed -n 1p)
    local nout nerr line
    nout=$(echo "$out" | sed -n 2p); nerr=$(echo "$out" | sed -n 3p); line=$(echo "$out" | sed -n 4p)
    if [ "$rc" = 2 ] && [ "$nout" = 0 ] && [ "$nerr" = 1 ] && [[ "$line" == *"$variable"* ]]; then
        pass "$program, no env: exit 2, one line: $line"
    else
        fail "$program, no env: exit=$rc stdout_lines=$nout stderr_lines=$nerr: $line"
    fi
    brun "$c" -- "$program" >/dev/null 2>&1
    rc=$?
    [ "$rc" = 2 ] && pass "$program exit status seen by buildah run: 2" || fail "$program via buildah run: $rc"
}

check_image() {
    local target=$1
    local image="${PREFIX}${target}:${TAG}" c="nsm-check-${target}"
    echo "== $image"
    container "$c" "$image" || return
    local entry source licenses description
    entry=$(bah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image")
    [ "$entry" = "[/opt/nsm/bin/$target]" ] && pass "ENTRYPOINT $entry" || fail "ENTRYPOINT $entry"
    label() { bah inspect --type image --format "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$1\"}}" "$image"; }
    source=$(label source); licenses=$(label licenses); description=$(label description)
    [ "$licenses" = Apache-2.0 ] && [ -n "$description" ] \
        && pass "OCI labels: licenses=$licenses source='$source' description set" \
        || fail "labels: licenses='$licenses' description='$description'"
    [ -n "$source" ] || echo "WARN  org.opencontainers.image.source is empty (build.sh --source URL sets it)"
    local version api said
    version=$(label version)
    api=$(bah inspect --type image --format '{{index .OCIv1.Config.Labels "nsm-topology-sidecars.nsm-api"}}' "$image")
    said=$(brun "$c" -- "$target" --version 2>&1)
    [ -n "$api" ] && [ "$said" = "$target $version (NSM API $api)" ] \
        && pass "labels version=$version nsm-api=$api, as $target --version says: $said" \
        || fail "labels version='$version' nsm-api='$api', but $target --version says: $said"
    case "$target" in
        nsc-sidecar) expect_config_error "$c" nsc-sidecar NS_NETWORKSERVICEMESH_IO ;;
        nse-sidecar) expect_config_error "$c" nse-sidecar ENDPOINT_NETWORK_SERVICE ;;
        nsm-agent) expect_config_error "$c" nsm-agent NS_NETWORKSERVICEMESH_IO ;;
        nsm-local)
            local help
            help=$(brun "$c" -- nsm-local --help 2>&1) && [[ "$help" == "usage: nsm-local"* ]] \
                && pass "nsm-local --help: $(echo "$help" | head -n1)" || fail "nsm-local --help: $help" ;;
    esac
    brun "$c" -- python -c "import nsm_sdk._proto.networkservice.connection_pb2" >/dev/null 2>&1 \
        && pass "python -c 'import nsm_sdk._proto.networkservice.connection_pb2'" || fail "proto import"
    local tools
    tools=$(brun "$c" -- sh -c 'for x in gcc cc make protoc pip pip3; do command -v $x; done;
        python -c "import grpc_tools" 2>/dev/null && echo grpc_tools; python -m pip --version 2>/dev/null;
        ls -d /tmp/wheels 2>/dev/null; true' 2>/dev/null)
    [ -z "$tools" ] && pass "no compiler, protoc, grpc_tools, pip or wheels in the image" || fail "found: $tools"
    echo "      size: $(bah images --format '{{.Size}}' "$image")"
}

for target in nsc-sidecar nse-sidecar nsm-agent nsm-local; do check_image "$target"; done

e2e() {
    echo "== end to end: nsm-local + nse-sidecar + nsc-sidecar (one link)"
    # Each container runs under `ip netns exec`, whose fresh /sys has no cgroup mounts: runc (buildah's oci
    # isolation) refuses to start there, so these runs use chroot isolation (capabilities are still set).
    RUN_ARGS=(--isolation chroot)
    WORK=$(mktemp -d /tmp/nsm-check.XXXXXX)
    local sock="$WORK/nsm" spire="$WORK/spire" ns
    mkdir -p "$sock" "$spire"
    for ns in nsmimg-cp nsmimg-d1 nsmimg-d2; do
        ip netns add "$ns" || { fail "ip netns add $ns"; return; }
        NETNS+=("$ns"); ip -n "$ns" link set lo up
    done
    container nsm-e2e-cp "${PREFIX}nsm-local:${TAG}" || return
    container nsm-e2e-nse "${PREFIX}nse-sidecar:${TAG}" || return
    container nsm-e2e-nsc "${PREFIX}nsc-sidecar:${TAG}" || return
    # the manager's socket, and nsm-local's Workload API (it gives every sidecar its SVID, by namespace)
    local mnt=(-v "$sock:/var/lib/networkservicemesh" -v "$spire:/run/spire/sockets") i cp_caps sidecar_caps
    mapfile -t cp_caps < <(only_caps NET_ADMIN SYS_ADMIN)
    mapfile -t sidecar_caps < <(only_caps NET_ADMIN)
    ip netns exec nsmimg-d1 "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "${sidecar_caps[@]}" nsm-e2e-nsc -- \
        grep -q '^CapEff:.*0000000000001000$' /proc/self/status \
        && pass "sidecars run with CapEff=0x1000 (CAP_NET_ADMIN only)" || fail "capability set is not NET_ADMIN only"
    # --pid host: nsm-local attests its callers by their pid's namespaces, as on a node (docs/containers.md)
    ip netns exec nsmimg-cp "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} --pid host \
        "${cp_caps[@]}" "${mnt[@]}" nsm-e2e-cp -- nsm-local serve \
        >"$WORK/nsm-local.log" 2>&1 & PIDS+=($!)
    for i in $(seq 100); do [ -S "$sock/nsm.io.sock" ] && [ -S "$spire/agent.sock" ] && break; sleep 0.1; done
    # The CLI with nsm-local's own capabilities: it reads a caller's namespaces in /proc only when the caller
    # holds no capability it lacks (the kernel's ptrace access rule).
    # And in nsm-local's namespace: there it is the operator, who may see every connection.
    ip netns exec nsmimg-cp "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "${cp_caps[@]}" "${mnt[@]}" \
        -v "$ROOT/examples:/examples:ro" nsm-e2e-cp -- nsm-local apply -f /examples/p2p.yaml \
        >/dev/null 2>&1 && pass "nsm-local apply -f examples/p2p.yaml" || fail "nsm-local apply"
    # mounted before they run (where the readiness files are seen from the host): mounting a container's
    # root while buildah run sets it up races with it
    local nsc_root nse_root
    nsc_root=$(bah mount nsm-e2e-nsc); nse_root=$(bah mount nsm-e2e-nse)
    ip netns exec nsmimg-d2 "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "${sidecar_caps[@]}" "${mnt[@]}" \
        -e ENDPOINT_NETWORK_SERVICE=p2p -e ENDPOINT_LABELS=device=device-2 -e IP_ADDRESS=10.60.1.0/24 \
        -e POD_NAME=device-2 nsm-e2e-nse -- nse-sidecar >"$WORK/nse.log" 2>&1 & local nse=$!; PIDS+=("$nse")
    ip netns exec nsmimg-d1 "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "${sidecar_caps[@]}" "${mnt[@]}" \
        -e 'NS_NETWORKSERVICEMESH_IO=p2p/eth12?link=net-0&peerif=eth21' -e POD_NAME=device-1 \
        nsm-e2e-nsc -- nsc-sidecar >"$WORK/nsc.log" 2>&1 & local nsc=$!; PIDS+=("$nsc")
    for i in $(seq 300); do [ -f "$nsc_root/run/nsm/ready" ] && [ -f "$nse_root/run/nsm/ready" ] && break; sleep 0.1; done
    brun nsm-e2e-nsc -- test -f /run/nsm/ready && pass "nsc-sidecar readiness: test -f /run/nsm/ready" \
        || fail "nsc-sidecar not ready"
    brun nsm-e2e-nse -- test -f /run/nsm/ready && pass "nse-sidecar readiness: test -f /run/nsm/ready" \
        || fail "nse-sidecar not ready"
    local a b
    a=$(ip -n nsmimg-d1 -br addr show dev eth12 2>&1); b=$(ip -n nsmimg-d2 -br addr show dev eth21 2>&1)
    [[ "$a" == *10.60.1.1/30* ]] && [[ "$b" == *10.60.1.2/30* ]] && pass "links: $a | $b" || fail "links: $a | $b"
    ip netns exec nsmimg-d1 ping -c 1 -W 2 10.60.1.2 >/dev/null && pass "ping 10.60.1.2 from device-1" \
        || fail "ping 10.60.1.2"
    local listing
    listing=$(ip netns exec nsmimg-cp "${BUILDAH[@]}" run ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} "${cp_caps[@]}" \
        "${mnt[@]}" nsm-e2e-cp -- nsm-local list 2>&1)
    [[ "$listing" == *"link=net-0 -> device=device-2"* ]] && [[ "$listing" == *"device-1 -> device-2"* ]] \
        && pass "nsm-local list: the applied match survived the endpoint's registration; connection listed" \
        || fail "nsm-local list: $listing"
    local pid py rc
    for pid in $nsc $nse; do
        py=$(for i in $(descendants "$pid"); do grep -q python "/proc/$i/cmdline" 2>/dev/null && echo "$i"; done | tail -n1)
        [ -n "$py" ] && kill -TERM "$py"
        wait "$pid"; rc=$?
        [ "$rc" = 0 ] && pass "SIGTERM → sidecar exited 0" || fail "SIGTERM → exit $rc"
    done
    py=$(for i in $(descendants "${PIDS[0]}"); do grep -q python "/proc/$i/cmdline" 2>/dev/null && echo "$i"; done | tail -n1)
    [ -n "$py" ] && kill -TERM "$py"
    # buildah 1.28 itself may crash (a nil logger) after a --pid host child has exited: nsm-local's own end
    # is its last log line, server.stopped, written once everything is closed
    wait "${PIDS[0]}"; rc=$?
    if [ "$rc" = 0 ] || { grep -q 'event=server.stopped' "$WORK/nsm-local.log" \
            && grep -q '^panic: runtime error' "$WORK/nsm-local.log"; }; then
        pass "SIGTERM → nsm-local stopped cleanly (event=server.stopped; buildah exit $rc)"
    else
        fail "nsm-local did not stop cleanly (buildah exit $rc)"
    fi
    ip -n nsmimg-d1 link show eth12 >/dev/null 2>&1 || ip -n nsmimg-d2 link show eth21 >/dev/null 2>&1 \
        && fail "link still present after stop" || pass "eth12/eth21 removed after both sidecars stopped"
    [ ! -e "$nsc_root/run/nsm/ready" ] && pass "nsc-sidecar readiness file removed on stop" \
        || fail "readiness file left behind"
    echo "      logs: nsm-local, nse, nsc"
    sed 's/^/      | /' "$WORK/nsm-local.log" "$WORK/nse.log" "$WORK/nsc.log" | cut -c1-200
}
[ "$E2E" = 1 ] && e2e

[ "$FAILED" = 0 ] && echo "all checks passed" || echo "some checks FAILED"
exit "$FAILED"
