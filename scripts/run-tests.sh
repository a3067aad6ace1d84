#!/usr/bin/env bash
# Runs every test of a build tree with CTest; prints CTest's summary line.
set -euo pipefail
# Usage: run-tests.sh [BUILD_DIR] [extra ctest arguments...]
build=${1:-build}
shift || true
# Tests state their own thread counts where it matters; two match this machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ctest --test-dir "$build" --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 900 "$@"
