#!/usr/bin/env bash
# Runs every test of a build tree with CTest; prints CTest's summary line.
set -euo pipefail
# Usage: run-tests.sh [BUILD_DIR] [extra ctest arguments...]
build=${1:-build}
shift || true
# Tests state their own thread counts where it matters; two match this machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# CTest runs two tests at once, so two-thread OpenMP teams share two cores: idle threads sleep instead of
# spinning (a spinning team waits for a thread descheduled by the other test; a model build took twice as
# long with one core busy). Sleeping changes no result, only who waits how.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --test-dir "$build" --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 900 "$@"
