#!/bin/sh
# run-ha: a three-member etcd cluster and two meshca replicas on loopback,
# for trying high availability on one machine (README: High availability).
# Everything lives in $MESHCA_HA_DIR (default ./meshca-ha); run it again to
# start from the same state. Ctrl-C stops every process it started.
set -eu

BIN=${MESHCA:-bin/meshca}
ETCD=${ETCD:-etcd}
DIR=${MESHCA_HA_DIR:-meshca-ha}
PREFIX=/meshca
# etcd members: client and peer ports (not etcd's usual 2379/2380, so that
# an etcd already running here is left alone).
MEMBERS=${MESHCA_HA_MEMBERS:-"m1:12379:12380 m2:22379:22380 m3:32379:32380"}
# meshca replicas: name, admin API, xDS.
REPLICAS=${MESHCA_HA_REPLICAS:-"a:127.0.0.1:8000:127.0.0.1:6565 b:127.0.0.1:8100:127.0.0.1:6566"}

command -v "$ETCD" >/dev/null 2>&1 || { echo "run-ha: no etcd binary; run: make deps-etcd (Debian's etcd-server)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "run-ha: $BIN missing; run: make build" >&2; exit 1; }
mkdir -p "$DIR"
chmod 700 "$DIR"

PIDS=""
# stop ends the processes in the reverse order of their start: the meshca
# replicas while etcd still answers, then the etcd members.
stop() {
	trap - INT TERM EXIT
	rev=""
	for pid in $PIDS; do rev="$pid $rev"; done
	for pid in $rev; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	echo "run-ha: stopped (state kept in $DIR)"
}
trap stop INT TERM EXIT

# wait_for URL WHAT: until URL answers 200, at most 30s.
wait_for() {
	i=0
	until curl -fsS -o /dev/null "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -le 150 ] || { echo "run-ha: $2 not up after 30s; see $DIR/*.log" >&2; exit 1; }
		sleep 0.2
	done
}

cluster=""
ENDPOINTS=""
for m in $MEMBERS; do
	name=${m%%:*}; rest=${m#*:}; peer=${m##*:}
	cluster="$cluster${cluster:+,}$name=http://127.0.0.1:$peer"
	ENDPOINTS="$ENDPOINTS${ENDPOINTS:+,}127.0.0.1:${rest%%:*}"
done
for m in $MEMBERS; do
	name=${m%%:*}; rest=${m#*:}; client=${rest%%:*}; peer=${rest#*:}
	"$ETCD" --name "$name" --data-dir "$DIR/etcd-$name" \
		--listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
		--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token meshca-ha \
		--auto-compaction-mode periodic --auto-compaction-retention 1h \
		>"$DIR/etcd-$name.log" 2>&1 &
	PIDS="$PIDS $!"
	echo "run-ha: etcd member $name (pid $!) client 127.0.0.1:$client, log $DIR/etcd-$name.log"
done
for m in $MEMBERS; do
	rest=${m#*:}
	wait_for "http://127.0.0.1:${rest%%:*}/health" "etcd member ${m%%:*}"
done

first=""
admins=""
for r in $REPLICAS; do
	name=${r%%:*}; rest=${r#*:}
	admin=$(echo "$rest" | cut -d: -f1-2); xds=$(echo "$rest" | cut -d: -f3-4)
	data="$DIR/meshca-$name"
	mkdir -p "$data"
	chmod 700 "$data"
	# Every replica needs the key-encryption key of the first one.
	if [ -n "$first" ] && [ ! -f "$data/kek" ]; then
		cp "$first/kek" "$data/kek"
		chmod 600 "$data/kek"
	fi
	"$BIN" server --data-dir "$data" --admin-listen "$admin" --xds-listen "$xds" \
		--etcd-endpoints "$ENDPOINTS" --etcd-prefix "$PREFIX" \
		>"$DIR/meshca-$name.log" 2>&1 &
	PIDS="$PIDS $!"
	wait_for "http://$admin/readyz" "meshca replica $name"
	echo "run-ha: meshca replica $name (pid $!) admin $admin, xds $xds, log $DIR/meshca-$name.log"
	[ -n "$first" ] || first=$data
	admins="$admins $admin"
done

set -- $admins
echo "run-ha: ready. Try:"
echo "  $BIN --admin $1 identity add web    # through replica a"
echo "  $BIN --admin $2 identity show web   # seen through replica b"
echo "run-ha: Ctrl-C stops everything."
wait
