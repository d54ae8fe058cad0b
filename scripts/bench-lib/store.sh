# shellcheck shell=bash
# The store-traffic bench (issue 15): what one export asks of the object store for
# the write patterns the store format is judged on. One daemon, one export of
# $BENCH_STORE_DEV_MIB on a local file store, driven by fio; every figure is a
# difference of the export's own counters (/metrics: glidefs_io_bytes_total,
# glidefs_store_bytes_written_total, glidefs_export_store_requests_total) taken
# around one step, after a drain, so each step's uploads are in its own figure.
#
# Steps, in the order of $BENCH_STORE_STEPS (default: all, as listed; each row: step, client bytes, store bytes, PUTs, all requests,
# seconds, derived figure):
#   sparse     4 KiB randwrite at $BENCH_STORE_SPARSE_IOPS for $BENCH_STORE_SPARSE_S on
#              the fresh export, then drain: store bytes per client byte. Format 1
#              compresses each uploaded block, so a block that is zeros around the
#              write costs little here: this is the best case;
#   dense      128 KiB sequential write over the whole export, QD8, then drain:
#              PUTs per GiB written;
#   sparse-filled  the sparse step again, now that every block holds incompressible
#              data (fio's buffers): the case of a database on a used disk;
#   overwrite  $BENCH_STORE_OVERWRITE_BS randwrite over the whole export,
#              $BENCH_STORE_OVERWRITE_PASSES times its size (capped at
#              $BENCH_STORE_OVERWRITE_MAX_S), drain, then $BENCH_STORE_SETTLE_S for
#              background work: bytes in the store per byte of live data;
#   idle       the export untouched for $BENCH_STORE_IDLE_S: store requests per hour.
# A failed step gives status "fail:<what>" and zeros, never a made-up figure.

STORE_COLS="step client_bytes store_bytes puts requests seconds figure unit status"
STORE_PREFIX=st
STORE_NAME="${STORE_PREFIX}0"

# store_counters: "client_bytes store_bytes puts requests compacted_bytes" of
# $STORE_NAME now.
store_counters() {
    curl -fsS --max-time 30 "$GFS_URL/metrics" | awk -v e="export=\"$STORE_NAME\"" '
        index($0, "glidefs_io_bytes_total{") == 1 && index($0, e) && /op="write"/ { c = $2 }
        index($0, "glidefs_store_bytes_written_total{") == 1 && index($0, e) { b = $2 }
        index($0, "glidefs_compacted_bytes_total{") == 1 && index($0, e) { k = $2 }
        index($0, "glidefs_export_store_requests_total{") == 1 && index($0, e) {
            r += $2
            if ($0 ~ /op="put"/) p = $2
        }
        END {
            if (b == "") exit 1
            # %.0f, not %d: mawk clamps %d at 2^31 - 1 (seen: byte counters past 2 GiB).
            printf "%.0f %.0f %.0f %.0f %.0f\n", c, b, p, r, k
        }'
}

# store_fio NAME ARGS...: one fio job on the export's device; log in $WORK/fio.
store_fio() {
    local name="$1"
    shift
    mkdir -p "$WORK/fio"
    log "fio $name: $*"
    fio --name="$name" --filename="$STORE_DEV" --ioengine=io_uring --direct=1 \
        --randrepeat=0 --norandommap --output="$WORK/fio/store-$name.log" "$@" \
        || { tail -5 "$WORK/fio/store-$name.log" >&2; return 1; }
}

# store_drain: waits until the export's dirty data is in the store.
store_drain() {
    glidefs_drain "$STORE_PREFIX" 1 || return 1
    log "  drained in $(cat "$WORK/last-elapsed") s"
}

# store_begin: a step's starting counters ($before), time ($t0) and status ($st).
store_begin() {
    st=ok
    before=$(store_counters) || st=fail:metrics
    t0=$(date +%s.%N)
}

# store_row STEP T0 STATUS BEFORE: appends the step's row to $STORE_RAW, its figure
# computed from the counters' differences since BEFORE ("client store puts requests
# compacted").
store_row() {
    local step="$1" t0="$2" status="$3" c0 b0 p0 r0 k0 c1 b1 p1 r1 k1 secs figure
    read -r c0 b0 p0 r0 k0 <<<"$4"
    if [ "$status" = ok ] && read -r c1 b1 p1 r1 k1 < <(store_counters); then
        secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
        figure=$(STEP="$step" C=$((c1 - c0)) B=$((b1 - b0)) P=$((p1 - p0)) R=$((r1 - r0)) \
            K=$((k1 - k0)) S="$secs" LIVE="$STORE_LIVE" STORE_DIR="$STORE_DIR" "$PY" - <<'EOF'
import os
step, c, b, p, r, k, s = (os.environ[x] for x in ("STEP", "C", "B", "P", "R", "K", "S"))
c, b, p, r, k, s = int(c), int(b), int(p), int(r), int(k), float(s)
if step.startswith("sparse"):
    print(f"{b / c:.2f} store_bytes_per_client_byte" if c else "0 store_bytes_per_client_byte")
elif step == "dense":
    print(f"{p / (c / 2**30):.1f} puts_per_GiB" if c else "0 puts_per_GiB")
elif step == "overwrite":
    total = 0
    for root, _, files in os.walk(os.environ["STORE_DIR"]):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    live = int(os.environ["LIVE"])
    rewrite = k / c if c else 0
    print(f"{total / live:.2f} stored_bytes_per_live_byte({total}/{live},compaction_rewrote_{rewrite:.2f}_per_client_byte)")
else:
    print(f"{r * 3600 / s:.0f} requests_per_hour")
EOF
        )
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$step" $((c1 - c0)) $((b1 - b0)) \
            $((p1 - p0)) $((r1 - r0)) "$secs" "${figure// /$'\t'}" ok >>"$STORE_RAW"
        log "  $step: $(tail -1 "$STORE_RAW")"
    else
        printf '%s\t0\t0\t0\t0\t0\t0\t-\tfail:%s\n' "$step" "${status#fail:}" >>"$STORE_RAW"
        log "  $step FAILED ($status)"
    fi
}

# The steps. Each runs between store_begin and store_row; "overwrite" measures the
# store against the export's size, so it belongs after "dense" (every block live).
# store_step_sparse STEP: "sparse" on a fresh export, "sparse-filled" after "dense".
store_step_sparse() {
    store_begin
    store_fio "$1" --rw=randwrite --bs=4k --iodepth=1 --rate_iops="$BENCH_STORE_SPARSE_IOPS" \
        --time_based --runtime="$BENCH_STORE_SPARSE_S" || st=fail:fio
    store_drain || st=fail:drain
    store_row "$1" "$t0" "$st" "$before"
}

# store_fio_rate NAME: "bw=... run=...ms" of fio job NAME's writes, from its log.
store_fio_rate() {
    sed -n 's/^ *WRITE: bw=\([^ ]*\) .*run=\([0-9-]*\)msec.*/bw=\1 run=\2ms/p' \
        "$WORK/fio/store-$1.log" | head -1
}

store_step_dense() {
    store_begin
    store_fio dense --rw=write --bs=128k --iodepth=8 --size="$STORE_LIVE" || st=fail:fio
    # A segment closes at its size or at flush_interval's age: the writer's rate says
    # which, so it goes into the trace.
    echo "dense: fio wrote $(store_fio_rate dense)" >>"$WORK/store-notes"
    store_drain || st=fail:drain
    store_row dense "$t0" "$st" "$before"
}

store_step_overwrite() {
    store_begin
    store_fio overwrite --rw=randwrite --bs="$BENCH_STORE_OVERWRITE_BS" --iodepth=32 \
        --size="$STORE_LIVE" --io_size=$((STORE_LIVE * BENCH_STORE_OVERWRITE_PASSES)) \
        --runtime="$BENCH_STORE_OVERWRITE_MAX_S" || st=fail:fio
    store_drain || st=fail:drain
    log "  letting background work settle for ${BENCH_STORE_SETTLE_S} s"
    sleep "$BENCH_STORE_SETTLE_S"
    store_row overwrite "$t0" "$st" "$before"
}

store_step_idle() {
    # A drain first, so no upload of an earlier step falls in the window.
    store_drain || true
    store_begin
    log "idle for ${BENCH_STORE_IDLE_S} s"
    sleep "$BENCH_STORE_IDLE_S"
    store_row idle "$t0" "$st" "$before"
}

store_suite() {
    local dir="$BENCH_DATA_DIR/store" before t0 st
    STORE_RAW="$WORK/store.tsv"
    STORE_DIR="$dir/store"
    STORE_LIVE=$((BENCH_STORE_DEV_MIB * 1024 * 1024))
    : >"$STORE_RAW"
    : >"$WORK/store-notes"
    rm -rf "$dir"
    # The daemon's flush_interval (the segments' maximum age): default unless set.
    GFS_FLUSH_INTERVAL="${BENCH_STORE_FLUSH_INTERVAL:-}"
    # Dead segments are deleted at once (the default 10-minute grace would outlast
    # the settle time): the overwrite step measures the space compaction frees.
    GFS_GC_GRACE="${BENCH_STORE_GC_GRACE:-0s}"
    glidefs_config "$dir"
    if [ -n "${BENCH_STORE_TMPFS:-}" ]; then
        mount -t tmpfs -o size="$BENCH_STORE_TMPFS" glidefs-bench-store "$STORE_DIR" || {
            log "mounting a tmpfs of $BENCH_STORE_TMPFS on $STORE_DIR failed (BENCH_STORE_TMPFS)"
            return 1
        }
    fi
    ensure_ublk 8 || { log "no ublk"; store_unmount; return 1; }
    glidefs_start "$dir" usercopy || { store_unmount; return 1; }
    STORE_DEV=$(glidefs_create "$STORE_PREFIX" 1 "${BENCH_STORE_DEV_MIB}M") || {
        glidefs_stop
        store_unmount
        return 1
    }
    wait_block "$STORE_DEV" || true

    local step
    for step in $BENCH_STORE_STEPS; do
        case "$step" in
            sparse | sparse-filled) store_step_sparse "$step" ;;
            dense | overwrite | idle) "store_step_$step" ;;
            *) log "unknown store step $step (BENCH_STORE_STEPS)"; return 1 ;;
        esac
    done

    glidefs_delete "$STORE_PREFIX" 1 || log "deleting the export failed"
    glidefs_stop
    store_unmount
}

# store_unmount: the tmpfs of BENCH_STORE_TMPFS, if mounted.
store_unmount() {
    if [ -n "${BENCH_STORE_TMPFS:-}" ] && mountpoint -q "$STORE_DIR"; then
        umount "$STORE_DIR" || log "unmounting $STORE_DIR failed"
    fi
}

store_report() {
    cat "$1"
    echo "# columns: $STORE_COLS"
    echo "# client_bytes: the guest's WRITE bytes; store_bytes: bytes the export's volume PUT"
    echo "# (segments, manifests, lease, meta); puts/requests: its store requests in the step."
    echo "# overwrite's figure is the local store's size on disk after the step over the"
    echo "# export's size (every block is live after 'dense'), and the bytes compaction"
    echo "# rewrote during the step per client byte (glidefs_compacted_bytes_total)."
    column -t -s $'\t' "$2" | sed 's/^/  /'
    [ -s "$WORK/store-notes" ] && sed 's/^/# /' "$WORK/store-notes"
    return 0
}
