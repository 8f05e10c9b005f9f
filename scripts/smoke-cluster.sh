#!/usr/bin/env bash
# End-to-end check of the cluster scripts and kvctl, on non-default ports:
# start three nodes, use all five operations, scrape each node's metrics,
# save and check a backup and restore it into a new node,
# SIGKILL the leader, check that
# writes go on and the old leader catches up after a restart, stop, clean.
# Then the same quickstart over TLS (start-cluster.sh --tls, on base-port +
# 200): writes and reads with --ca, a plaintext client refused, admin calls
# on the peer ports with the admin certificate only.
#
#   scripts/smoke-cluster.sh [--base-port 17001]
#
# Needs the release binaries (scripts/start-cluster.sh builds them if missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base_port=17001
if [ "${1:-}" = "--base-port" ]; then base_port="${2:?--base-port needs a value}"; fi
. "$root/scripts/lib.sh"
temp_cluster smoke "$base_port"

fail() { echo "smoke-cluster: FAILED: $*" >&2; tail -n 30 "$data_dir"/node*.log >&2 || true; exit 1; }
expect() { # expect <wanted> <command...>
    local want="$1"; shift
    local got
    got=$("$@") || fail "'$*' exited with $?"
    [ "$got" = "$want" ] || fail "'$*' printed '$got', wanted '$want'"
}

"$kvctl" put greeting hello >/dev/null
expect hello "$kvctl" get greeting
printf 'a\t1\nb\t2\nc\t3\n' | "$kvctl" batch-put - >/dev/null
expect "$(printf 'a\t1\nb\t2')" "$kvctl" range a c
"$kvctl" delete a >/dev/null
if "$kvctl" get a >/dev/null 2>&1; then fail "a deleted key is still readable"; fi

# Every node serves Prometheus metrics at base-port + 100 + N - 1; the
# leader counted the put above.
all_scraped=""
for n in 1 2 3; do
    scraped=$(curl -sf "127.0.0.1:$((base_port + 100 + n - 1))/metrics") || fail "node $n serves no metrics"
    case "$scraped" in *"kv_raft_term "*) ;; *) fail "node $n's metrics lack kv_raft_term" ;; esac
    all_scraped+="$scraped"$'\n'
done
grep -q '^kv_rpc_requests_total{method="Put",code="OK"} [1-9]' <<<"$all_scraped" || fail "no node counted an OK put"

# A backup, checked, restores into a new one-node cluster that serves it.
backup="$data_dir/backup.kvsnap"
"$kvctl" snapshot save "$backup" >/dev/null || fail "kvctl snapshot save failed"
"$kvctl" snapshot status "$backup" | grep -q '^checksums ok' || fail "kvctl snapshot status did not verify the backup"
restore_port=$((base_port + 90))
"${KV_BIN_DIR:-$root/target/release}/kv-node" --id 1 --listen "127.0.0.1:$restore_port" \
    --data-dir "$data_dir/restored" --init --peers "1=127.0.0.1:$restore_port" --restore "$backup" \
    >"$data_dir/restored.log" 2>&1 &
restored_pid=$!
trap 'kill -KILL "$restored_pid" 2>/dev/null || true; "$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --clean >/dev/null 2>&1 || true' EXIT
got=""
for _ in $(seq 1 100); do
    got=$("$kvctl" --endpoints "127.0.0.1:$restore_port" get greeting 2>/dev/null || true)
    [ "$got" = hello ] && break
    sleep 0.1
done
[ "$got" = hello ] || fail "a node restored from the backup does not serve its data ($(tail -n 5 "$data_dir/restored.log"))"
kill -TERM "$restored_pid"
wait "$restored_pid" || fail "the restored node did not stop cleanly"

# Membership calls are served on the peer ports (base-port + 50 + N - 1) only.
peer_endpoints="127.0.0.1:$((base_port + 50)),127.0.0.1:$((base_port + 51)),127.0.0.1:$((base_port + 52))"
refused=$("$kvctl" member remove 9 2>&1) && fail "a membership call on the client ports was served"
case "$refused" in *"peer port"*) ;; *) fail "a membership call on the client ports: '$refused'" ;; esac
refused=$("$kvctl" --endpoints "$peer_endpoints" member remove 9 2>&1) && fail "removing an unknown node succeeded"
case "$refused" in *"not a member"*) ;; *) fail "a membership call on the peer ports: '$refused'" ;; esac

leader=$("$kvctl" --output json cluster status | grep -o '"leader_id": *[0-9]*' | head -1 | grep -o '[0-9]*$')
[ -n "$leader" ] && [ "$leader" != 0 ] || fail "no leader in cluster status"
kill -KILL "$(cat "$data_dir/node$leader.pid")"
started=$(date +%s%N)
"$kvctl" put after-failover yes >/dev/null || fail "no write accepted after the leader was killed"
echo "smoke-cluster: first write after killing leader $leader took $(( ($(date +%s%N) - started) / 1000000 )) ms"

"$root/scripts/start-cluster.sh" --base-port "$base_port" --data-dir "$data_dir" --node "$leader" >/dev/null
for _ in $(seq 1 100); do
    got=$("$kvctl" --endpoints "127.0.0.1:$((base_port + leader - 1))" get --stale after-failover 2>/dev/null || true)
    [ "$got" = yes ] && break
    sleep 0.1
done
[ "$got" = yes ] || fail "the restarted node did not catch up"
"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" >/dev/null
for n in 1 2 3; do
    if [ -e "$data_dir/node$n.pid" ]; then fail "stop-cluster.sh left node $n's pid file"; fi
done
"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --clean >/dev/null 2>&1 || true

# The quickstart over TLS.
tls_port=$((base_port + 200))
data_dir=$(mktemp -d /tmp/kv-smoke-tls.XXXXXX)
trap '"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --clean >/dev/null 2>&1 || true' EXIT
"$root/scripts/start-cluster.sh" --base-port "$tls_port" --data-dir "$data_dir" --tls >/dev/null \
    || fail "start-cluster.sh --tls failed"
export KV_ENDPOINTS="127.0.0.1:$tls_port,127.0.0.1:$((tls_port + 1)),127.0.0.1:$((tls_port + 2))"
ca="$data_dir/certs/ca.pem"
"$kvctl" --ca "$ca" put greeting "over tls" >/dev/null || fail "a put over TLS failed"
expect "over tls" "$kvctl" --ca "$ca" get greeting
if "$kvctl" --timeout-ms 1000 get greeting >/dev/null 2>&1; then fail "a plaintext client was served by a TLS node"; fi
tls_peers="127.0.0.1:$((tls_port + 50))"
admin_tls=(--ca "$ca" --cert "$data_dir/certs/admin.pem" --key "$data_dir/certs/admin.key")
refused=$("$kvctl" --endpoints "$tls_peers" "${admin_tls[@]}" member remove 9 2>&1) && fail "removing an unknown node succeeded"
case "$refused" in *"not a member"*) ;; *) fail "a membership call with the admin certificate: '$refused'" ;; esac
refused=$("$kvctl" --endpoints "$tls_peers" --ca "$ca" --timeout-ms 1000 member remove 9 2>&1) \
    && fail "a peer port served a caller without a certificate"
case "$refused" in *"not a member"*) fail "a peer port served a caller without a certificate: '$refused'" ;; esac
"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" >/dev/null
echo "smoke-cluster: 1 passed, 0 failed"
