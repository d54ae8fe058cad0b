#!/usr/bin/env bash
# phase: bad-input - every bad API call gets its 4xx with a JSON
# {"error": ...} body and changes nothing (same export list, same ublk devices):
# bad names (../x, empty, 65 chars, unicode, upper case), bad sizes (0, not a 4 KiB
# multiple, 1 EiB, negative, text), malformed JSON, a missing size, a smaller size for
# an existing export (409), delete/get/drain of an unknown export (404). A repeated
# identical create is a no-op returning the same device. A config with an unknown key
# makes `glidefs run` fail at start, naming the key.
# ublks_max: 16
# deadline: 900
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_daemon

# ---- config with an unknown key
mkdir -p "$WORK_DIR/store"
write_config "$WORK_DIR/bad.toml" "file://$WORK_DIR/store" "[limits]
max_exports = 100
frobnicate_level = 3"
log "starting the daemon with an unknown config key (frobnicate_level)"
set +e
timeout 60 "$GLIDEFS_BIN" run --config "$WORK_DIR/bad.toml" >"$RESULTS_DIR/bad-config.log" 2>&1
rc=$?
set -e
[ "$rc" != 124 ] || fail "glidefs kept running with an unknown config key"
[ "$rc" != 0 ] || fail "glidefs exited 0 with an unknown config key"
grep -q frobnicate_level "$RESULTS_DIR/bad-config.log" \
    || fail "the error for an unknown key does not name it: $(head -c 300 "$RESULTS_DIR/bad-config.log")"
log "unknown key rejected (status $rc): $(grep -m1 frobnicate_level "$RESULTS_DIR/bad-config.log")"

# A bad value is rejected too, naming its key.
write_config "$WORK_DIR/bad2.toml" "file://$WORK_DIR/store" "[limits]
max_exports = \"lots\""
set +e
timeout 60 "$GLIDEFS_BIN" run --config "$WORK_DIR/bad2.toml" >"$RESULTS_DIR/bad-config2.log" 2>&1
rc=$?
set -e
if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
    fail "glidefs accepted max_exports = \"lots\" (status $rc)"
fi
grep -q max_exports "$RESULTS_DIR/bad-config2.log" || fail "the error for a bad value does not name max_exports"

# ---- API
write_config "$WORK_DIR/good.toml" "file://$WORK_DIR/store"
start_daemon "$DAEMON_CONFIG"
wait_ready 120
export_create good 64M
good_dev="$EXPORT_DEV"

snapshot() {
    api_ok GET /api/exports
    jq -S . <<<"$API_BODY"
    find /dev -maxdepth 1 -name 'ublkb*' | sort
}
before="$(snapshot)"
checks=0

# expect_4xx WANT METHOD PATH [BODY]: WANT is an exact code or "4xx".
expect_4xx() {
    local want="$1"
    shift
    api "$@"
    case "$API_STATUS" in
        4??) ;;
        *) fail "$1 $2 ${3:-} returned $API_STATUS (want $want): $API_BODY" ;;
    esac
    if [ "$want" != 4xx ] && [ "$API_STATUS" != "$want" ]; then
        fail "$1 $2 ${3:-} returned $API_STATUS, want $want: $API_BODY"
    fi
    # 404/405 for paths the router cannot match may come without our JSON body.
    if [ "$want" != 4xx ]; then
        jq -e '.error | strings | length > 0' >/dev/null 2>&1 <<<"$API_BODY" \
            || fail "$1 $2 ${3:-}: $API_STATUS without a JSON {\"error\": ...} body: $API_BODY"
    fi
    local now
    now="$(snapshot)"
    [ "$now" = "$before" ] || fail "$1 $2 ${3:-} ($API_STATUS) changed the exports or devices"
    checks=$((checks + 1))
    log "ok: $1 $2 ${3:-} -> $API_STATUS"
}

long="$(printf 'a%.0s' $(seq 65))"
expect_4xx 400 PUT "/api/exports/..%2Fx" '{"size":"64M"}'
expect_4xx 4xx PUT "/api/exports/../x" '{"size":"64M"}'
expect_4xx 4xx PUT "/api/exports/" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/$long" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/%C3%A9t%C3%A9" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/Upper" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/-dash" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/a%20b" '{"size":"64M"}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size":"0"}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size_bytes":0}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size_bytes":4097}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size_bytes":1000}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size":"1E"}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size_bytes":1152921504606846976}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size_bytes":-4096}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size":"lots"}'
expect_4xx 400 PUT "/api/exports/ok1" '{"size":'
expect_4xx 400 PUT "/api/exports/ok1" 'not json'
expect_4xx 400 PUT "/api/exports/ok1" '{}'
expect_4xx 400 PUT "/api/exports/ok1" '[1,2]'
expect_4xx 409 PUT "/api/exports/good" '{"size":"32M"}'
expect_4xx 404 GET "/api/exports/nosuch"
expect_4xx 404 DELETE "/api/exports/nosuch"
expect_4xx 404 POST "/api/exports/nosuch/drain"

# The same create again: a no-op returning the same device.
api_ok PUT /api/exports/good '{"size":"64M"}'
[ "$(jq -r .device <<<"$API_BODY")" = "$good_dev" ] || fail "repeated create moved the device: $API_BODY"
[ "$(snapshot)" = "$before" ] || fail "a repeated identical create changed something"
checks=$((checks + 1))

# The daemon still serves I/O after all that.
fio_verify after-bad-input "$good_dev" randwrite 4k --size=16M
record_figure bad_input_checks "$checks"
stop_daemon
pass
