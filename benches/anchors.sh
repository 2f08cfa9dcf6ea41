#!/usr/bin/env bash
# anchors.sh: Apiary next to the queue servers people would pick instead (Redis,
# beanstalkd), each durable (its log synced before it answers) and not (synced once a
# second), with the same two workloads, alternating, in one session on this machine.
#
# Usage: benches/anchors.sh [BIN_DIR [SCRATCH_PARENT]]
#
#   BIN_DIR         holds release apiaryd and apiary-load (default: target/release)
#   SCRATCH_PARENT  a new directory is made in it for the servers' data and the floor's
#                   fdatasync file, removed at the end, even on failure (default: /work).
#                   Never a tmpfs: every sync would be a memory copy (refused).
#
# Environment (defaults in brackets):
#   ROUNDS [3]        times each server runs each workload; the order of the servers
#                     turns by one every round, so none always runs first
#   TASKS [30000]     the throughput workload's tasks
#   SUBMITTERS [4]    submitters in both workloads, each waiting for every answer
#   WORKERS [16]      the throughput workload's workers (Apiary: simulated bots)
#   RATE [2000]       the rate workload's tasks a second, to PARKED waiting workers
#   PARKED [64]
#   RATE_SECS [30]    how long the rate workload submits
#   SERVERS [all]     a subset of: apiary redis-always beanstalkd-always redis-1s beanstalkd-1s
#   LOGS_DIR [unset]  if set, each run's load report and server log are copied there,
#                     as ROUND-WORKLOAD-SERVER.load.txt and .server.log
#
# The servers, each started fresh with an empty data directory on 127.0.0.1 for every
# run, on a free port:
#   apiary             apiaryd (syncs its log before every answer; its only mode)
#   redis-always       redis-server --appendonly yes --appendfsync always
#   beanstalkd-always  beanstalkd -b DIR -f 0 (fsync after every write)
#   redis-1s           redis-server --appendonly yes --appendfsync everysec
#   beanstalkd-1s      beanstalkd -b DIR -f 1000
# The workloads (`apiary-load` for Apiary, `apiary-load anchor` for the others, both
# with --floor in the same run):
#   throughput  SUBMITTERS submitters put TASKS tasks one at a time; WORKERS take and
#               finish them. Figures: tasks finished a second, submit -> taken p50/p99,
#               the server's CPU time per task (utime + stime from /proc/PID/stat).
#   rate        SUBMITTERS submitters put RATE tasks a second for RATE_SECS to PARKED
#               waiting workers. Figures: submit -> acknowledged p50/p99/p99.9/max,
#               submit -> taken p50, the server's CPU per task.
#
# Output: progress on stderr; on stdout the machine, the date, the floor's range over
# the runs, and a Markdown table per workload of min .. max per server.
# Needs: redis-server and beanstalkd (Debian: apt-get install redis-server beanstalkd).

set -Eeuo pipefail

ROUNDS=${ROUNDS:-3}
TASKS=${TASKS:-30000}
SUBMITTERS=${SUBMITTERS:-4}
WORKERS=${WORKERS:-16}
RATE=${RATE:-2000}
PARKED=${PARKED:-64}
RATE_SECS=${RATE_SECS:-30}
ALL_SERVERS="apiary redis-always beanstalkd-always redis-1s beanstalkd-1s"
SERVERS=${SERVERS:-$ALL_SERVERS}
LOGS_DIR=${LOGS_DIR:-}

BIN_DIR=${1:-target/release}
SCRATCH_PARENT=${2:-/work}

say() { printf '%s\n' "$*" >&2; }
die() {
    say "anchors: $*"
    exit 1
}

# --- checks before anything is made -------------------------------------------------

for binary in apiaryd apiary-load; do
    [ -x "$BIN_DIR/$binary" ] || die "$BIN_DIR/$binary is missing: build with cargo build --release"
done
for tool in redis-server beanstalkd python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (Debian: apt-get install $tool)"
done
for server in $SERVERS; do
    case " $ALL_SERVERS " in
    *" $server "*) ;;
    *) die "SERVERS: $server is not one of: $ALL_SERVERS" ;;
    esac
done
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1, not $ROUNDS"
BIN_DIR=$(cd "$BIN_DIR" && pwd)
[ -d "$SCRATCH_PARENT" ] || die "scratch parent $SCRATCH_PARENT is not a directory"
SCRATCH_FS=$(df -PT "$SCRATCH_PARENT" | awk 'NR == 2 { print $2 }')
case "$SCRATCH_FS" in
tmpfs | ramfs) die "$SCRATCH_PARENT is on $SCRATCH_FS (memory): give a directory on a disk" ;;
esac
TICKS_PER_SEC=$(getconf CLK_TCK)

# --- scratch directory and cleanup ----------------------------------------------------

SCRATCH=$(mktemp -d "$(cd "$SCRATCH_PARENT" && pwd)/anchors.XXXXXX")
server_pid=

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

failed_at=
trap 'failed_at="line $LINENO: $BASH_COMMAND"' ERR
cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    if [ "$status" -ne 0 ]; then
        say "anchors: failed (exit $status${failed_at:+ at $failed_at}); removing $SCRATCH"
    fi
    stop_server
    rm -rf "$SCRATCH"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RESULTS=$SCRATCH/results.tsv
: >"$RESULTS"

# --- the servers ----------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts connections on 127.0.0.1:$1 (bash's /dev/tcp).
wait_for_port() {
    local port=$1 log=$2
    for _ in $(seq 300); do
        (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || die "the server exited: $(tail -5 "$log")"
        sleep 0.1
    done
    die "nothing listens on port $port after 30 s: $(tail -5 "$log")"
}

# start_server NAME DIR LOG: sets server_pid and ADDR.
start_server() {
    local name=$1 dir=$2 log=$3 port
    mkdir -p "$dir"
    case "$name" in
    apiary)
        "$BIN_DIR/apiaryd" --listen 127.0.0.1:0 --data-dir "$dir" </dev/null >/dev/null 2>"$log" &
        server_pid=$!
        ADDR=
        for _ in $(seq 300); do
            ADDR=$(sed -n 's/.*apiaryd: listening on \([^ ]*\).*/\1/p' "$log")
            [ -n "$ADDR" ] && break
            kill -0 "$server_pid" 2>/dev/null || die "apiaryd exited: $(tail -5 "$log")"
            sleep 0.1
        done
        [ -n "$ADDR" ] || die "apiaryd did not say where it listens within 30 s"
        ;;
    redis-*)
        port=$(free_port)
        local fsync=always
        [ "$name" = redis-1s ] && fsync=everysec
        redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --appendonly yes --appendfsync "$fsync" \
            --save '' --protected-mode yes </dev/null >"$log" 2>&1 &
        server_pid=$!
        ADDR=127.0.0.1:$port
        wait_for_port "$port" "$log"
        ;;
    beanstalkd-*)
        port=$(free_port)
        local fsync_ms=0
        [ "$name" = beanstalkd-1s ] && fsync_ms=1000
        beanstalkd -l 127.0.0.1 -p "$port" -b "$dir" -f "$fsync_ms" </dev/null >"$log" 2>&1 &
        server_pid=$!
        ADDR=127.0.0.1:$port
        wait_for_port "$port" "$log"
        ;;
    esac
    # apiaryd fills its spare log segment with zeros at start: let that pass first.
    sleep 2
}

# CPU time of the running server so far, in clock ticks.
server_ticks() {
    awk '{ print $14 + $15 }' "/proc/$server_pid/stat"
}

# --- one run --------------------------------------------------------------------------

# The value after LABEL in the output: field FIELD of the line starting with LABEL.
figure() {
    local output=$1 label=$2 field=$3
    grep -m1 "^$label" "$output" | awk -v f="$field" '{ gsub(",", ""); print $f }'
}

# run_workload ROUND WORKLOAD SERVER: one run, one line in RESULTS.
run_workload() {
    local round=$1 workload=$2 name=$3
    local run_dir=$SCRATCH/run
    rm -rf "$run_dir"
    # Where freed blocks are discarded (`-o discard`), a removal discards them all at once
    # (at the unlink, or at the next journal commit) and holds up every sync meanwhile:
    # not during the run.
    sync
    mkdir -p "$run_dir"
    start_server "$name" "$run_dir/data" "$run_dir/server.log"
    local output=$run_dir/load.txt load_args=()
    case "$workload" in
    throughput) load_args=(--submitters "$SUBMITTERS" --tasks "$TASKS") ;;
    rate) load_args=(--submitters "$SUBMITTERS" --rate "$RATE" --duration "$RATE_SECS") ;;
    esac
    local takers=$WORKERS
    [ "$workload" = rate ] && takers=$PARKED
    local before after
    before=$(server_ticks)
    if [ "$name" = apiary ]; then
        "$BIN_DIR/apiary-load" --server "$ADDR" --bots "$takers" "${load_args[@]}" \
            --floor --floor-dir "$SCRATCH" >"$output" 2>&1 || die "apiary-load failed: $(tail -5 "$output")"
    else
        "$BIN_DIR/apiary-load" anchor --kind "${name%%-*}" --server "$ADDR" --workers "$takers" "${load_args[@]}" \
            --floor --floor-dir "$SCRATCH" >"$output" 2>&1 || die "apiary-load anchor failed: $(tail -5 "$output")"
    fi
    after=$(server_ticks)
    stop_server
    if [ -n "$LOGS_DIR" ]; then
        mkdir -p "$LOGS_DIR"
        cp "$output" "$LOGS_DIR/$round-$workload-$name.load.txt"
        cp "$run_dir/server.log" "$LOGS_DIR/$round-$workload-$name.server.log"
    fi

    local latency_label="submit->taken latency" acknowledged_label="put round trip µs"
    if [ "$name" = apiary ]; then
        latency_label="submit->dispatch latency"
        acknowledged_label="NewTask round trip µs"
    fi
    local completed tasks_per_sec cpu_us
    completed=$(figure "$output" "completed:" 2)
    tasks_per_sec=$(figure "$output" "completed:" 6 | tr -d '/s')
    cpu_us=$(awk -v t=$((after - before)) -v hz="$TICKS_PER_SEC" -v n="$completed" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$workload" "$name" "$round" "$tasks_per_sec" "$cpu_us" \
        "$(figure "$output" "$latency_label" 5)" "$(figure "$output" "$latency_label" 7)" \
        "$(figure "$output" "$acknowledged_label" 6)" "$(figure "$output" "$acknowledged_label" 8)" \
        "$(figure "$output" "$acknowledged_label" 10)" "$(figure "$output" "$acknowledged_label" 12)" \
        "$(figure "$output" "floor: loopback" 7)" "$(figure "$output" "floor: fdatasync" 8)" >>"$RESULTS"
    say "  $workload/$name round $round: $(tail -n1 "$RESULTS" | cut -f4-)"
}

# --- the runs -------------------------------------------------------------------------

read -r -a servers <<<"$SERVERS"
for round in $(seq "$ROUNDS"); do
    # Turn the order by one each round.
    shift_by=$(((round - 1) % ${#servers[@]}))
    order=("${servers[@]:shift_by}" "${servers[@]:0:shift_by}")
    say "round $round of $ROUNDS: ${order[*]}"
    for workload in throughput rate; do
        for name in "${order[@]}"; do
            run_workload "$round" "$workload" "$name"
        done
    done
done

# --- the tables -----------------------------------------------------------------------

# range WORKLOAD SERVER COLUMN: "min .. max" of a column over the rounds, or the value.
range() {
    awk -F'\t' -v w="$1" -v s="$2" -v c="$3" '
        $1 == w && $2 == s { v = $c + 0; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++ }
        END { if (n == 0) print "-"; else if (lo == hi) printf "%g\n", lo; else printf "%g .. %g\n", lo, hi }' "$RESULTS"
}

# column_range COLUMN: "min .. max" of a column over every run.
column_range() {
    awk -F'\t' -v c="$1" 'NR == 1 || $c + 0 < lo { lo = $c + 0 } NR == 1 || $c + 0 > hi { hi = $c + 0 } END { print lo " .. " hi }' "$RESULTS"
}

echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "Machine: $(nproc) cores, $(uname -sr), scratch on $SCRATCH_FS"
echo "Servers: $(redis-server --version | awk '{ print $1, $2, $3 }'), $(beanstalkd -v 2>&1 | head -n1)"
echo "Floor over the runs: loopback round trip p50 $(column_range 12) µs, 4 KiB fdatasync p50 $(column_range 13) µs"
echo
echo "Throughput: $SUBMITTERS submitters one task at a time, $WORKERS workers, $TASKS tasks, $ROUNDS rounds"
echo
echo "| server | tasks/s | submit -> taken p50 µs | p99 µs | server CPU µs/task |"
echo "|---|---|---|---|---|"
for name in "${servers[@]}"; do
    echo "| $name | $(range throughput "$name" 4) | $(range throughput "$name" 6) | $(range throughput "$name" 7) | $(range throughput "$name" 5) |"
done
echo
echo "Rate: $RATE tasks/s from $SUBMITTERS submitters to $PARKED waiting workers for $RATE_SECS s, $ROUNDS rounds"
echo
echo "| server | submit -> acknowledged p50 µs | p99 µs | p99.9 µs | max µs | submit -> taken p50 µs | server CPU µs/task |"
echo "|---|---|---|---|---|---|---|"
for name in "${servers[@]}"; do
    echo "| $name | $(range rate "$name" 8) | $(range rate "$name" 9) | $(range rate "$name" 10) | $(range rate "$name" 11) | $(range rate "$name" 6) | $(range rate "$name" 5) |"
done
