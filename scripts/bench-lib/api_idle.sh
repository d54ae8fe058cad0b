# shellcheck shell=bash
# `scripts/bench api`: issue 19's API latency and idle cost at N exports, natively.
# The daemon runs on this host with [ublk] enabled = false (exports get volumes,
# no block devices: nothing here needs ublk or a VM), per-export metrics on, the
# embedded file store in a temporary directory. For each N of BENCH_API_N (default
# "1025 5025"), exports are created up to N (api.py, one request at a time, timed),
# then after BENCH_API_SETTLE_S (30) seconds:
#   - idle: the daemon's CPU time over BENCH_API_IDLE_S (120) seconds
#     (/proc/PID/stat utime+stime) as % of one core, and its store requests in that
#     time (glidefs_store_requests_total summed over /metrics) as requests per hour;
#   - API: BENCH_API_ROUNDS (5) × GET /api/exports and × GET /metrics, time and size
#     (curl's time_total), median and max.
# At the end every export is deleted (timed) and the daemon stopped with SIGTERM.
# Output: OUT/api-idle.txt. What this does not cover: devices (their recovery and
# the data plane's idle cost are the density sweep's, in a VM).

# api_idle_median FILE: median of the numbers in FILE (one per line).
api_idle_median() { sort -g "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# api_idle_ticks PID: utime + stime of PID in clock ticks.
api_idle_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# api_idle_store_requests BASE: glidefs_store_requests_total summed over /metrics.
api_idle_store_requests() {
    curl -sS --max-time 60 "$1/metrics" | awk '/^glidefs_store_requests_total/ { s += $NF } END { printf "%d\n", s }'
}

run_api_idle() { # OUT
    local out="$1/api-idle.txt" bin dir port base pid n have=0 prefix i t0 t1 hz ticks0 ticks1 req0 req1
    local settle="${BENCH_API_SETTLE_S:-30}" idle="${BENCH_API_IDLE_S:-120}" rounds="${BENCH_API_ROUNDS:-5}"
    bin="$(glidefs_bin)" || die "no glidefs binary (set GLIDEFS_BIN or cargo build --release)"
    dir="$(mktemp -d)"
    port=$((20000 + RANDOM % 20000))
    base="http://127.0.0.1:$port"
    cat >"$dir/glidefs.toml" <<TOML
[store]
url = "file://$dir/store"
[cache]
dir = "$dir/cache"
[ublk]
enabled = false
[api]
listen = "127.0.0.1:$port"
per_export_metrics = true
TOML
    hz="$(getconf CLK_TCK)"
    RUST_LOG=warn "$bin" run --config "$dir/glidefs.toml" 2>"$dir/daemon.log" &
    pid=$!
    python3 "$BENCH_LIB/api.py" "$base" wait-ready 60 || {
        cat "$dir/daemon.log" >&2
        die "the daemon did not come up"
    }
    {
        echo "# glidefs API latency and idle cost at N exports, natively (scripts/bench api)"
        echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) CPUs, $(uname -r)  daemon: $("$bin" --version | head -n1)"
        echo "# [ublk] enabled = false (no devices), per-export metrics on, file store; idle ${idle} s after ${settle} s, ${rounds} rounds per GET"
        printf '%-6s %-14s %-10s %-14s %-16s %-22s %-22s\n' N create_ms/exp idle_cpu_% store_req/h rss_kib \
            "GET_exports_s(med,max)" "GET_metrics_s(med,max)"
    } >"$out"
    prefix=0
    for n in ${BENCH_API_N:-1025 5025}; do
        [ "$n" -gt "$have" ] || continue
        log "api: creating exports $have..$((n - 1))"
        t0="$(date +%s%N)"
        python3 "$BENCH_LIB/api.py" "$base" create "p${prefix}-" "$((n - have))" 64M >/dev/null ||
            die "creating exports failed (daemon log: $dir/daemon.log)"
        t1="$(date +%s%N)"
        local per_exp=$(((t1 - t0) / 1000000 / (n - have)))
        echo "p${prefix}- $((n - have))" >>"$dir/prefixes"
        have="$n"
        prefix=$((prefix + 1))
        sleep "$settle"
        log "api: idle for ${idle} s at N=$n"
        ticks0="$(api_idle_ticks "$pid")"
        req0="$(api_idle_store_requests "$base")"
        sleep "$idle"
        ticks1="$(api_idle_ticks "$pid")"
        req1="$(api_idle_store_requests "$base")"
        local cpu rph rss
        cpu="$(awk -v d=$((ticks1 - ticks0)) -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.2f", d / hz / s * 100 }')"
        rph="$(((req1 - req0) * 3600 / idle))"
        rss="$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")"
        : >"$dir/ge"
        : >"$dir/gm"
        local r sizes=""
        for ((r = 0; r < rounds; r++)); do
            curl -sS --max-time 60 -o /dev/null -w '%{time_total}\n' "$base/api/exports" >>"$dir/ge"
            curl -sS --max-time 60 -o "$dir/metrics.txt" -w '%{time_total}\n' "$base/metrics" >>"$dir/gm"
        done
        sizes="$(curl -sS "$base/api/exports" | wc -c) B, $(wc -c <"$dir/metrics.txt") B"
        printf '%-6s %-14s %-10s %-14s %-16s %-22s %-22s\n' "$n" "$per_exp" "$cpu" "$rph" "$rss" \
            "$(api_idle_median "$dir/ge"),$(sort -g "$dir/ge" | tail -n1)" \
            "$(api_idle_median "$dir/gm"),$(sort -g "$dir/gm" | tail -n1)" >>"$out"
        echo "#   N=$n: response sizes GET /api/exports, /metrics: $sizes" >>"$out"
    done
    log "api: deleting $have exports"
    t0="$(date +%s%N)"
    while read -r p c; do
        python3 "$BENCH_LIB/api.py" "$base" delete "$p" "$c" >/dev/null || die "deleting exports failed"
    done <"$dir/prefixes"
    t1="$(date +%s%N)"
    echo "# delete all $have: $(((t1 - t0) / 1000000)) ms" >>"$out"
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    echo "# SIGTERM: exit $rc" >>"$out"
    rm -rf "$dir"
    cat "$out"
}
