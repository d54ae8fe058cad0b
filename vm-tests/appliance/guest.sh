#!/bin/bash
# vm-tests/appliance/guest.sh - the appliance phases, run inside the booted appliance
# image under its own systemd (glidefs-appliance-test.service, which
# vm-tests/appliance-run adds to a copy of the image). The test disk (label
# GLIDEFS-TEST, mounted on /mnt/test) carries this script, the .deb, moto's Python
# packages and the results; the runner reads results/ back after the guest powers off.
#
# Boot 1 (file store, the image's packaged config):
#   ready       the unit is Type=notify: `systemctl start` returns with the service
#               active, /health/ready answers 200 and stays so while sampled
#   kill9       an export made with the CLI, fio --verify=crc32c on it, and
#               `systemctl kill -s KILL glidefs` mid-run: systemd restarts the
#               daemon (NRestarts+1), fio ends with 0 errors and its verify passes
#   then        sha256 of the device, `systemctl reboot`
# Boot 2:
#   reboot      the service is back by itself, the device has the same number and
#               the same sha256
#   restart     `systemctl restart glidefs` under fio --verify on APPLIANCE_DEVICES
#               devices: 0 errors, longest I/O stall = fio's max completion latency
#   upgrade     `apt-get install --reinstall ./glidefs_*.deb` under fio (the
#               package's postinst restarts the unit): 0 errors, stall recorded
#   hardening   `systemd-analyze security glidefs` exposure (must be <=
#               APPLIANCE_SECURITY_MAX); in the daemon's mount namespace nothing
#               outside /var/lib/glidefs (and its private /tmp) is writable
#   credentials moto in the guest, S3 keys in /etc/credstore/glidefs-s3 only
#               (LoadCredential): the daemon writes to the bucket, and the secret
#               is in none of `ps auxwwe`, the journal, /metrics, `systemctl show`
# Every check appends "ok|FAIL name: detail" to results/checks; figures go to
# results/figures ("name value unit"); results/verdict is PASS or FAIL.
#
# Nothing here may hang the run: fio is waited for with a bound, and a watchdog ends
# each boot after APPLIANCE_BOOT_DEADLINE_S (default 900) with a FAIL, a diagnosis
# (results/diag-*.txt: the daemon's journal, D-state tasks and their kernel stacks,
# the ublk devices' in-flight counts; its head also on the console, which
# vm-tests/appliance-run prints on failure) and a forced power-off.
set -uo pipefail
T=/mnt/test
R=$T/results
mkdir -p "$R"
[ -f "$T/env" ] && . "$T/env"
API=http://127.0.0.1:8080
DEVICES=${APPLIANCE_DEVICES:-1}
FIO_SIZE=${APPLIANCE_FIO_SIZE:-16M}
SECURITY_MAX=${APPLIANCE_SECURITY_MAX:-2.3}
CANARY_KEY=AKIAGLIDEFSCANARY0001
CANARY_SECRET=glidefs-canary-secret-7f3a9c0e5d

log() { echo "[appliance $(date +%H:%M:%S)] $*" | tee -a "$R/log" >/dev/console; }
ok() {
    echo "ok   $*" >>"$R/checks"
    log "ok   $*"
}
bad() {
    echo "FAIL $*" >>"$R/checks"
    log "FAIL $*"
}
check() { # NAME CMD...: ok if CMD succeeds
    local name="$1"
    shift
    if "$@" >>"$R/log" 2>&1; then ok "$name"; else bad "$name"; fi
}
figure() {
    echo "$1 $2 ${3:-}" >>"$R/figures"
    log "figure $1 = $2 ${3:-}"
}
# A diagnosis of a stuck step, to results/diag-NAME.txt and (its first lines) to the
# console. Every command is bounded: the daemon or a device may be the stuck part.
diagnose() { # NAME WHY
    local f="$R/diag-$1.txt" p
    {
        echo "== $2"
        echo "== systemctl status glidefs"
        timeout 10 systemctl status glidefs --no-pager -n 0
        echo "== ublk devices (in flight: reads writes)"
        for p in /sys/block/ublkb*; do [ -e "$p" ] && echo "$(basename "$p") $(cat "$p/inflight")"; done
        echo "== glidefs export list"
        timeout 10 glidefs export list
        echo "== tasks in D state, with their kernel stacks"
        for p in $(ps -eo pid=,stat= | awk '$2 ~ /D/ {print $1}'); do
            echo "-- $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
            cat "/proc/$p/stack" 2>/dev/null
        done
        echo "== journal of glidefs.service (last 120 lines)"
        timeout 20 journalctl -b -u glidefs --no-pager -o short-monotonic -n 120
        echo "== kernel (last 60 lines)"
        dmesg | tail -n 60
    } >"$f" 2>&1
    log "diagnosis of '$2' in $(basename "$f"):"
    head -n 150 "$f" >/dev/console
}

# Waits for PID at most SECONDS; on timeout: FAIL, diagnosis, the process killed.
wait_bounded() { # PID SECONDS NAME
    local pid="$1" i
    for ((i = 0; i < $2 * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        bad "$3: still running after $2 s"
        diagnose "$3" "$3 still running after $2 s"
        kill -9 "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid"
}

# Ends this boot after SECONDS whatever is stuck: FAIL, diagnosis, the results
# synced (only the test disk's file system: a stuck ublk device would hang a
# global sync) and a forced power-off (a clean one may wait on the stuck device).
watchdog() { # SECONDS
    sleep "$1"
    bad "stage $(cat "$R/stage"): not finished after $1 s (APPLIANCE_BOOT_DEADLINE_S)"
    diagnose "deadline-$(cat "$R/stage")" "boot deadline"
    timeout 30 journalctl -b --no-pager -o short-monotonic >"$R/journal-$(cat "$R/stage")-deadline.txt" 2>&1
    echo FAIL >"$R/verdict"
    sync -f "$R/verdict"
    echo 1 >/proc/sys/kernel/sysrq
    echo o >/proc/sysrq-trigger
}

finish() {
    journalctl -b --no-pager -o short-monotonic >"$R/journal-$(cat "$R/stage" 2>/dev/null || echo x).txt" 2>&1
    if grep -q '^FAIL' "$R/checks" 2>/dev/null; then echo FAIL >"$R/verdict"; else echo PASS >"$R/verdict"; fi
    log "verdict: $(cat "$R/verdict")"
    sync
    systemctl poweroff
    exit 0
}

ready_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${1:-5}" "$API/health/ready"; }
nrestarts() { systemctl show -P NRestarts glidefs; }
main_pid() { systemctl show -P MainPID glidefs; }

wait_active() { # SECONDS
    local i
    for ((i = 0; i < $1 * 5; i++)); do
        [ "$(systemctl is-active glidefs)" = active ] && [ "$(ready_code)" = 200 ] && return 0
        sleep 0.2
    done
    return 1
}

# Samples the unit's state, main PID and /health/ready until $R/sampler.stop exists.
# "active" for a main PID other than OLD_PID while the API is not ready would mean
# READY=1 came too early. (Right after a SIGKILL, systemd may still show the dead
# OLD_PID as active for a moment: those samples are not the new daemon's.)
sampler() { # NAME
    local st pid code
    : >"$R/samples-$1"
    while [ ! -e "$R/sampler.stop" ]; do
        # In this order: a new main PID read first means the state read next is
        # the new daemon's (activating until READY=1, then active), and the
        # readiness read last comes after that state.
        pid=$(main_pid)
        st=$(systemctl show -P ActiveState glidefs)
        code=$(ready_code 15)
        echo "$st $pid $code" >>"$R/samples-$1"
        sleep 0.1
    done
}
sampler_check() { # NAME OLD_PID
    touch "$R/sampler.stop"
    wait "$SAMPLER_PID" 2>/dev/null
    rm -f "$R/sampler.stop"
    local early activating
    # (PID 0: no daemon; it cannot have said READY=1.)
    early=$(awk -v old="$2" '$1 == "active" && $2 != old && $2 != 0 && $3 != 200' "$R/samples-$1" | wc -l)
    activating=$(grep -c '^activating' "$R/samples-$1")
    if [ "$early" = 0 ]; then
        ok "$1: never active before ready ($(wc -l <"$R/samples-$1") samples, $activating activating)"
    else
        bad "$1: $early samples active while /health/ready was not 200 (samples-$1)"
    fi
}

dev_of() { glidefs export get "$1" 2>/dev/null | jq -r '.device // empty'; }

fio_job() { # NAME WRITE_IOPS DEV...: randwrite (rate-limited) + verify, JSON in $R/fio-NAME.json
    local name="$1" rate="$2"
    shift 2
    local -a args=()
    local d
    for d in "$@"; do args+=(--name="$(basename "$d")" --filename="$d"); done
    fio --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 --size="$FIO_SIZE" \
        --allow_file_create=0 --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --rate_iops=1000000,"$rate" --output-format=json --output="$R/fio-$name.json" "${args[@]}" \
        >"$R/fio-$name.log" 2>&1
}
fio_errors() { jq '[.jobs[].error] | add' "$R/fio-$1.json"; }
# The longest I/O as the guest saw it: total latency (submission + completion).
fio_max_lat_ms() { jq '[.jobs[] | .write.lat_ns.max, .read.lat_ns.max] | max / 1e6 | floor' "$R/fio-$1.json"; }

# ---------------------------------------------------------------- boot 1
stage1() {
    echo 1 >"$R/stage"
    figure boot1_startup "\"$(systemd-analyze | head -n1)\""
    figure kernel "$(uname -r)"
    check "ublk_drv loaded at boot (modules-load.d)" test -e /dev/ublk-control
    check "ublks_max from modprobe.d" grep -qx 20000 /sys/module/ublk_drv/parameters/ublks_max
    check "glidefs.service enabled in the image" systemctl is-enabled glidefs
    check "glidefs.service active after boot" systemctl is-active glidefs

    # ready: stop, then start with the sampler running.
    systemctl stop glidefs
    sampler start &
    SAMPLER_PID=$!
    local t0 t1
    t0=$(date +%s%N)
    if systemctl start glidefs; then
        t1=$(date +%s%N)
        local st code
        st=$(systemctl is-active glidefs)
        code=$(ready_code)
        if [ "$st" = active ] && [ "$code" = 200 ]; then
            ok "start: active and ready when systemctl start returns ($(((t1 - t0) / 1000000)) ms)"
        else
            bad "start: systemctl start returned with state $st, /health/ready $code"
        fi
    else
        bad "start: systemctl start glidefs failed"
    fi
    sleep 1
    sampler_check start 0
    check "Type=notify in effect" sh -c '[ "$(systemctl show -P Type glidefs)" = notify ]'

    # kill9: an export from the CLI, fio, SIGKILL mid-run.
    if glidefs export create vol0 --size 64M >>"$R/log" 2>&1; then ok "export create vol0 (CLI)"; else bad "export create vol0"; fi
    local dev
    dev=$(dev_of vol0)
    echo "$dev" >"$R/vol0.dev"
    for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.2; done
    check "vol0 is a block device ($dev)" test -b "$dev"
    local before
    before=$(nrestarts)
    fio_job kill9 $((${FIO_SIZE%M} * 256 / 20)) "$dev" &
    local fio_pid=$!
    sleep "${APPLIANCE_KILL_AFTER_S:-8}"
    kill -0 "$fio_pid" 2>/dev/null || bad "kill9: fio ended before the kill (make APPLIANCE_FIO_SIZE larger)"
    local oldpid
    oldpid=$(main_pid)
    log "systemctl kill -s KILL glidefs (pid $oldpid)"
    t0=$(date +%s%N)
    systemctl kill -s KILL glidefs
    sampler kill9 &
    SAMPLER_PID=$!
    local i
    for ((i = 0; i < 600; i++)); do
        [ "$(nrestarts)" -gt "$before" ] && [ "$(systemctl is-active glidefs)" = active ] && break
        sleep 0.1
    done
    t1=$(date +%s%N)
    if [ "$(nrestarts)" -gt "$before" ] && [ "$(main_pid)" != "$oldpid" ]; then
        ok "kill9: systemd restarted the daemon (NRestarts $before -> $(nrestarts), $(((t1 - t0) / 1000000)) ms to active)"
    else
        bad "kill9: no restart (NRestarts $(nrestarts), MainPID $(main_pid))"
    fi
    figure kill9_to_active_ms $(((t1 - t0) / 1000000)) ms
    wait_bounded "$fio_pid" 600 "kill9: fio"
    local rc=$?
    sampler_check kill9 "$oldpid"
    if [ "$rc" = 0 ] && [ "$(fio_errors kill9)" = 0 ]; then
        ok "kill9: fio --verify=crc32c finished with 0 errors, verify passed"
    else
        bad "kill9: fio exit $rc, errors $(fio_errors kill9 2>/dev/null)"
    fi
    figure kill9_fio_max_lat_ms "$(fio_max_lat_ms kill9)" ms
    sha256sum "$dev" | cut -d' ' -f1 >"$R/vol0.sha256"
    log "vol0 sha256 $(cat "$R/vol0.sha256"); rebooting"
    echo 2 >"$R/stage"
    journalctl -b --no-pager -o short-monotonic >"$R/journal-1.txt" 2>&1
    date +%s >"$R/reboot.at"
    sync
    systemctl reboot
    exit 0
}

# ---------------------------------------------------------------- boot 2
restart_under_fio() { # NAME WRITE_SECONDS ACTION...: ACTION while fio writes
    local name="$1" write_s="$2"
    shift 2
    local -a devs=()
    local n
    for ((n = 0; n < DEVICES; n++)); do devs+=("$(dev_of "r$n")"); done
    # 4 KiB writes spread over WRITE_SECONDS, then an unthrottled verify pass.
    fio_job "$name" $((${FIO_SIZE%M} * 256 / write_s)) "${devs[@]}" &
    local fio_pid=$!
    sleep "${APPLIANCE_KILL_AFTER_S:-8}"
    kill -0 "$fio_pid" 2>/dev/null || bad "$name: fio ended before the restart"
    local before t0 t1
    before=$(main_pid)
    sampler "$name" &
    SAMPLER_PID=$!
    t0=$(date +%s%N)
    log "$name: '$*' under fio (pid $fio_pid)"
    "$@" >>"$R/log" 2>&1 || bad "$name: '$*' failed"
    t1=$(date +%s%N)
    log "$name: '$*' returned after $(((t1 - t0) / 1000000)) ms; waiting for fio"
    kill -0 "$fio_pid" 2>/dev/null || bad "$name: fio ended before '$*' returned: the stall is not measured"
    wait_active 300 || bad "$name: not active again"
    wait_bounded "$fio_pid" $((write_s + 600)) "$name: fio"
    local rc=$?
    sampler_check "$name" "$before"
    [ "$(main_pid)" != "$before" ] || bad "$name: the daemon was not restarted (MainPID $before)"
    if [ "$rc" = 0 ] && [ "$(fio_errors "$name")" = 0 ]; then
        ok "$name: fio --verify=crc32c on $DEVICES device(s): 0 errors, verify passed"
    else
        bad "$name: fio exit $rc, errors $(fio_errors "$name" 2>/dev/null)"
    fi
    figure "${name}_seconds" "$(((t1 - t0) / 1000000))" ms
    figure "${name}_max_io_stall_ms_${DEVICES}dev" "$(fio_max_lat_ms "$name")" ms
}

stage2() {
    echo 3 >"$R/stage"
    figure reboot_to_test_s $(($(date +%s) - $(cat "$R/reboot.at"))) s
    figure boot2_startup "\"$(systemd-analyze | head -n1)\""
    wait_active 300 || true
    check "reboot: glidefs.service active after reboot" systemctl is-active glidefs
    local dev
    dev=$(dev_of vol0)
    if [ "$dev" = "$(cat "$R/vol0.dev")" ] && [ -b "$dev" ]; then
        ok "reboot: vol0 re-created with the same device $dev"
    else
        bad "reboot: vol0 is '$dev', was $(cat "$R/vol0.dev")"
    fi
    local sum
    sum=$(sha256sum "$dev" | cut -d' ' -f1)
    if [ "$sum" = "$(cat "$R/vol0.sha256")" ]; then ok "reboot: vol0 sha256 unchanged"; else bad "reboot: vol0 sha256 $sum, was $(cat "$R/vol0.sha256")"; fi
    log "export delete vol0"
    glidefs export delete vol0 >>"$R/log" 2>&1 || bad "export delete vol0"

    # restart and upgrade under fio.
    local n
    for ((n = 0; n < DEVICES; n++)); do
        glidefs export create "r$n" --size 64M >>"$R/log" 2>&1 || bad "export create r$n"
    done
    for ((n = 0; n < DEVICES; n++)); do
        for _ in $(seq 50); do [ -b "$(dev_of "r$n")" ] && break; sleep 0.2; done
    done
    restart_under_fio restart 30 systemctl restart glidefs
    local deb
    deb=$(ls "$T"/glidefs_*.deb 2>/dev/null | head -n1)
    if [ -n "$deb" ]; then
        restart_under_fio upgrade "${APPLIANCE_UPGRADE_WRITE_S:-150}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall "$deb"
    else
        bad "upgrade: no .deb on the test disk"
    fi
    for ((n = 0; n < DEVICES; n++)); do glidefs export delete "r$n" >>"$R/log" 2>&1; done

    # hardening
    systemd-analyze security glidefs --no-pager >"$R/security.txt" 2>&1
    local score
    score=$(sed -n 's/.*Overall exposure level for glidefs.service: *\([0-9.]*\).*/\1/p' "$R/security.txt")
    figure security_exposure "${score:-none}"
    if [ -n "$score" ] && awk -v s="$score" -v m="$SECURITY_MAX" 'BEGIN { exit !(s <= m) }'; then
        ok "systemd-analyze security glidefs: $score (bound $SECURITY_MAX, goal 2.0)"
    else
        bad "systemd-analyze security glidefs: '${score}' above $SECURITY_MAX"
    fi
    local pid p
    pid=$(main_pid)
    for p in /etc /usr/lib /var/lib /var/log /root /boot /opt /srv /run /dev/shm; do
        if nsenter -t "$pid" -m -- sh -c "echo x > '$p/glidefs-write-probe'" 2>/dev/null; then
            bad "hardening: the daemon's namespace can write $p"
            rm -f "$p/glidefs-write-probe"
        else
            ok "hardening: $p is not writable for the daemon"
        fi
    done
    # The probe itself works: the state directory is writable.
    check "hardening: /var/lib/glidefs is writable for the daemon (probe works)" \
        nsenter -t "$pid" -m -- sh -c 'echo x > /var/lib/glidefs/write-probe && rm /var/lib/glidefs/write-probe'
    check "hardening: only CAP_SYS_ADMIN in the bounding set" \
        sh -c "grep -q '^CapBnd:.*0000000000200000$' /proc/$pid/status"
    check "hardening: seccomp filter on" sh -c "grep -q '^Seccomp:.*2' /proc/$pid/status"
    # Information, not a check: whether the daemon, with only CAP_SYS_ADMIN, can read
    # init's mount namespace link (src/ublk/mounts.rs compares it with its own).
    if nsenter -t "$pid" -m -- setpriv --bounding-set=-all,+sys_admin -- stat -L /proc/1/ns/mnt >>"$R/log" 2>&1; then
        log "info: /proc/1/ns/mnt is readable with the daemon's capabilities"
    else
        log "info: /proc/1/ns/mnt is NOT readable with the daemon's capabilities"
    fi
    check "hardening: /proc shows processes only (ProcSubset=pid)" \
        nsenter -t "$pid" -m -- sh -c '! test -e /proc/sys/kernel/random/boot_id'
    check "hardening: the kernel's boot id is bound where the daemon looks" \
        sh -c "nsenter -t $pid -m -- cat /run/glidefs/boot_id | cmp -s - /proc/sys/kernel/random/boot_id"
    check "hardening: the daemon read the boot id (no 'cannot read the boot id' this boot)" \
        sh -c "! journalctl -b -u glidefs --no-pager | grep -q 'cannot read the boot id'"

    credentials
    finish
}

credentials() {
    log "credentials: starting moto in the guest"
    systemd-run --unit=moto --setenv=PYTHONPATH="$T/moto" -p StandardOutput=append:"$R/moto.log" \
        -p StandardError=append:"$R/moto.log" /usr/bin/python3 -m moto.server -H 127.0.0.1 -p 5000 >>"$R/log" 2>&1
    local i
    for ((i = 0; i < 600; i++)); do
        curl -s -o /dev/null --max-time 2 http://127.0.0.1:5000/ && break
        sleep 0.5
    done
    curl -s -X PUT http://127.0.0.1:5000/glidefs-test >>"$R/log" 2>&1 || bad "moto: create bucket"
    install -d -m 0700 /etc/credstore
    (umask 077 && printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$CANARY_KEY" "$CANARY_SECRET" \
        >/etc/credstore/glidefs-s3)
    systemctl stop glidefs
    cp /etc/glidefs/glidefs.toml "$R/glidefs.toml.orig"
    cat >/etc/glidefs/glidefs.toml <<EOF
[store]
url = "s3://glidefs-test/appliance"
endpoint = "http://127.0.0.1:5000"
region = "us-east-1"
path_style = true
credentials_file = "glidefs-s3"

[cache]
dir = "/var/lib/glidefs/cache"

[api]
listen = "127.0.0.1:8080"

[limits]
max_exports = 20000
EOF
    if systemctl start glidefs; then ok "credentials: glidefs starts with the S3 store"; else bad "credentials: start with the S3 store"; fi
    check "credentials: LoadCredential gave the service its copy" \
        sh -c '[ -n "$(ls /run/credentials/glidefs.service/ 2>/dev/null)" ]'
    glidefs export create s3vol --size 64M >>"$R/log" 2>&1 || bad "export create s3vol"
    local dev
    dev=$(dev_of s3vol)
    for _ in $(seq 50); do [ -b "$dev" ] && break; sleep 0.2; done
    dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none || bad "credentials: write s3vol"
    glidefs export drain s3vol >>"$R/log" 2>&1 || bad "credentials: drain s3vol"
    # For scripts/check-observability: a real daemon's /metrics with a device and an S3 store.
    curl -s "$API/metrics" >"$R/metrics.txt"
    local keys
    keys=$(curl -s "http://127.0.0.1:5000/glidefs-test?list-type=2&prefix=appliance" | grep -o '<Key>' | wc -l)
    if [ "$keys" -gt 0 ]; then ok "credentials: the daemon wrote $keys objects to the bucket"; else bad "credentials: no objects in the bucket"; fi
    # The canary is findable where it belongs (the search works) ...
    check "credentials: canary in /etc/credstore/glidefs-s3 (control)" grep -q "$CANARY_SECRET" /etc/credstore/glidefs-s3
    # ... and nowhere an operator or another user looks.
    local where
    for where in ps journal metrics show environ; do
        local text
        case $where in
            ps) text=$(ps auxwwe) ;;
            journal) text=$(journalctl -b --no-pager -o verbose) ;;
            metrics) text=$(curl -s "$API/metrics") ;;
            show) text=$(systemctl show glidefs; systemctl show-environment) ;;
            environ) text=$(tr '\0' '\n' <"/proc/$(main_pid)/environ"; tr '\0' ' ' <"/proc/$(main_pid)/cmdline") ;;
        esac
        [ -n "$text" ] || { bad "credentials: $where gave no text"; continue; }
        if grep -q -e "$CANARY_SECRET" -e "$CANARY_KEY" <<<"$text"; then
            bad "credentials: the secret shows in $where"
        else
            ok "credentials: the secret is not in $where"
        fi
    done
    glidefs export delete s3vol >>"$R/log" 2>&1
    systemctl stop glidefs
    cp "$R/glidefs.toml.orig" /etc/glidefs/glidefs.toml
    systemctl stop moto
}

watchdog "${APPLIANCE_BOOT_DEADLINE_S:-900}" &
case "$(cat "$R/stage" 2>/dev/null || echo 0)" in
    0) stage1 ;;
    2) stage2 ;;
    *)
        bad "unexpected boot at stage $(cat "$R/stage")"
        finish
        ;;
esac
