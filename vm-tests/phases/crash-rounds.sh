#!/usr/bin/env bash
# phase: crash-rounds - the crash phase with CRASH_DEVICES=8
# exports and CRASH_ROUNDS=10 kill -9 at random moments (CI: CRASH_ROUNDS=3); every
# restart must answer /health/ready, fio continues without an error, and at the end
# --verify_only passes on every export. Recovery time per restart is printed.
# ublks_max: 32
# deadline: 3600
# needs: glidefs
export CRASH_DEVICES="${CRASH_DEVICES:-8}"
export CRASH_ROUNDS="${CRASH_ROUNDS:-10}"
export PHASE="${PHASE:-crash-rounds}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/crash.sh"
