#!/usr/bin/env bash
# Start a one-node Kubernetes v1.34.4 cluster on this host, for tests and to try nsm-topo's manifests
# without a cloud (docs/kubernetes.md): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd and the kubelet run as plain processes (no systemd, no kind), pods get addresses from a CNI
# bridge. Run as root; scripts/kube-down.sh removes all of it again.
#
#   scripts/kube-up.sh [--state-dir DIR] [--kubelet-dir DIR] [--timeout SECONDS] [--skip-images]
#
#   --state-dir DIR    everything of the cluster: configuration, keys, etcd's data, containerd's images and
#                      state, logs (DIR/logs/) and the kubeconfig (DIR/kubeconfig). Default /var/lib/nsm-kube,
#                      or NSM_KUBE_STATE_DIR. On tmpfs (/dev/shm/nsm-kube: about 1.1 GB of RAM) the start
#                      takes about half as long: most of it is writing the images into containerd
#   --kubelet-dir DIR  the kubelet's root directory, default /var/lib/kubelet, where DaemonSets such as CSI
#                      drivers expect it (it must not belong to another kubelet); removed by kube-down.sh
#   --timeout SECONDS  how long to wait for the node to be Ready and the default ServiceAccount (default 120)
#   --skip-images      do not build or import the project's images (the pause image is always imported)
#
# What it does: installs what is missing with apt (etcd-server, containerd, containernetworking-plugins,
# openssl, busybox-static), builds the Kubernetes programs (scripts/build-kube.sh; cached), makes the keys,
# starts every component, waits until the node is Ready and the default ServiceAccount exists, and imports
# into containerd (namespace k8s.io) the images pods here run with imagePullPolicy Never or IfNotPresent:
# the sidecar images images/build.sh makes (localhost/nsc-sidecar, nse-sidecar and nsm-local, tagged with
# the project version; rebuilt first if their sources changed), localhost/nsm-frr:bookworm (images/frr.sh),
# localhost/nsm-busybox:latest (images/busybox.sh) and the pause image (images/pause.sh). Nothing is
# pulled from a registry.
# Idempotent: when the cluster is up it says so, imports images that changed and exits 0.
# Addresses: the API server and the node on 10.99.0.1 (a veth to the namespace nsm-kube), pods
# 10.99.16.0/20 on the bridge nsmkube-br0, services 10.99.32.0/24. Exit 1 on failure, naming the log to read.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

STATE_DIR=${NSM_KUBE_STATE_DIR:-/var/lib/nsm-kube}
KUBELET_DIR=/var/lib/kubelet
TIMEOUT=120
SKIP_IMAGES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) STATE_DIR=${2:?--state-dir needs a directory}; shift 2 ;;
        --kubelet-dir) KUBELET_DIR=${2:?--kubelet-dir needs a directory}; shift 2 ;;
        --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
        --skip-images) SKIP_IMAGES=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "kube-up: unknown argument: $1 (--help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "kube-up: run as root (network namespaces, mounts, containers)" >&2; exit 2; }
case "$TIMEOUT" in ''|*[!0-9]*) echo "kube-up: --timeout takes whole seconds" >&2; exit 2 ;; esac
STATE_DIR=$(realpath -m "$STATE_DIR")
KUBELET_DIR=$(realpath -m "$KUBELET_DIR")
# kube-down.sh deletes the state directory: only one that is new, empty or marked as ours is taken, and
# only root's (it will hold the cluster's keys; think of /dev/shm, where anyone may make a directory)
if [ -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ] && [ ! -e "$STATE_DIR/.nsm-kube" ]; then
    echo "kube-up: $STATE_DIR is not empty and not a state directory of kube-up.sh; choose another" >&2
    exit 2
fi
if [ -e "$STATE_DIR" ] && { [ -L "$STATE_DIR" ] || [ "$(stat -c %u "$STATE_DIR")" != 0 ]; }; then
    echo "kube-up: $STATE_DIR is a symbolic link or not root's; choose another" >&2
    exit 2
fi
mkdir -p "$STATE_DIR"
touch "$STATE_DIR/.nsm-kube"

# ---- the cluster's names and addresses (scripts/kube-down.sh reads them from $STATE_DIR/cluster.env) -----
NODE_NAME=nsm-kube
NETNS=nsm-kube                 # scratch namespace at the other end of the API server's veth
HOST_VETH=nsmkube-api          # host end: NODE_IP, the API server's and the kubelet's address
PEER_VETH=nsmkube-peer
NODE_IP=10.99.0.1
PEER_IP=10.99.0.2
CNI_NETWORK=nsm-kube
BRIDGE=nsmkube-br0
POD_CIDR=10.99.16.0/20
POD_GATEWAY=10.99.16.1
SERVICE_CIDR=10.99.32.0/24
SERVICE_IP=10.99.32.1          # the `kubernetes` Service
SVC_CHAIN=NSMKUBE-SERVICES     # nat chain: SERVICE_IP:443 -> the API server (no kube-proxy here)
ETCD_PORT=12379                # not etcd's 2379, so that a distribution etcd cannot answer instead
ETCD_PEER_PORT=12380
API_PORT=6443
PAUSE_IMAGE=localhost/nsm-pause:latest
FRR_IMAGE=localhost/nsm-frr:bookworm
BUSYBOX_IMAGE=localhost/nsm-busybox:latest  # images/busybox.sh: hosts (nsm-topo --host-image)

LOGS=$STATE_DIR/logs
RUN=$STATE_DIR/run
PKI=$STATE_DIR/pki
KUBECONFIG_FILE=$STATE_DIR/kubeconfig
CTR_ROOT=$STATE_DIR/containerd
CTR_SOCK=$CTR_ROOT/containerd.sock
KUBE_BIN=${KUBE_BUILD_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/nsm-topology-sidecars/kube-build}/bin  # build-kube.sh's
case "$KUBE_BIN" in /*) ;; *) KUBE_BIN=$ROOT/$KUBE_BIN ;; esac
KUBECTL=$KUBE_BIN/kubectl
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet)
[ ${#CTR_SOCK} -lt 100 ] || { echo "kube-up: --state-dir is too long for containerd's socket path" >&2; exit 2; }

START=$SECONDS
say() { echo "==> $*"; }
elapsed() { echo "$((SECONDS - START)) s"; }

exec 8>"$STATE_DIR/.lock"  # one kube-up or kube-down at a time for this state directory
flock -n 8 || { echo "kube-up: another kube-up or kube-down is running for $STATE_DIR" >&2; exit 1; }

# ---- processes: started with setsid (their own session: a terminal's ^C or a CI step's end leaves them),
# output in $LOGS/<name>.log, pid in $RUN/<name>.pid --------------------------------------------------------
binary_of() {
    case "$1" in
        etcd) echo /usr/bin/etcd ;;
        containerd) command -v containerd || echo /usr/bin/containerd ;;
        *) echo "$KUBE_BIN/$1" ;;
    esac
}
alive() {  # alive NAME: its pid file names a live process running its binary
    local pid exe
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "$(basename "${exe% (deleted)}")" = "$(basename "$(binary_of "$1")")" ]
}
start() {  # start NAME ARGS...
    local name=$1
    shift
    # 8>&-: not the lock (a daemon holding it would block every later kube-up and kube-down)
    setsid "$(binary_of "$name")" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
    echo $! > "$RUN/$name.pid"
}
log_tail() {  # log_tail NAME: the end of a component's log, for error messages
    echo "---- last lines of $LOGS/$1.log:" >&2
    tail -n 25 "$LOGS/$1.log" >&2 2>/dev/null || true
    echo "----" >&2
}
fail() {  # fail COMPONENT MESSAGE: the message, the log to read and its end; exit 1
    echo "kube-up: $2 (log: $LOGS/$1.log)" >&2
    log_tail "$1"
    echo "kube-up: the cluster is left as it is for a look; scripts/kube-down.sh removes it" >&2
    exit 1
}
check_alive() {  # every component started so far still runs, else fail naming the first one that died
    local name
    for name in "${COMPONENTS[@]}"; do
        [ ! -e "$RUN/$name.pid" ] || alive "$name" || fail "$name" "$name exited"
    done
}
kc() { KUBECONFIG=$KUBECONFIG_FILE "$KUBECTL" --request-timeout=5s "$@"; }
ctr_k8s() { ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }

# ---- images: built with podman if their sources changed, imported into containerd if podman's differ ------
# $STATE_DIR/images/<name>.id remembers the podman image id last imported, so reruns import only changes.
project_version() {
    "${PYTHON:-python3}" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$ROOT/pyproject.toml"
}
import_pause() {
    local archive
    archive=$(bash "$ROOT/images/pause.sh" 2>>"$LOGS/images.log")
    ctr_k8s images import "$archive" >>"$LOGS/images.log" 2>&1
}
image_record() { echo "$STATE_DIR/images/$(echo "$1" | tr '/:' '__').id"; }
import_podman_images() {  # import_podman_images NAME...: those whose podman image changed, in one archive
    local name id changed=() ids=() t=$SECONDS i
    for name in "$@"; do
        id=$(podman image inspect --format '{{.Id}}' "$name") || { echo "no image $name in podman"; return 1; }
        if [ "$(cat "$(image_record "$name")" 2>/dev/null)" = "$id" ] \
            && ctr_k8s images ls -q "name==$name" | grep -q .; then
            echo "current: $name"
        else
            changed+=("$name")
            ids+=("$id")
        fi
    done
    [ ${#changed[@]} -gt 0 ] || return 0
    # one docker-archive holds the layers the images share only once (the sidecars share their base).
    # podman's temporary files in the state directory: an interrupted save leaves them in /var/tmp otherwise
    mkdir -p "$STATE_DIR/images/tmp"
    TMPDIR="$STATE_DIR/images/tmp" podman save --multi-image-archive --format docker-archive "${changed[@]}" \
        | ctr_k8s images import - || { echo "importing ${changed[*]} failed"; return 1; }
    for i in "${!changed[@]}"; do
        echo "${ids[$i]}" > "$(image_record "${changed[$i]}")"
        echo "imported: ${changed[$i]} ($((SECONDS - t)) s)"
    done
}
prepare_images() {  # build what changed (podman), wait for containerd, import; output: $LOGS/images.log
    local tag python=python3 t=$SECONDS
    [ -x "$ROOT/.venv/bin/python" ] && python=$ROOT/.venv/bin/python  # what scripts/setup.sh builds with
    tag=$(PYTHON=$python project_version)
    local images=("localhost/nsc-sidecar:$tag" "localhost/nse-sidecar:$tag" "localhost/nsm-local:$tag" "$FRR_IMAGE"
                  "$BUSYBOX_IMAGE")
    echo "building the images that changed (images/build.sh --local-base --if-changed, frr.sh, busybox.sh)"
    # the same arguments as scripts/setup.sh, so that both see the same images as current
    PYTHON=$python bash "$ROOT/images/build.sh" --local-base --if-changed \
        || { echo "images/build.sh failed"; return 1; }
    bash "$ROOT/images/frr.sh" || { echo "images/frr.sh failed"; return 1; }
    bash "$ROOT/images/busybox.sh" || { echo "images/busybox.sh failed"; return 1; }
    echo "images ready ($((SECONDS - t)) s)"
    local waited=0
    until ctr_k8s version >/dev/null 2>&1; do
        sleep 0.5; waited=$((waited + 1))
        [ "$waited" -lt 120 ] || { echo "containerd does not answer"; return 1; }
    done
    mkdir -p "$STATE_DIR/images"
    # two streams side by side (about twice as fast here as one): the sidecars, which share their layers,
    # and the router and busybox images
    import_podman_images "${images[@]:0:3}" > "$STATE_DIR/images/sidecars.out" 2>&1 &
    local sidecars=$!
    import_podman_images "${images[@]:3}" || { wait "$sidecars" || true; cat "$STATE_DIR/images/sidecars.out"; return 1; }
    wait "$sidecars" || { cat "$STATE_DIR/images/sidecars.out"; return 1; }
    cat "$STATE_DIR/images/sidecars.out"
    echo "done ($((SECONDS - t)) s)"
}
images_job=""
start_images() {
    [ "$SKIP_IMAGES" = 0 ] || return 0
    command -v podman >/dev/null || {
        echo "kube-up: podman is needed to build the images (scripts/setup.sh installs it), or --skip-images" >&2
        exit 1; }
    say "images: building what changed and importing into containerd in the background (log: $LOGS/images.log)"
    set -m  # a process group of its own: a kube-up that fails or is interrupted stops all of it
    prepare_images </dev/null >>"$LOGS/images.log" 2>&1 &
    images_job=$!
    set +m
}
stop_images() { [ -z "$images_job" ] || kill -- "-$images_job" 2>/dev/null || true; }
trap stop_images EXIT
finish_images() {
    [ -n "$images_job" ] || return 0
    local t=$SECONDS
    if ! wait "$images_job"; then
        images_job=""
        echo "kube-up: the images could not be built or imported (log: $LOGS/images.log)" >&2
        tail -n 25 "$LOGS/images.log" >&2
        exit 1
    fi
    images_job=""
    say "images in containerd (waited $((SECONDS - t)) s for them):"
    grep -E '^(imported|current): ' "$LOGS/images.log" | tail -n 5 | sed 's/^/    /'
    say "images done ($(elapsed))"
}

# ---- waiting ----------------------------------------------------------------------------------------------
wait_for() {  # wait_for COMPONENT WHAT COMMAND...: until COMMAND succeeds; progress every 10 s; timeout
    local component=$1 what=$2 deadline=$((SECONDS + TIMEOUT)) next=$((SECONDS + 10))
    shift 2
    until "$@" >/dev/null 2>&1; do
        check_alive
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$component" "no $what after ${TIMEOUT} s"
        fi
        if [ "$SECONDS" -ge "$next" ]; then
            say "still waiting for $what ($(elapsed); log: $LOGS/$component.log)"
            next=$((SECONDS + 10))
        fi
        sleep 0.5
    done
}
node_ready() {
    [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_ready() {
    wait_for kube-apiserver "API server" kc get --raw /readyz
    say "API server ready at https://$NODE_IP:$API_PORT ($(elapsed))"
    wait_for kubelet "node $NODE_NAME" kc get node "$NODE_NAME"
    wait_for kubelet "Ready node" node_ready
    say "node $NODE_NAME Ready ($(elapsed))"
    wait_for kube-controller-manager "default ServiceAccount" kc -n default get serviceaccount default
    say "default ServiceAccount exists ($(elapsed))"
}
print_usage() {
    echo "==> kubeconfig: $KUBECONFIG_FILE (kubectl $("$KUBECTL" version --client 2>/dev/null | head -n1 \
        | sed 's/.*: //'): $STATE_DIR/bin/kubectl)"
    echo "    export KUBECONFIG=$KUBECONFIG_FILE PATH=$STATE_DIR/bin:\$PATH"
    echo "    logs: $LOGS/; stop and clean up: scripts/kube-down.sh${STATE_ARG:-}"
}
STATE_ARG=""
[ "$STATE_DIR" = /var/lib/nsm-kube ] || STATE_ARG=" --state-dir $STATE_DIR"

# ---- already up? -------------------------------------------------------------------------------------------
mkdir -p "$LOGS" "$RUN"
running=() stopped=()
for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then running+=("$name"); else stopped+=("$name"); fi
done
if [ ${#stopped[@]} = 0 ]; then
    say "the cluster in $STATE_DIR is already up ($(kc get node "$NODE_NAME" --no-headers 2>/dev/null \
        | awk '{print $1 " " $2}' || echo "node not registered yet"))"
    start_images
    wait_ready
    finish_images
    print_usage
    exit 0
fi
if [ ${#running[@]} -gt 0 ]; then
    echo "kube-up: the cluster in $STATE_DIR is partly up: ${stopped[*]} not running (logs: $LOGS/)." >&2
    echo "kube-up: scripts/kube-down.sh${STATE_ARG} removes what is left, then run kube-up.sh again" >&2
    exit 1
fi
if [ -e "$STATE_DIR/cluster.env" ] || [ -e "$KUBELET_DIR/.nsm-kube" ] || [ -e "/run/netns/$NETNS" ] \
    || ip link show "$BRIDGE" >/dev/null 2>&1 || ip link show "$HOST_VETH" >/dev/null 2>&1; then
    say "leftovers of an earlier cluster: cleaning up with scripts/kube-down.sh first"
    flock -u 8
    bash "$ROOT/scripts/kube-down.sh" --state-dir "$STATE_DIR" --kubelet-dir "$KUBELET_DIR"
    mkdir -p "$STATE_DIR"
    touch "$STATE_DIR/.nsm-kube"
    exec 8>"$STATE_DIR/.lock"
    flock -n 8 || { echo "kube-up: another kube-up or kube-down is running for $STATE_DIR" >&2; exit 1; }
    mkdir -p "$LOGS" "$RUN"
    START=$SECONDS
fi
if [ -n "$(ls -A "$KUBELET_DIR" 2>/dev/null)" ] && [ ! -e "$KUBELET_DIR/.nsm-kube" ]; then
    echo "kube-up: $KUBELET_DIR is not empty and not this script's (another kubelet?); --kubelet-dir DIR" >&2
    exit 1
fi
if [ -n "$(ip -4 route show root 10.99.0.0/16)" ]; then
    echo "kube-up: this host routes addresses of 10.99.0.0/16 already (the cluster needs them):" >&2
    ip -4 route show root 10.99.0.0/16 >&2
    exit 1
fi

rm -f "$LOGS"/*.log "$RUN"/*.pid  # of an earlier start that failed early

# ---- 1. packages and programs -------------------------------------------------------------------------------
need_apt=()
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)  # brings runc
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)  # the bridge plugin's masquerading
{ command -v busybox >/dev/null 2>&1 && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } \
    || need_apt+=(busybox-static)  # the pause image
if [ ${#need_apt[@]} -gt 0 ]; then
    t=$SECONDS
    say "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    say "installed ($((SECONDS - t)) s)"
fi
bash "$ROOT/scripts/build-kube.sh"

# the images need no cluster: build them while it starts
: > "$LOGS/images.log"
start_images

# ---- 2. keys and certificates (EC P-256; a fresh set for every cluster) --------------------------------------
say "keys, configuration and network ($STATE_DIR)"
mkdir -p "$PKI" "$STATE_DIR/bin" "$STATE_DIR/images" "$KUBELET_DIR"
chmod 700 "$PKI"
ln -sf "$KUBECTL" "$STATE_DIR/bin/kubectl"
touch "$KUBELET_DIR/.nsm-kube"
cert() {  # cert NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt, signed by the cluster's CA
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$PKI/$1.key" \
        -subj "$2" -out "$PKI/$1.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
        -extfile <(printf '%s\n' "$3") -out "$PKI/$1.crt" 2>/dev/null
    rm -f "$PKI/$1.csr"
}
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$PKI/ca.key" \
    -subj "/CN=nsm-kube-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:$NODE_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:localhost,\
DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
# the API server's client certificate towards the kubelet (exec, logs, port-forward)
cert kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
# bearer tokens: an admin, and one per component, all in system:masters (a test cluster)
: > "$PKI/tokens.csv"
kubeconfig() {  # kubeconfig FILE USER GROUPS: a token for USER and a kubeconfig with it
    local token
    token=$(openssl rand -hex 24)
    echo "$token,$2,$2,\"$3\"" >> "$PKI/tokens.csv"
    cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nsm-kube
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $2
  user:
    token: $token
contexts:
- name: nsm-kube
  context: {cluster: nsm-kube, user: $2}
current-context: nsm-kube
EOF
    chmod 600 "$1"
}
kubeconfig "$KUBECONFIG_FILE" admin system:masters
kubeconfig "$PKI/controller-manager.kubeconfig" system:kube-controller-manager system:masters
kubeconfig "$PKI/scheduler.kubeconfig" system:kube-scheduler system:masters
kubeconfig "$PKI/kubelet.kubeconfig" "system:node:$NODE_NAME" "system:nodes,system:masters"

# ---- 3. what kube-down.sh needs to know ---------------------------------------------------------------------
cat > "$STATE_DIR/cluster.env" <<EOF
# written by scripts/kube-up.sh; read by scripts/kube-down.sh
KUBELET_DIR=$KUBELET_DIR
NETNS=$NETNS
HOST_VETH=$HOST_VETH
BRIDGE=$BRIDGE
CNI_NETWORK=$CNI_NETWORK
CTR_SOCK=$CTR_SOCK
IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
RUN_CONTAINERD_EXISTED=$([ -e /run/containerd ] && echo 1 || echo 0)
VAR_LOG_CONTAINERS_EXISTED=$([ -e /var/log/containers ] && echo 1 || echo 0)
CGROUP_K8S_EXISTED=$({ compgen -G '/sys/fs/cgroup/*/k8s.io' || [ -d /sys/fs/cgroup/k8s.io ]; } >/dev/null && echo 1 || echo 0)
EOF

# ---- 4. the node's address: the host end of a veth into a scratch namespace ------------------------------
ip netns add "$NETNS"
ip link add "$HOST_VETH" type veth peer name "$PEER_VETH" netns "$NETNS"
ip addr add "$NODE_IP/24" dev "$HOST_VETH"
ip -n "$NETNS" addr add "$PEER_IP/24" dev "$PEER_VETH"
ip -n "$NETNS" link set lo up
ip -n "$NETNS" link set "$PEER_VETH" up
ip link set "$HOST_VETH" up
# The one Service pods need, `kubernetes` (in-cluster clients such as nsm-local's DaemonSet dial
# $SERVICE_IP:443), without kube-proxy: a DNAT to the API server, for the host (hostNetwork pods: OUTPUT)
# and for pods on the bridge (PREROUTING). Without it that address leaves by the default route.
iptables -t nat -N "$SVC_CHAIN" 2>/dev/null || iptables -t nat -F "$SVC_CHAIN"
iptables -t nat -A "$SVC_CHAIN" -d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT"
iptables -t nat -I OUTPUT 1 -j "$SVC_CHAIN"
iptables -t nat -I PREROUTING 1 -j "$SVC_CHAIN"

# ---- 5. configuration files -------------------------------------------------------------------------------
mkdir -p "$CTR_ROOT" "$STATE_DIR/cni/net.d" "$STATE_DIR/cni/ipam" "$STATE_DIR/etcd" "$STATE_DIR/pod-logs"
chmod 700 "$STATE_DIR/etcd"
cat > "$CTR_ROOT/config.toml" <<EOF
# containerd 1.6 for scripts/kube-up.sh: its own root, state and socket; CRI for the kubelet
version = 2
root = "$CTR_ROOT/root"
state = "$CTR_ROOT/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CTR_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTR_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here may not lower oom_score_adj: without this, sandboxes fail with
  # "can't get final child's PID from pipe: EOF"
  restrict_oom_score_adj = true
  # pods' network namespaces under our state directory, not /run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CTR_ROOT/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/net.d"
EOF
cat > "$STATE_DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE_DIR/cni/ipam"
      }
    }
  ]
}
EOF
cat > "$STATE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://$CTR_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
# no systemd, hybrid cgroups, root without CAP_SYS_RESOURCE: no QoS cgroups, no node allocatable enforcement
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
podLogsDir: $STATE_DIR/pod-logs
# images are imported, never pulled: never garbage-collect them, and no eviction for a full disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
makeIPTablesUtilChains: false
EOF

# ---- 6. start: etcd and containerd, the API server, then the rest ------------------------------------------
say "starting etcd, containerd and kube-apiserver ($(elapsed))"
start etcd --name "$NODE_NAME" --data-dir "$STATE_DIR/etcd" --logger zap --log-level warn \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT"
start containerd --config "$CTR_ROOT/config.toml"
start kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode RBAC --allow-privileged=true \
    --kubelet-client-certificate "$PKI/kubelet-client.crt" --kubelet-client-key "$PKI/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
# the kubelet needs containerd, and the sandbox image in it, before it starts
wait_for containerd "answer from containerd" ctr_k8s version
import_pause 2>&1 || fail images "importing the pause image $PAUSE_IMAGE failed"
say "containerd up, $PAUSE_IMAGE imported; starting kubelet, kube-controller-manager, kube-scheduler ($(elapsed))"
start kubelet --config "$STATE_DIR/kubelet.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --root-dir "$KUBELET_DIR" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
start kube-controller-manager --kubeconfig "$PKI/controller-manager.kubeconfig" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 --profiling=false
start kube-scheduler --kubeconfig "$PKI/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 --profiling=false

# ---- 7. wait until it can run pods, and for the images ------------------------------------------------------
wait_ready
finish_images
say "cluster up in $(elapsed)"
print_usage
