#!/usr/bin/env bash
# phase: api - the operator's view: `glidefs --version` shows the git sha;
# three exports created through the CLI (`glidefs export create NAME --size S --api
# URL`), one grown, each written and read back with fio verify, one deleted through
# the CLI; `export list`/`get`/`drain` work; /metrics has the build_info and exports
# gauges, and its read/write I/O size histograms moved with the I/O.
# ublks_max: 16
# deadline: 1200
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_daemon

# ---- version and build info
version="$("$GLIDEFS_BIN" --version 2>&1)"
log "glidefs --version: $version"
# GLIDEFS_EXPECT_SHA: the commit the binary was built from (vm-tests/run sets it when
# it builds the daemon); otherwise any git sha will do.
if [ -n "${GLIDEFS_EXPECT_SHA:-}" ]; then
    grep -q "${GLIDEFS_EXPECT_SHA:0:7}" <<<"$version" \
        || fail "glidefs --version does not show the git sha $GLIDEFS_EXPECT_SHA: $version"
else
    grep -Eq '[0-9a-f]{7,40}' <<<"$version" || fail "glidefs --version shows no git sha: $version"
fi

mkdir -p "$WORK_DIR/store"
write_config "$WORK_DIR/api.toml" "file://$WORK_DIR/store"
start_daemon "$DAEMON_CONFIG"
wait_ready 120

cli() { "$GLIDEFS_BIN" "$@" --api "$API"; }

# ---- create three exports through the CLI
for n in alpha beta gamma; do
    cli export create "$n" --size 64M >"$RESULTS_DIR/cli-create-$n.log" 2>&1 \
        || fail "glidefs export create $n failed: $(cat "$RESULTS_DIR/cli-create-$n.log")"
done
cli export list >"$RESULTS_DIR/cli-list.log" 2>&1 || fail "glidefs export list failed"
for n in alpha beta gamma; do
    grep -q "$n" "$RESULTS_DIR/cli-list.log" || fail "export list does not show $n"
done
cli export get beta >"$RESULTS_DIR/cli-get.log" 2>&1 || fail "glidefs export get beta failed"
grep -q beta "$RESULTS_DIR/cli-get.log" || fail "export get beta does not name it"

declare -A DEV
for n in alpha beta gamma; do
    DEV[$n]="$(export_device "$n")"
    wait_blockdev "${DEV[$n]}" 30
    log "$n on ${DEV[$n]}"
done

# ---- grow beta to 128M
cli export create beta --size 128M >"$RESULTS_DIR/cli-grow.log" 2>&1 \
    || fail "growing beta failed: $(cat "$RESULTS_DIR/cli-grow.log")"
api_ok GET /api/exports/beta
[ "$(jq -r .size_bytes <<<"$API_BODY")" = $((128 << 20)) ] || fail "beta did not grow: $API_BODY"
[ "$(jq -r .device <<<"$API_BODY")" = "${DEV[beta]}" ] || fail "growing beta moved its device"
devsize="$(blockdev --getsize64 "${DEV[beta]}")"
record_figure beta_device_bytes_after_grow "$devsize"
if [ "$devsize" != $((128 << 20)) ]; then
    log "note: ${DEV[beta]} still has $devsize bytes (live resize needs UBLK_F_UPDATE_SIZE, kernel >= 6.16)"
fi

# ---- I/O and metrics
hist_count() { # read|write: sum of the I/O size histograms' sample counts
    local v
    v="$(metric "glidefs_$1_io_size_bytes_count")"
    [ "$v" != absent ] || fail "/metrics has no glidefs_$1_io_size_bytes histogram"
    echo "$v"
}
r0="$(hist_count read)"
w0="$(hist_count write)"
for n in alpha beta gamma; do
    fio_verify "api-$n" "${DEV[$n]}" randwrite 4k --size=32M
done
r1="$(hist_count read)"
w1="$(hist_count write)"
log "histogram counts: read $r0 -> $r1, write $w0 -> $w1"
[ "$w1" -ge $((w0 + 3 * 8192)) ] || fail "write histogram moved by $((w1 - w0)), fio wrote 3 x 8192 blocks"
[ "$r1" -ge $((r0 + 3 * 8192)) ] || fail "read histogram moved by $((r1 - r0)), fio read 3 x 8192 blocks"
metrics="$(curl -fsS "$API/metrics")"
grep -q '^glidefs_build_info{' <<<"$metrics" || fail "/metrics has no glidefs_build_info"
grep -Eq '^glidefs_exports(\{[^}]*\})? 3$' <<<"$metrics" || fail "glidefs_exports is not 3: $(grep '^glidefs_exports' <<<"$metrics")"
grep -E '^glidefs_(build_info|exports|ublk_buffer_pool)' <<<"$metrics" | head -n 8 | sed 's/^/    /'

# ---- drain and delete through the CLI
cli export drain alpha >"$RESULTS_DIR/cli-drain.log" 2>&1 || fail "glidefs export drain alpha failed"
cli export delete gamma >"$RESULTS_DIR/cli-delete.log" 2>&1 || fail "glidefs export delete gamma failed"
api GET /api/exports/gamma
[ "$API_STATUS" = 404 ] || fail "gamma still exists after delete ($API_STATUS)"
for ((i = 0; i < 300; i++)); do
    [ -b "${DEV[gamma]}" ] || break
    sleep 0.1
done
[ ! -b "${DEV[gamma]}" ] || fail "${DEV[gamma]} still exists after delete"
fio_verify_only api-alpha-verify "${DEV[alpha]}" --rw=randwrite --bs=4k --size=32M --iodepth=32
grep -Eq '^glidefs_exports(\{[^}]*\})? 2$' <<<"$(curl -fsS "$API/metrics")" || fail "glidefs_exports is not 2 after delete"
stop_daemon
pass
