#!/usr/bin/env bash
# The seed's demo on this host (run as root): a random network of 10 FRR routers running OSPF, every link a
# point-to-point NSM connection made by the sidecars through nsm-local (secure: SPIFFE identities, mTLS).
# nsm-topo writes the topology, brings the lab up, shows it, pings every router's loopback from the first,
# and takes it all down again, checking that nothing is left.
#   scripts/demo.sh [ROUTERS [EXTRA_LINKS]] [--keep]     (--keep: leave the lab up and say how to use it)
# The lab gets its own nsm-local, sockets and state in a temporary directory, so a running nsm-local,
# SPIRE agent or other lab is not disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."
TOPO="$PWD/.venv/bin/nsm-topo"
routers=10 extra=4 keep=0 positional=()
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) positional+=("$arg") ;;
    esac
done
[ ${#positional[@]} -ge 1 ] && routers=${positional[0]}
[ ${#positional[@]} -ge 2 ] && extra=${positional[1]}

WORK=$(mktemp -d /tmp/nsm-topo-demo.XXXXXX)
export NSM_CONNECT_TO="unix://$WORK/nsm.sock" SPIFFE_ENDPOINT_SOCKET="unix://$WORK/agent.sock"
export NSM_TOPO_STATE_DIR="$WORK/state"
FILE="$WORK/demo.yml"
cleanup() {
    "$TOPO" down "$FILE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "nsm-topo random $routers $extra: $routers routers, a spanning tree plus $extra links, FRR/OSPF configs"
"$TOPO" random "$routers" "$extra" --seed 2020 --name demo -o "$WORK"
step "nsm-topo up: namespaces, nsm-local, sidecars, FRR"
"$TOPO" up "$FILE"
step "nsm-topo status"
"$TOPO" status "$FILE"
step "nsm-topo check: OSPF converges, every loopback answers"
"$TOPO" check "$FILE"
first=$(sed -n 's/^  - \([^:]*\):.*/\1/p' "$FILE" | head -n 1)
step "nsm-topo exec $first -- vtysh: the routes OSPF learned over the NSM links"
"$TOPO" exec "$FILE" "$first" -- vtysh -c "show ip route ospf" | grep "^O"

if [ "$keep" = 1 ]; then
    trap - EXIT
    step "the lab stays up; with these settings"
    echo "  export NSM_CONNECT_TO=$NSM_CONNECT_TO SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET"
    echo "  export NSM_TOPO_STATE_DIR=$NSM_TOPO_STATE_DIR PATH=$PWD/.venv/bin:\$PATH"
    echo "try"
    echo "  nsm-topo status $FILE"
    echo "  nsm-topo exec $FILE $first -- vtysh"
    echo "  nsm-topo down $FILE && rm -rf $WORK"
    exit 0
fi
step "nsm-topo down: nothing is left"
"$TOPO" down "$FILE"
left=$(ip netns list | grep -c '^demo-' || true)
if [ "$left" != 0 ] || pgrep -f "$WORK" >/dev/null; then
    echo "demo: the lab left $left namespaces or processes behind" >&2; exit 1
fi
echo "no namespaces, processes or interfaces left"
step "demo passed"
