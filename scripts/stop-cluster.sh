#!/usr/bin/env bash
# Stops the local cluster started by scripts/start-cluster.sh.
#
#   scripts/stop-cluster.sh [--data-dir ./cluster-data] [--node N] [--clean]
#
# Sends SIGTERM to each node's PID (from <data-dir>/nodeN.pid), waits up to
# 10 s, then SIGKILLs what is left. --clean also removes the data directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
data_dir="$root/cluster-data"
only_node=""
clean=0
grace_seconds=10
. "$root/scripts/lib.sh"

while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        --node) only_node="${2:?--node needs a value}"; shift 2 ;;
        --clean) clean=1; shift ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "stop-cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

[ -d "$data_dir" ] || { echo "no cluster data at $data_dir"; exit 0; }

for pidfile in "$data_dir"/node*.pid; do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    if [ -n "$only_node" ] && [ "$name" != "node$only_node" ]; then continue; fi
    pid=$(cat "$pidfile")
    if node_pid_alive "$pid"; then
        kill -TERM "$pid"
        deadline=$((SECONDS + grace_seconds))
        while node_pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        if node_pid_alive "$pid"; then
            echo "$name (pid $pid) did not stop in ${grace_seconds}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done

if [ "$clean" = 1 ]; then
    rm -rf "$data_dir"
    echo "removed $data_dir"
fi
