#!/bin/bash
# PID 1 of the router image (images/frr.sh installs it as /usr/local/sbin/frr-start): starts FRR the way
# Debian's init script does (watchfrr, which starts and watches the daemons that /etc/frr/daemons enables,
# then loads the integrated /etc/frr/frr.conf), waits, and on SIGTERM or SIGINT stops every daemon and
# exits 0. It exits 1 if watchfrr dies, so that the kubelet restarts the container.
#
# /etc/frr/frr.conf, daemons and vtysh.conf may be read-only files (a ConfigMap's subPath mounts, as
# nsm-topo's manifests mount them): nothing here writes to /etc/frr when frr.conf exists.
#
# FRR's daemons raise NET_ADMIN, NET_RAW and SYS_ADMIN (zebra and ospfd exit at once without them, and
# the start would wait for them forever): the container needs all three, e.g. securityContext
# capabilities add [NET_ADMIN, NET_RAW, SYS_ADMIN], or privileged.
set -uo pipefail

PIDFILE=/run/frr/watchfrr.pid

# shellcheck disable=SC2317  # the TERM/INT trap calls it
stop() {
    echo "frr-start: stopping FRR"
    /usr/lib/frr/frrinit.sh stop
    exit 0
}
trap stop TERM INT

[ -r /etc/frr/daemons ] || { echo "frr-start: /etc/frr/daemons is missing" >&2; exit 1; }
# capability bits: NET_ADMIN 12, NET_RAW 13, SYS_ADMIN 21 (the bounding set is what a daemon can raise)
bounding=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
missing=()
for cap in NET_ADMIN:12 NET_RAW:13 SYS_ADMIN:21; do
    (( (16#${bounding:-0} >> ${cap#*:}) & 1 )) || missing+=("${cap%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "frr-start: FRR needs the capabilities NET_ADMIN, NET_RAW and SYS_ADMIN; this container lacks" \
        "${missing[*]} (securityContext.capabilities.add)" >&2
    exit 1
fi

# In the background and `wait`: bash runs the trap as soon as a signal arrives (a foreground command would
# delay it), also while the start is still waiting for the daemons, and reaps the daemons' orphans, as
# PID 1 must.
/usr/lib/frr/frrinit.sh start &
wait $! || { echo "frr-start: FRR did not start" >&2; exit 1; }
while [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; do
    sleep 5 &
    wait $!
done
echo "frr-start: watchfrr is gone" >&2
exit 1
