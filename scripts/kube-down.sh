#!/usr/bin/env bash
# Stop the one-node cluster of scripts/kube-up.sh and remove everything it made, then check that nothing
# is left and say what is (exit 1 if anything is). Safe to run when nothing is up. As root.
#
#   scripts/kube-down.sh [--state-dir DIR] [--kubelet-dir DIR]     (the same values kube-up.sh was given)
#
# In order: the kubelet and the control plane; every pod's processes (containerd kills and deletes its
# tasks, so runc removes their cgroups and the shims exit; whatever survives, shims included, gets
# SIGKILL); containerd and etcd; the mounts under the state and kubelet directories (pod volumes,
# containerd's rootfs and shm mounts, the pods' network namespaces, the kubelet's own bind mount); the
# CNI bridge and whatever is still attached to it, the API server's veth and its namespace; the
# masquerading chains the bridge plugin added for our pods (CNI-*, only those whose rules name our
# network), its result cache in /var/lib/cni; the pods' log links in /var/log/containers; then the kubelet
# and state directories. Things of the host (podman's CNI chains, other namespaces) are not touched.
set -euo pipefail

STATE_DIR=${NSM_KUBE_STATE_DIR:-/var/lib/nsm-kube}
KUBELET_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) STATE_DIR=${2:?--state-dir needs a directory}; shift 2 ;;
        --kubelet-dir) KUBELET_DIR=${2:?--kubelet-dir needs a directory}; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "kube-down: unknown argument: $1 (--help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "kube-down: run as root" >&2; exit 2; }
STATE_DIR=$(realpath -m "$STATE_DIR")
case "$STATE_DIR" in /|/var|/var/lib|/run|/tmp|/usr|/etc|/home|/root)
    echo "kube-down: refusing --state-dir $STATE_DIR" >&2; exit 2 ;; esac

# what kube-up.sh wrote down (and its defaults, for a state directory that is gone or half made)
NETNS=nsm-kube HOST_VETH=nsmkube-api BRIDGE=nsmkube-br0 CNI_NETWORK=nsm-kube
CTR_SOCK=$STATE_DIR/containerd/containerd.sock
IP_FORWARD="" RUN_CONTAINERD_EXISTED=1 VAR_LOG_CONTAINERS_EXISTED=1 CGROUP_K8S_EXISTED=1
RECORDED_KUBELET_DIR=/var/lib/kubelet
if [ -r "$STATE_DIR/cluster.env" ]; then
    while IFS='=' read -r key value; do
        case "$key" in
            KUBELET_DIR) RECORDED_KUBELET_DIR=$value ;;
            NETNS|HOST_VETH|BRIDGE|CNI_NETWORK|CTR_SOCK|IP_FORWARD) printf -v "$key" '%s' "$value" ;;
            RUN_CONTAINERD_EXISTED|VAR_LOG_CONTAINERS_EXISTED|CGROUP_K8S_EXISTED) printf -v "$key" '%s' "$value" ;;
        esac
    done < "$STATE_DIR/cluster.env"
fi
KUBELET_DIR=$(realpath -m "${KUBELET_DIR:-$RECORDED_KUBELET_DIR}")
# the state and kubelet directories are removed only if kube-up.sh marked them as its own
STATE_OURS=0 KUBELET_OURS=0
[ -e "$STATE_DIR/.nsm-kube" ] && STATE_OURS=1
[ -e "$KUBELET_DIR/.nsm-kube" ] && KUBELET_OURS=1
RUN=$STATE_DIR/run
CTR_ROOT=$(dirname "$CTR_SOCK")
START=$SECONDS
say() { echo "==> $*"; }

if [ "$STATE_OURS" = 1 ]; then
    exec 8>"$STATE_DIR/.lock"
    flock -w 30 8 || { echo "kube-down: kube-up or kube-down is still running for $STATE_DIR" >&2; exit 1; }
fi

# ---- processes ---------------------------------------------------------------------------------------------
ours() {  # pids of the cluster's programs (components and shims): their command lines name our directories
    local f pid exe
    { grep -lsF "$STATE_DIR/" /proc/[0-9]*/cmdline 2>/dev/null || true; } | while read -r f; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
        exe=${exe% (deleted)}
        case "${exe##*/}" in
            etcd|containerd|containerd-shim*|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet)
                echo "$pid" ;;
        esac
    done
}
shims() {  # pids of containerd shims serving our containerd
    local pid
    for pid in $(ours); do
        case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in *containerd-shim*) echo "$pid" ;; esac
    done
}
descendants() {  # every descendant of the given pids (pod processes under their shims)
    [ $# -gt 0 ] || return 0
    # pid and ppid of every process; /proc/PID/stat's 4th field, after the command in parentheses
    for f in /proc/[0-9]*/stat; do
        read -r line < "$f" 2>/dev/null && echo "${f//[!0-9]/} ${line##*) }"
    done 2>/dev/null | awk -v roots="$*" '
        { ppid[$1] = $3 }
        END {
            n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1
            do { added = 0; for (p in ppid) if (!(p in keep) && (ppid[p] in keep)) { keep[p] = 1; out[p] = 1; added = 1 } } while (added)
            for (p in out) print p
        }'
}
pid_of() {  # pid_of NAME: its pid if it still runs
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && grep -qsF "$STATE_DIR" "/proc/$pid/cmdline" && echo "$pid"
}
running() {  # running PID...: true while one of them runs (a zombie has exited: init reaps it when it likes)
    local pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        [ "${stat%% *}" = Z ] || return 0
    done
    return 1
}
stop() {  # stop SIGNAL NAME...: the signal, up to 10 s, then SIGKILL
    local signal=$1 name pid pids=() i
    shift
    for name in "$@"; do pid=$(pid_of "$name") && pids+=("$pid"); done
    [ ${#pids[@]} -gt 0 ] || return 0
    kill "-$signal" "${pids[@]}" 2>/dev/null || true
    for i in $(seq 200); do
        running "${pids[@]}" || return 0
        [ "$i" = 200 ] || sleep 0.05
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}
ctr_k8s() { timeout 10 ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }

# every container and sandbox id this containerd knows: their cgroups, shim sockets and CNI results go too
ids=$(for dir in "$CTR_ROOT"/root/io.containerd.grpc.v1.cri/{sandboxes,containers} \
    "$CTR_ROOT"/state/io.containerd.runtime.v2.task/k8s.io; do
    for id in "$dir"/*; do if [[ "${id##*/}" =~ ^[0-9a-f]{64}$ ]]; then echo "${id##*/}"; fi; done
done | sort -u)

running=()
for name in kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    pid_of "$name" >/dev/null && running+=("$name")
done
if [ ${#running[@]} -gt 0 ]; then
    say "stopping ${running[*]} ($STATE_DIR)"
else
    say "no cluster process runs for $STATE_DIR; removing whatever is left of one"
fi
# their state goes with the state directory: no graceful shutdown (the API server's takes a second or more)
stop KILL kubelet kube-scheduler kube-controller-manager kube-apiserver

# pods: containerd kills and deletes every task (runc removes the cgroups, the shims exit)
if [ -S "$CTR_SOCK" ] && ctr_k8s version >/dev/null 2>&1; then
    containers=$(ctr_k8s containers ls -q 'labels."io.cri-containerd.kind"==container' 2>/dev/null || true)
    sandboxes=$(ctr_k8s containers ls -q 'labels."io.cri-containerd.kind"==sandbox' 2>/dev/null || true)
    if [ -n "$containers$sandboxes" ]; then
        say "killing $(echo "$sandboxes" | grep -c .) pods ($(echo "$containers" | grep -c .) containers)"
        for id in $containers $sandboxes; do ctr_k8s tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
        for id in $containers $sandboxes; do ctr_k8s tasks delete --force "$id" >/dev/null 2>&1 || true; done
    fi
fi
# whatever survived (containerd gone or stuck): the shims' processes, then the shims
shim_pids=$(shims)
if [ -n "$shim_pids" ]; then
    # shellcheck disable=SC2086  # word splitting of pid lists
    left=$(descendants $shim_pids)
    # shellcheck disable=SC2086
    [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
    sleep 0.5
    # a shim exits by itself once its containers are gone and deleted; the others get SIGKILL (their
    # sockets in /run/containerd/s are removed below)
    # shellcheck disable=SC2086
    kill -KILL $shim_pids 2>/dev/null || true
fi
stop TERM containerd etcd
# any other program of the cluster still running
left=$(ours)
if [ -n "$left" ]; then
    # shellcheck disable=SC2086,SC2046
    kill -KILL $left $(descendants $left) 2>/dev/null || true
    sleep 0.3
fi
# sockets of shims that were killed: /run/containerd/s/<sha256 of containerd's address/namespace/id>
shim_socket() { echo "/run/containerd/s/$(printf '%s' "$CTR_SOCK/k8s.io/$1" | sha256sum | cut -d' ' -f1)"; }
for id in $ids; do rm -f "$(shim_socket "$id")"; done
if [ "$RUN_CONTAINERD_EXISTED" = 0 ] && [ -d /run/containerd ]; then
    find /run/containerd -depth -type d -empty -delete 2>/dev/null || true  # s/, and fifo/ or runc/ of ctr
fi
# runc's cgroups (cgroupfs: /sys/fs/cgroup/<controller>/k8s.io/<id>): runc removes them when containerd
# deletes a task; those of killed tasks go here, then k8s.io itself if the cluster made it
for dir in /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io; do
    [ -d "$dir" ] || continue
    for id in $ids; do
        [ ! -d "$dir/$id" ] || find "$dir/$id" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    [ "$CGROUP_K8S_EXISTED" = 1 ] || rmdir "$dir" 2>/dev/null || true
done

# ---- mounts: everything under the state and kubelet directories, deepest first -----------------------------
our_mounts() {
    local dirs=("$STATE_DIR")
    [ "$KUBELET_OURS" = 0 ] || dirs+=("$KUBELET_DIR")
    # mountinfo's 5th field is the mount point (with \040 for a space)
    awk '{print $5}' /proc/self/mountinfo | while read -r target; do
        for dir in "${dirs[@]}"; do
            case "$target" in "$dir"|"$dir"/*) echo "$target"; break ;; esac
        done
    done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}
mounts=$(our_mounts)
if [ -n "$mounts" ]; then
    say "unmounting $(echo "$mounts" | grep -c .) mounts (pod volumes, rootfs, shm, network namespaces)"
    for _ in 1 2 3; do
        while read -r target; do
            target=$(printf '%b' "$target")  # \040 and friends
            umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
        done <<< "$mounts"
        mounts=$(our_mounts)
        [ -n "$mounts" ] || break
    done
fi

# ---- network ----------------------------------------------------------------------------------------------
if ip link show "$BRIDGE" >/dev/null 2>&1; then
    for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    say "removed the bridge $BRIDGE"
fi
ip link del "$HOST_VETH" 2>/dev/null || true
if [ -e "/run/netns/$NETNS" ]; then
    ip netns del "$NETNS" 2>/dev/null || true
    say "removed the namespace $NETNS and the API server's veth"
fi
# kube-up's stand-in for kube-proxy: the `kubernetes` Service's DNAT
SVC_CHAIN=NSMKUBE-SERVICES
for hook in OUTPUT PREROUTING; do
    while iptables -t nat -D "$hook" -j "$SVC_CHAIN" 2>/dev/null; do :; done
done
if iptables -t nat -S "$SVC_CHAIN" >/dev/null 2>&1; then
    iptables -t nat -F "$SVC_CHAIN" && iptables -t nat -X "$SVC_CHAIN"
    say "removed the nat chain $SVC_CHAIN (the kubernetes Service)"
fi
# the bridge plugin's masquerading: per pod a chain CNI-<hash> in nat, jumped to from POSTROUTING, every
# rule commented 'name: "<network>" id: "<container>"'. Only chains with rules that name our network go.
# iptables-save writes the comment's quotes escaped: --comment "name: \"nsm-kube\" id: \"...\""
saved_comment="name: \\\"$CNI_NETWORK\\\" id:"
our_chains=()
for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null 2>&1 || continue
    chains=$("$cmd-save" -t nat 2>/dev/null | grep -F -- "$saved_comment" \
        | awk '$1 == "-A" && $2 ~ /^CNI-/ {print $2}' | sort -u || true)
    for chain in $chains; do our_chains+=("$cmd $chain"); done
    # rules elsewhere (POSTROUTING) that carry our comment or jump to one of those chains, by number, last first
    for chain in $("$cmd-save" -t nat 2>/dev/null | awk '$1 == "-A" {print $2}' | sort -u); do
        case "$chain" in CNI-*) grep -qx -- "$chain" <<< "$chains" && continue ;; esac
        nums=$("$cmd" -t nat -L "$chain" -n --line-numbers 2>/dev/null | awk -v c="$CNI_NETWORK" -v chains="$chains" '
            BEGIN { n = split(chains, a, "\n"); for (i = 1; i <= n; i++) ours[a[i]] = 1 }
            $1 ~ /^[0-9]+$/ && (($2 in ours) || index($0, "name: \"" c "\" id:")) { print $1 }' | sort -rn)
        for num in $nums; do "$cmd" -t nat -D "$chain" "$num" 2>/dev/null || true; done
    done
    for chain in $chains; do
        "$cmd" -t nat -F "$chain" 2>/dev/null || true
        "$cmd" -t nat -X "$chain" 2>/dev/null || true
    done
    [ -z "$chains" ] || say "removed $(echo "$chains" | grep -c .) $cmd chains of $CNI_NETWORK's pods"
done
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
for id in $ids; do rm -f /var/lib/cni/results/cni-loopback-"$id"-*; done  # containerd's loopback network
rm -rf "/var/lib/cni/networks/$CNI_NETWORK"
if [ -n "$IP_FORWARD" ] && [ "$IP_FORWARD" != "$(cat /proc/sys/net/ipv4/ip_forward)" ]; then
    echo "$IP_FORWARD" > /proc/sys/net/ipv4/ip_forward  # the bridge plugin turned it on
fi

# ---- files ---------------------------------------------------------------------------------------------------
for link in /var/log/containers/*.log; do
    [ -L "$link" ] || continue
    case "$(readlink "$link")" in "$STATE_DIR"/*) rm -f "$link" ;; esac
done
[ "$VAR_LOG_CONTAINERS_EXISTED" = 1 ] || rmdir /var/log/containers 2>/dev/null || true
if [ -z "$(our_mounts)" ]; then
    # --one-file-system: never into a mount that could not be removed
    [ "$KUBELET_OURS" = 0 ] || rm -rf --one-file-system "$KUBELET_DIR"
    [ "$STATE_OURS" = 0 ] || rm -rf --one-file-system "$STATE_DIR"
fi

# ---- check ---------------------------------------------------------------------------------------------------
problems=()
for pid in $(ours); do
    problems+=("process $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-150)")
done
while read -r target; do
    [ -z "$target" ] || problems+=("mount $target")
done <<< "$(our_mounts)"
ip link show "$BRIDGE" >/dev/null 2>&1 && problems+=("link $BRIDGE")
ip link show "$HOST_VETH" >/dev/null 2>&1 && problems+=("link $HOST_VETH")
[ ! -e "/run/netns/$NETNS" ] || problems+=("network namespace $NETNS")
! iptables -t nat -S "$SVC_CHAIN" >/dev/null 2>&1 || problems+=("iptables chain $SVC_CHAIN (nat)")
for cmd in iptables-save ip6tables-save; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    n=$("$cmd" 2>/dev/null | grep -cF -- "$saved_comment" || true)
    [ "$n" = 0 ] || problems+=("$n $cmd rules of $CNI_NETWORK")
done
for entry in ${our_chains[@]+"${our_chains[@]}"}; do
    read -r cmd chain <<< "$entry"
    ! "$cmd" -t nat -S "$chain" >/dev/null 2>&1 || problems+=("$cmd chain $chain (nat)")
done
for f in /var/lib/cni/results/"$CNI_NETWORK"-* /var/lib/cni/networks/"$CNI_NETWORK"; do
    [ ! -e "$f" ] || problems+=("file $f")
done
for link in /var/log/containers/*.log; do
    [ -L "$link" ] && case "$(readlink "$link")" in "$STATE_DIR"/*) problems+=("link $link") ;; esac
done
if [ -e "$STATE_DIR" ]; then
    if [ "$STATE_OURS" = 1 ]; then problems+=("directory $STATE_DIR")
    else problems+=("directory $STATE_DIR (not removed: no .nsm-kube in it, so not made by kube-up.sh)"); fi
fi
[ "$KUBELET_OURS" = 0 ] || [ ! -e "$KUBELET_DIR" ] || problems+=("directory $KUBELET_DIR")
for id in $ids; do
    [ ! -e "$(shim_socket "$id")" ] || problems+=("socket $(shim_socket "$id")")
    for f in /sys/fs/cgroup/*/k8s.io/"$id" /var/lib/cni/results/cni-loopback-"$id"-*; do
        [ ! -e "$f" ] || problems+=("$f")
    done
done
[ "$RUN_CONTAINERD_EXISTED" = 1 ] || [ ! -e /run/containerd ] || problems+=("directory /run/containerd")
if [ "$CGROUP_K8S_EXISTED" = 0 ]; then
    for dir in /sys/fs/cgroup/*/k8s.io; do [ ! -d "$dir" ] || problems+=("cgroup $dir"); done
fi
if [ ${#problems[@]} -gt 0 ]; then
    echo "kube-down: left behind:" >&2
    printf '    %s\n' "${problems[@]}" >&2
    exit 1
fi
say "nothing left of the cluster ($((SECONDS - START)) s)"
