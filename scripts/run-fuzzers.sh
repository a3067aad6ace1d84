#!/usr/bin/env bash
# Runs each libFuzzer target of a fuzz tree for a bounded time: scripts/run-fuzzers.sh TREE SECONDS TARGET...
# Each starts from its seeds in fuzz/corpus/<name>/ (fuzz_<name> is the target), those its
# fuzz_<name>_seeds program writes (when the tree has one), and what earlier runs found (kept in
# TREE/corpus/, not in git). A crash, leak, timeout or out-of-memory fails the run and
# leaves the input in TREE/crashes/ with the command that replays it: fix the bug, then add the input to
# fuzz/corpus/<name>/ as a regression case.
set -euo pipefail
tree=$1 seconds=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$tree/crashes"
status=0
for target in "$@"; do
  name=${target#fuzz_}
  work="$tree/corpus/$name"
  mkdir -p "$work"
  # Seeds that are binary archives are written at run time by the tree's <target>_seeds, not kept in git.
  if [[ -x "$tree/fuzz/${target}_seeds" ]]; then "$tree/fuzz/${target}_seeds" "$work"; fi
  mkdir -p "$root/fuzz/corpus/$name"
  echo "fuzz: $target for ${seconds}s (seeds: fuzz/corpus/$name)"
  if ! LSAN_OPTIONS="suppressions=$root/fuzz/lsan.supp:print_suppressions=0" "$tree/fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$tree/crashes/$target-" "$work" "$root/fuzz/corpus/$name" > "$tree/$target.log" 2>&1; then
    echo "fuzz: $target FAILED; the input is in $tree/crashes/ (replay: $tree/fuzz/$target FILE)"
    tail -40 "$tree/$target.log"
    status=1
  else
    grep -E "^stat::number_of_executed_runs|^stat::peak_rss_mb|cov: " "$tree/$target.log" | tail -3 || true
  fi
done
exit $status
