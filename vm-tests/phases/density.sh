#!/usr/bin/env bash
# phase: density - DENSITY_N exports (default 1025) of DENSITY_SIZE (64M)
# each, created through the API. Prints the daemon's RSS, VmSize and threads at N,
# RSS per export with and without the buffer pool, and the pool size; runs fio verify
# on 8 random exports; kill -9, times the recovery of all N (start -> /health/ready,
# and kill -> every device has served a 4 KiB read), verifies the 8 again with
# --verify_only; deletes all N and times it.
# For N > 1,100 set GLIDEFS_UBLKS_MAX (ublks_max must be >= N on kernels < 6.15).
# DENSITY_RCU_EXPEDITED=1 writes 1 to /sys/kernel/rcu_expedited before the kill -9
# (the kernel's teardown of a dead server quiesces every device's queue, one RCU grace
# period each; expedited grace periods shorten that wait: docs/operations.md).
# ublks_max: 1100
# deadline: 7200
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${DENSITY_N:-1025}"
SIZE="${DENSITY_SIZE:-64M}"
SAMPLE="${DENSITY_SAMPLE:-8}"
POOL_SLOTS="${DENSITY_POOL_SLOTS:-64}"
SLOT_BYTES=$((128 * 1024))

require_ublk
require_daemon
require_cmd python3
REPO="$(cd "$PHASES_DIR/../.." && pwd)"
max="$(cat /sys/module/ublk_drv/parameters/ublks_max)"
[ "$max" -ge "$N" ] || fail "ublks_max is $max < N=$N (set GLIDEFS_UBLKS_MAX)"
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 || true

mkdir -p "$WORK_DIR/store"
write_config "$WORK_DIR/density.toml" "file://$WORK_DIR/store" "[ublk]
pool_slots = $POOL_SLOTS

[limits]
max_exports = $((N + 16))"
start_daemon "$DAEMON_CONFIG"
wait_ready 120
rss0="$(daemon_rss_kb)"
log "RSS with no export: $rss0 kB"

# All N PUTs come from one client process (scripts/bench-lib/api.py): a curl and
# two jq per export cost seconds each under a loaded TCG host, which timed the
# shell rather than the daemon.
APICLI=(python3 "$REPO/scripts/bench-lib/api.py" "$API")
t0="$(now_ms)"
"${APICLI[@]}" create d "$N" "$SIZE" >"$RESULTS_DIR/created.txt" 2>"$RESULTS_DIR/create.err" \
    || fail "creating $N exports: $(cat "$RESULTS_DIR/create.err")"
create_ms=$(($(now_ms) - t0))
mapfile -t DEVS < <(awk '!/^#/ {print $2}' "$RESULTS_DIR/created.txt")
[ "${#DEVS[@]}" = "$N" ] || fail "created ${#DEVS[@]} exports, wanted $N"
for ((i = 0; i < N; i++)); do
    [ -b "${DEVS[i]}" ] || fail "export d$i: ${DEVS[i]} is not a block device"
done
record_figure exports "$N"
record_figure create_all_ms "$create_ms" ms
record_figure create_per_export_ms "$((create_ms / N))" ms
api_ok GET /api/exports
declare -a DEVS
while read -r name dev; do
    DEVS[${name#d}]="$dev"
done < <(jq -r '(if type == "array" then . else .exports end)[] | "\(.name) \(.device)"' <<<"$API_BODY")
[ "${#DEVS[@]}" = "$N" ] || fail "GET /api/exports lists ${#DEVS[@]} exports, not $N"
for ((i = 0; i < N; i++)); do
    wait_blockdev "${DEVS[i]}" 60
done

# Pick the sample and write to it, so the pool is in use when RSS is measured.
mapfile -t pick < <(shuf -i 0-$((N - 1)) -n "$SAMPLE")
job=(--rw=randwrite --bs=4k --iodepth=32 --size=16M --verify=crc32c --randrepeat=1)
for i in "${pick[@]}"; do
    fio_run "density-d$i" --filename="${DEVS[i]}" "${job[@]}" --do_verify=1 --verify_fatal=1 \
        || fio_failed "density-d$i"
done
log "fio verify passed on exports ${pick[*]}"

rss="$(daemon_rss_kb)"
workers="$(metric glidefs_ublk_buffer_pool_workers_initialized)"
[ "$workers" != absent ] || workers=0
pool_kb=$((workers * POOL_SLOTS * SLOT_BYTES / 1024))
record_figure rss_kb_at_n "$rss" kB
record_figure vmsize_kb_at_n "$(daemon_vmsize_kb)" kB
record_figure threads_at_n "$(daemon_threads)"
record_figure rss_kb_no_exports "$rss0" kB
record_figure pool_workers_initialized "$workers"
record_figure pool_kb "$pool_kb" kB
record_figure rss_per_export_kb "$(((rss - rss0) / N))" kB
record_figure rss_per_export_kb_without_pool "$(((rss - rss0 - pool_kb) / N))" kB

printf '%s\n' "${DEVS[@]}" >"$WORK_DIR/devices"
if [ "${DENSITY_RCU_EXPEDITED:-}" = 1 ]; then
    echo 1 >/sys/kernel/rcu_expedited || fail "cannot write /sys/kernel/rcu_expedited"
fi
record_figure rcu_expedited "$(cat /sys/kernel/rcu_expedited 2>/dev/null || echo unknown)"
kill9_daemon
# One reader process (started before the daemon, so its start-up overlaps the
# daemon's) reads 4 KiB from every device; each read waits in the kernel until its
# device is recovered, so it ends once all N serve I/O again.
t_kill="$(date +%s.%N)"
timeout 3600 python3 "$REPO/scripts/bench-lib/read_all.py" "$WORK_DIR/devices" "$t_kill" \
    >"$RESULTS_DIR/read-all.out" 2>&1 &
reader=$!
start_daemon "$DAEMON_CONFIG"
wait_ready 3600
record_figure recovery_all_ms "$READY_MS" ms
record_figure recovery_per_export_ms "$((READY_MS / N))" ms
wait "$reader" || fail "reading every device after recovery failed: $(cat "$RESULTS_DIR/read-all.out")"
io_s="$(awk '/^# elapsed/ {print $3}' "$RESULTS_DIR/read-all.out")"
record_figure recovery_io_all_ms "$(awk -v s="$io_s" 'BEGIN {printf "%d", s * 1000}')" ms
api_ok GET /api/exports
for i in "${pick[@]}"; do
    got="$(jq -r --arg n "d$i" '(if type == "array" then . else .exports end)[] | select(.name == $n) | .device' <<<"$API_BODY")"
    [ "$got" = "${DEVS[i]}" ] || fail "d$i came back on '$got', was ${DEVS[i]}"
    fio_verify_only "density-d$i-verify" "${DEVS[i]}" "${job[@]}"
done
log "all $SAMPLE sampled exports verified after recovery"
record_figure rss_kb_after_recovery "$(daemon_rss_kb)" kB

t0="$(now_ms)"
if ! BENCH_DELETE_TIMEOUT="${DENSITY_DELETE_TIMEOUT:-300}" "${APICLI[@]}" delete d "$N" \
    >/dev/null 2>"$RESULTS_DIR/delete.err"; then
    dump_stuck "bulk delete: $(cat "$RESULTS_DIR/delete.err")"
    fail "deleting all $N exports: $(cat "$RESULTS_DIR/delete.err")"
fi
record_figure delete_all_ms "$(($(now_ms) - t0))" ms
left="$(find /dev -maxdepth 1 -name 'ublkb*' | wc -l)"
[ "$left" = 0 ] || fail "$left ublk block devices left after deleting every export"
stop_daemon
pass
