#!/usr/bin/env bash
# The seed's two-device example on this host, through the embedded control plane (run as root):
# device-1 (nsc-sidecar, eth12) <-> device-2 (nse-sidecar, eth21), /30 from IP_ADDRESS, ping both ways,
# then SIGTERM to the client and a check that both sides are gone. Leaves nothing behind.
# Secure, as by default: nsm-local hands each sidecar an X.509-SVID from its development Workload API (kept
# in the demo's own directory here, so that a running nsm-local or SPIRE agent is not disturbed).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${NSM_BIN:-$PWD/.venv/bin}"  # NSM_BIN: the programs of another install (tests/system/test_package.py)
WORK=$(mktemp -d /tmp/nsm-demo.XXXXXX)
SOCK="unix://$WORK/nsm.sock"
export SPIFFE_ENDPOINT_SOCKET="unix://$WORK/agent.sock"
NS1=demo-device-1 NS2=demo-device-2
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS1" 2>/dev/null || true
    ip netns del "$NS2" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "demo: timed out waiting for $what; logs in $WORK" >&2; tail -n 5 "$WORK"/*.log >&2; trap - EXIT; exit 1
}

ip netns add "$NS1"; ip netns add "$NS2"
step "nsm-local serve (registry + manager + kernel forwarder + SPIFFE Workload API) on $SOCK"
"$BIN/nsm-local" serve --listen "$SOCK" --state-dir "$WORK" --workload-api "$SPIFFE_ENDPOINT_SOCKET" \
    >"$WORK/nsm-local.log" 2>&1 & pids+=($!)
wait_for 10 "nsm-local" test -S "$WORK/nsm.sock"
step "nsm-local apply -f examples/p2p.yaml"
"$BIN/nsm-local" apply -f examples/p2p.yaml --connect-to "$SOCK"
step "nse-sidecar in $NS2: ENDPOINT_NETWORK_SERVICE=p2p ENDPOINT_LABELS=device=device-2 IP_ADDRESS=10.60.1.0/24"
ip netns exec "$NS2" env NSM_CONNECT_TO="$SOCK" ENDPOINT_NETWORK_SERVICE=p2p ENDPOINT_LABELS=device=device-2 \
    IP_ADDRESS=10.60.1.0/24 "$BIN/nse-sidecar" >"$WORK/nse.log" 2>&1 & pids+=($!)
step "nsc-sidecar in $NS1: NS_NETWORKSERVICEMESH_IO=p2p/eth12?link=net-0&peerif=eth21"
ip netns exec "$NS1" env NSM_CONNECT_TO="$SOCK" 'NS_NETWORKSERVICEMESH_IO=p2p/eth12?link=net-0&peerif=eth21' \
    NSM_READY_FILE="$WORK/ready" "$BIN/nsc-sidecar" >"$WORK/nsc.log" 2>&1 & nsc=$!; pids+=($nsc)
wait_for 20 "the link to be verified" test -f "$WORK/ready"
step "interfaces"
ip -n "$NS1" -br addr show eth12
ip -n "$NS2" -br addr show eth21
step "identities (mTLS with X.509-SVIDs, attested by network namespace and uid)"
grep -ho 'event=identity.ready spiffe_id=[^ ]*' "$WORK/nse.log" "$WORK/nsc.log" | sed 's/event=identity.ready /  /'
step "ping both ways"
ip netns exec "$NS1" ping -c2 -W1 10.60.1.2
ip netns exec "$NS2" ping -c2 -W1 10.60.1.1
step "nsm-local list"
"$BIN/nsm-local" list --connect-to "$SOCK"
step "SIGTERM to nsc-sidecar: both sides go"
kill -TERM "$nsc"; wait "$nsc"
wait_for 10 "eth21 to go" bash -c "! ip -n $NS2 link show eth21"
ip -n "$NS1" -br link; ip -n "$NS2" -br link
step "demo passed"
