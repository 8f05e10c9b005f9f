# Sourced by the cluster scripts: shared helpers.

# --- Is a node process, named by its PID file, still alive? ---
#
# `kill -0` alone is not enough. A node killed with SIGKILL stays a zombie
# until its parent reaps it, and the nodes these scripts start are orphans
# whose new parent (PID 1 of a container, a CI runner) may reap late or
# never. A zombie holds no ports and no files, so for us it is dead. A PID
# file may also outlive its process and name a PID the kernel has reused, so
# the process must also be a kv-node (or the nohup about to become one).

# node_pid_alive PID: true if PID is a live (not zombie) kv-node process.
node_pid_alive() {
    local pid="$1" stat
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # Field 3 (state) follows the parenthesised command name.
    case "${stat##*) }" in Z*|X*) return 1 ;; esac
    case "$stat" in *"(kv-node)"*|*"(nohup)"*) return 0 ;; *) return 1 ;; esac
}

# node_pidfile_alive FILE: true if FILE exists and names a live kv-node.
node_pidfile_alive() {
    [ -f "$1" ] && node_pid_alive "$(cat "$1" 2>/dev/null)"
}

# --- A throwaway cluster for the test and benchmark scripts ---

# temp_cluster NAME BASE_PORT: starts a three-node cluster on BASE_PORT..+2
# in a new /tmp/kv-NAME.* directory, removed (nodes stopped) when the script
# exits. Sets data_dir and kvctl, and exports KV_ENDPOINTS. Needs $root.
temp_cluster() {
    data_dir=$(mktemp -d "/tmp/kv-$1.XXXXXX")
    kvctl="${KV_BIN_DIR:-$root/target/release}/kvctl"
    export KV_ENDPOINTS="127.0.0.1:$2,127.0.0.1:$(($2 + 1)),127.0.0.1:$(($2 + 2))"
    trap '"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --clean >/dev/null 2>&1 || true' EXIT
    "$root/scripts/start-cluster.sh" --base-port "$2" --data-dir "$data_dir" >/dev/null
}

# leader_node BASE_PORT: the number (1..3) of the node of a temp_cluster that
# leads, from `kvctl cluster status`. Needs $kvctl.
leader_node() {
    local port
    port=$("$kvctl" --output json cluster status | sed -n 's/.*"leader_addr": *"[^"]*:\([0-9]*\)".*/\1/p' | head -n 1)
    echo $((port - $1 + 1))
}

# --- Memory cgroups for the larger-than-memory benchmarks (root only) ---

# memory_cgroups_init: finds the memory controller (cgroup v1 `memory` or
# v2) and sets cg_root, cg_limit and cg_usage. Exits when there is none.
memory_cgroups_init() {
    if [ -d /sys/fs/cgroup/memory ] && [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
        cg_root=/sys/fs/cgroup/memory; cg_limit=memory.limit_in_bytes; cg_usage=memory.usage_in_bytes
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        cg_root=/sys/fs/cgroup; cg_limit=memory.max; cg_usage=memory.current
    else
        echo "no memory cgroup controller found (needs root and cgroup v1 or v2)" >&2; exit 1
    fi
}

# memory_cgroup_create DIR CAP_MB: a fresh cgroup DIR capped at CAP_MB
# (page cache included).
memory_cgroup_create() {
    mkdir -p "$1"
    echo $(($2 << 20)) > "$1/$cg_limit"
}

# memory_cgroup_peak_mb DIR: the cgroup's peak memory use in MiB.
memory_cgroup_peak_mb() {
    echo $(( $(cat "$1/memory.max_usage_in_bytes" 2>/dev/null || cat "$1/memory.peak" 2>/dev/null || echo 0) >> 20 ))
}

# memory_cgroup_oom_kills DIR: how many processes the cgroup's OOM killer took.
memory_cgroup_oom_kills() {
    grep -h '^oom_kill ' "$1/memory.oom_control" "$1/memory.events" 2>/dev/null | awk '{print $2}' | head -n 1
}
