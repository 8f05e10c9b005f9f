#!/usr/bin/env bash
# Starts a local three-node cluster on 127.0.0.1.
#
#   scripts/start-cluster.sh [--base-port 7001] [--data-dir ./cluster-data] [--node N] [--tls]
#
# Builds the release binaries if they are missing, starts the nodes that are
# not running (all three, or only --node N) on their existing data, forms the
# cluster on its first start, and waits until a leader is elected and every
# node answers. Node N serves clients on base-port + N - 1 and its peers
# (Raft, and the membership calls of `kvctl member`) on base-port + 50 + N - 1,
# serves Prometheus metrics at http://127.0.0.1:<base-port + 100 + N - 1>/metrics,
# keeps its data in <data-dir>/nodeN, its PID in <data-dir>/nodeN.pid and its
# log in <data-dir>/nodeN.log. Stop with scripts/stop-cluster.sh. A data
# directory formed before peer ports existed keeps one port per node.
# --tls (on the cluster's first start; later starts keep it) writes a
# throwaway CA and certificates into <data-dir>/certs with `kvctl cert`:
# client ports serve TLS, peer ports require mutual TLS, and kvctl needs
# --ca <data-dir>/certs/ca.pem (plus --cert/--key admin.pem/admin.key on
# the peer ports).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base_port=7001
data_dir="$root/cluster-data"
only_node=""
want_tls=0
nodes=3
wait_seconds=30

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port="${2:?--base-port needs a value}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        --node) only_node="${2:?--node needs a value}"; shift 2 ;;
        --tls) want_tls=1; shift ;;
        -h|--help) usage ;;
        *) echo "start-cluster.sh: unknown option $1" >&2; usage ;;
    esac
done
case "$base_port" in ''|*[!0-9]*) echo "start-cluster.sh: --base-port must be a number" >&2; exit 2 ;; esac
if [ -n "$only_node" ] && ! [ "$only_node" -ge 1 -a "$only_node" -le "$nodes" ] 2>/dev/null; then
    echo "start-cluster.sh: --node must be 1..$nodes" >&2; exit 2
fi

bin_dir="${KV_BIN_DIR:-$root/target/release}"
if [ ! -x "$bin_dir/kv-node" ] || [ ! -x "$bin_dir/kvctl" ]; then
    echo "building release binaries (once)..."
    (cd "$root" && cargo build --release --locked -p raft-node -p kvctl)
fi

mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
port_of() { echo $((base_port + $1 - 1)); }
peer_port_of() { echo $((base_port + 50 + $1 - 1)); }
metrics_port_of() { echo $((base_port + 100 + $1 - 1)); }
# Metrics keep no state, so every node gets them whatever its data's age;
# only a kv-node built before --metrics-listen existed goes without.
metrics=0
# (The help is read whole first: with pipefail, grep -q closing the pipe
# early would fail the pipeline.)
case "$("$bin_dir/kv-node" --help 2>/dev/null || true)" in *--metrics-listen*) metrics=1 ;; esac

first_start=1
declare -a log_start
for n in $(seq 1 $nodes); do
    [ -d "$data_dir/node$n" ] && first_start=0
done
# The cluster's membership records each node's peer address when it is
# formed; a cluster formed without peer ports must keep serving Raft on its
# client ports, or its nodes could not reach each other.
peer_ports_marker="$data_dir/PEER_PORTS"
if [ "$first_start" = 1 ]; then touch "$peer_ports_marker"; fi
peer_ports=0
[ -e "$peer_ports_marker" ] && peer_ports=1
# TLS is chosen on the first start and kept: a node restarted without it
# could not talk to its peers.
tls_marker="$data_dir/TLS"
certs="$data_dir/certs"
if [ "$want_tls" = 1 ] && [ "$first_start" = 0 ] && [ ! -e "$tls_marker" ]; then
    echo "start-cluster.sh: $data_dir holds a cluster formed without TLS; use --tls with a new --data-dir" >&2
    exit 2
fi
if [ "$want_tls" = 1 ] && [ "$first_start" = 1 ]; then
    "$bin_dir/kvctl" cert --dir "$certs" --nodes "$nodes" --force >/dev/null
    touch "$tls_marker"
fi
tls=0
[ -e "$tls_marker" ] && tls=1
kvctl_tls=()
if [ "$tls" = 1 ]; then
    kvctl_tls=(--ca "$certs/ca.pem")
fi

peers=""
endpoints=""
peer_endpoints=""
for n in $(seq 1 $nodes); do
    if [ "$peer_ports" = 1 ]; then
        peers="${peers:+$peers,}$n=127.0.0.1:$(port_of "$n")/127.0.0.1:$(peer_port_of "$n")"
        peer_endpoints="${peer_endpoints:+$peer_endpoints,}127.0.0.1:$(peer_port_of "$n")"
    else
        peers="${peers:+$peers,}$n=127.0.0.1:$(port_of "$n")"
    fi
    endpoints="${endpoints:+$endpoints,}127.0.0.1:$(port_of "$n")"
done

. "$root/scripts/lib.sh"
is_running() { node_pidfile_alive "$data_dir/node$1.pid"; }

for n in $(seq 1 $nodes); do
    if [ -n "$only_node" ] && [ "$n" != "$only_node" ]; then continue; fi
    if is_running "$n"; then
        echo "node $n is already running (pid $(cat "$data_dir/node$n.pid"))"
        continue
    fi
    # Where this start's lines begin in the (appended) log.
    log_start[$n]=$(( $(stat -c %s "$data_dir/node$n.log" 2>/dev/null || echo 0) + 1 ))
    init=()
    if [ "$first_start" = 1 ] && [ "$n" = 1 ]; then init=(--init); fi
    peer_listen=()
    if [ "$peer_ports" = 1 ]; then peer_listen=(--peer-listen "127.0.0.1:$(peer_port_of "$n")"); fi
    metrics_listen=()
    if [ "$metrics" = 1 ]; then metrics_listen=(--metrics-listen "127.0.0.1:$(metrics_port_of "$n")"); fi
    node_tls=()
    if [ "$tls" = 1 ]; then
        node_tls=(--tls-cert "$certs/node$n.pem" --tls-key "$certs/node$n.key" --tls-ca "$certs/ca.pem")
    fi
    nohup "$bin_dir/kv-node" --id "$n" --listen "127.0.0.1:$(port_of "$n")" "${peer_listen[@]}" \
        "${metrics_listen[@]}" "${node_tls[@]}" \
        --data-dir "$data_dir/node$n" --peers "$peers" "${init[@]}" \
        >>"$data_dir/node$n.log" 2>&1 </dev/null &
    echo $! >"$data_dir/node$n.pid"
    started="${started:-} $n"
    if [ "$peer_ports" = 1 ]; then
        echo "started node $n (pid $!) on 127.0.0.1:$(port_of "$n"), peers on 127.0.0.1:$(peer_port_of "$n")"
    else
        echo "started node $n (pid $!) on 127.0.0.1:$(port_of "$n") (one port: formed before peer ports)"
    fi
done

echo "waiting for a leader..."
deadline=$((SECONDS + wait_seconds))
until "$bin_dir/kvctl" "${kvctl_tls[@]}" --endpoints "$endpoints" cluster status --require-leader >/dev/null 2>&1; do
    for n in $(seq 1 $nodes); do
        if ! is_running "$n"; then
            echo "node $n exited; last lines of $data_dir/node$n.log:" >&2
            tail -n 20 "$data_dir/node$n.log" >&2 || true
            exit 1
        fi
    done
    if [ $SECONDS -ge $deadline ]; then
        echo "no healthy cluster after ${wait_seconds}s; see $data_dir/node*.log" >&2
        exit 1
    fi
    sleep 0.2
done
# Whatever else holds a node's port could answer the status check in its
# place, so every node started here must also have logged that it serves.
for n in ${started:-}; do
    until tail -c +"${log_start[$n]}" "$data_dir/node$n.log" | grep -q ' serving '; do
        if ! is_running "$n"; then
            echo "node $n exited; last lines of $data_dir/node$n.log:" >&2
            tail -n 20 "$data_dir/node$n.log" >&2 || true
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "node $n did not start serving in ${wait_seconds}s; see $data_dir/node$n.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done

"$bin_dir/kvctl" "${kvctl_tls[@]}" --endpoints "$endpoints" cluster status
if [ "$tls" = 1 ]; then
    cat <<MSG

cluster is up, over TLS. Endpoints: $endpoints
  export KV_ENDPOINTS=$endpoints KV_CA=$certs/ca.pem
  $bin_dir/kvctl put hello world
  $bin_dir/kvctl get hello
MSG
else
    cat <<MSG

cluster is up. Endpoints: $endpoints
  export KV_ENDPOINTS=$endpoints
  $bin_dir/kvctl put hello world
  $bin_dir/kvctl get hello
MSG
fi
if [ "$metrics" = 1 ]; then
    echo "Metrics: curl -s 127.0.0.1:$(metrics_port_of 1)/metrics | grep kv_   (nodes 1..$nodes on $(metrics_port_of 1)..$(metrics_port_of "$nodes"))"
else
    echo "Metrics are off: $bin_dir/kv-node predates --metrics-listen (rebuild it)"
fi
if [ "$peer_ports" = 1 ] && [ "$tls" = 1 ]; then
    cat <<MSG
Membership changes go to the peer ports, with the admin certificate (mutual TLS):
  $bin_dir/kvctl --endpoints $peer_endpoints --ca $certs/ca.pem --cert $certs/admin.pem --key $certs/admin.key member add-learner ID HOST:PORT --peer-addr HOST:PORT
MSG
elif [ "$peer_ports" = 1 ]; then
    cat <<MSG
Membership changes go to the peer ports:
  $bin_dir/kvctl --endpoints $peer_endpoints member add-learner ID HOST:PORT --peer-addr HOST:PORT
MSG
fi
