# shellcheck shell=bash
# Starting, stopping and killing the glidefs daemon for scripts/bench, and creating
# exports through its HTTP API (api.py).
#
# The daemon is driven only through its public surface: `glidefs run --config FILE`,
# the TOML keys [store] url, [cache] dir, [api] listen/stage_timers, [ublk] workers/queues/
# queue_depth/pool_slots, GLIDEFS_BOUNCE_MODE=1, and PUT/DELETE /api/exports/{name}.
# Invariants: one daemon at a time ($GFS_PID); its state lives under $GFS_DIR, which
# survives a kill -9 so that a restart recovers the same exports.

GFS_PID=""
GFS_PORT="${BENCH_API_PORT:-18080}"
GFS_URL="http://127.0.0.1:$GFS_PORT"

# Finds the daemon binary: $GLIDEFS_BIN, else a release build in the usual places.
glidefs_bin() {
    local c
    for c in "${GFS_BIN_OVERRIDE:-}" "${GLIDEFS_BIN:-}" "${CARGO_TARGET_DIR:-/nonexistent}/release/glidefs" \
        "$BENCH_LIB/../../target/release/glidefs"; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

# Prints why the glidefs part cannot run, or nothing when it can.
glidefs_unavailable() {
    local bin
    bin=$(glidefs_bin) || { echo "no glidefs binary (set GLIDEFS_BIN or build --release)"; return; }
    "$bin" run --help >/dev/null 2>&1 || echo "$bin has no working 'run' subcommand (daemon not built in)"
}

# glidefs_config DIR: writes DIR/config.toml (or copies $BENCH_GLIDEFS_CONFIG when
# set, replacing @DIR@ and @PORT@ in it).
glidefs_config() {
    local dir="$1"
    mkdir -p "$dir/store" "$dir/cache"
    if [ -n "${BENCH_GLIDEFS_CONFIG:-}" ]; then
        sed -e "s#@DIR@#$dir#g" -e "s#@PORT@#$GFS_PORT#g" "$BENCH_GLIDEFS_CONFIG" >"$dir/config.toml"
        return
    fi
    cat >"$dir/config.toml" <<EOF
[store]
url = "file://$dir/store"

[cache]
dir = "$dir/cache"
${GFS_FLUSH_INTERVAL:+flush_interval = \"$GFS_FLUSH_INTERVAL\"}
${GFS_GC_GRACE:+gc_grace = \"$GFS_GC_GRACE\"}

[api]
listen = "127.0.0.1:$GFS_PORT"
$([ "${BENCH_STAGES:-0}" = 1 ] && echo "stage_timers = true")

[ublk]
workers = ${BENCH_WORKERS:-$(nproc)}
queues = ${BENCH_UBLK_QUEUES}
queue_depth = ${BENCH_UBLK_DEPTH}
pool_slots = ${BENCH_POOL_SLOTS}
EOF
}

# glidefs_start DIR MODE: starts the daemon on DIR's config (MODE usercopy|bounce) and
# waits until its API is ready. Returns non-zero (and shows the log) on failure.
glidefs_start() {
    local dir="$1" mode="$2" bin
    bin=$(glidefs_bin) || return 1
    [ -f "$dir/config.toml" ] || glidefs_config "$dir"
    local envs=(RUST_LOG="${RUST_LOG:-info}")
    [ "$mode" = bounce ] && envs+=(GLIDEFS_BOUNCE_MODE=1)
    # Its own mount namespace, as the VM phases do (UBLK-FACTS: libublk-rs #50).
    local ns=()
    command -v unshare >/dev/null && ns=(unshare --mount --propagation private --)
    env "${envs[@]}" "${ns[@]}" "$bin" run --config "$dir/config.toml" >>"$dir/daemon.log" 2>&1 &
    GFS_PID=$!
    if ! "$PY" "$BENCH_LIB/api.py" "$GFS_URL" wait-ready "${BENCH_READY_TIMEOUT:-600}"; then
        log "glidefs did not become ready; last log lines:"
        tail -20 "$dir/daemon.log" >&2
        glidefs_kill
        return 1
    fi
}

# Stops the daemon politely (SIGTERM, then SIGKILL after 60 s).
glidefs_stop() {
    [ -n "$GFS_PID" ] || return 0
    kill -TERM "$GFS_PID" 2>/dev/null || true
    local deadline=$(($(date +%s) + 60))
    while kill -0 "$GFS_PID" 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do
        sleep 0.2
    done
    kill -0 "$GFS_PID" 2>/dev/null && glidefs_kill
    wait "$GFS_PID" 2>/dev/null || true
    GFS_PID=""
}

# kill -9, and waits until the process is gone.
glidefs_kill() {
    [ -n "$GFS_PID" ] || return 0
    kill -KILL "$GFS_PID" 2>/dev/null || true
    wait "$GFS_PID" 2>/dev/null || true
    GFS_PID=""
}

# glidefs_create PREFIX N SIZE: prints the device paths; the elapsed time goes to
# $WORK/last-elapsed.
glidefs_create() {
    local out
    out=$("$PY" "$BENCH_LIB/api.py" "$GFS_URL" create "$1" "$2" "$3") || return 1
    awk '/^# elapsed/ {print $3}' <<<"$out" >"$WORK/last-elapsed"
    awk '!/^#/ {print $2}' <<<"$out"
}

glidefs_delete() {
    local out
    out=$("$PY" "$BENCH_LIB/api.py" "$GFS_URL" delete "$1" "$2") || return 1
    awk '/^# elapsed/ {print $3}' <<<"$out" >"$WORK/last-elapsed"
}

# glidefs_drain PREFIX N: waits until every export's dirty data is in the store; the
# elapsed time goes to $WORK/last-elapsed.
glidefs_drain() {
    local out
    out=$("$PY" "$BENCH_LIB/api.py" "$GFS_URL" drain "$1" "$2") || return 1
    awk '/^# elapsed/ {print $3}' <<<"$out" >"$WORK/last-elapsed"
}

# /proc facts of the running daemon: "rss_kib threads vmsize_kib rss_anon_kib
# rss_file_kib" (RssAnon counts RssShmem too; RssFile is mapped file pages, e.g. the
# cache files' page cache that mapped READs touched: shared with the page cache).
glidefs_proc_facts() {
    awk '/^VmRSS/ {r=$2} /^Threads/ {t=$2} /^VmSize/ {v=$2} /^RssAnon/ {a+=$2} /^RssShmem/ {a+=$2}
        /^RssFile/ {f=$2} END {print r+0, t+0, v+0, a+0, f+0}' "/proc/$GFS_PID/status"
}

# KiB of the buffer pools and how many there are: "kib count". Each initialised
# worker pre-faults one pool of pool_slots x 128 KiB, so the daemon's gauge
# glidefs_ublk_buffer_pool_workers_initialized gives it; without /metrics, the
# anonymous mappings of exactly one pool's size in smaps (which misses pools the
# kernel merged with a neighbouring mapping).
glidefs_pool_kib() {
    local pool_kib=$((BENCH_POOL_SLOTS * 128)) w
    w=$(curl -fsS --max-time 10 "$GFS_URL/metrics" 2>/dev/null \
        | awk '/^glidefs_ublk_buffer_pool_workers_initialized / {print int($2)}')
    if [ -n "$w" ]; then
        echo "$((w * pool_kib)) $w"
        return
    fi
    awk -v want="$pool_kib" '
        /^[0-9a-f]+-[0-9a-f]+ / { inmap = 0; if ($6 == "") inmap = 1 }
        inmap && /^Size:/ { size = $2 }
        inmap && /^Rss:/ { if (size == want) { rss += $2; n++ } }
        END { print rss + 0, n + 0 }' "/proc/$GFS_PID/smaps" 2>/dev/null || echo "0 0"
}
