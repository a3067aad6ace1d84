#!/usr/bin/env bash
# make demo: xtrain-server on localhost with its SQLite store under BUILD/demo, one Fashion-MNIST job
# submitted with automatic probes under a budget well below the exact job's peak, watched to the end by
# xtrainctl, the outcome against the exact job, then the server stopped.
set -euo pipefail
build=${1:-build}
share=${DEMO_BUDGET_SHARE:-0.55}   # the budget as a share of the exact job's peak
demo=$build/demo
rm -rf "$demo"
mkdir -p "$demo"
server=$build/server/xtrain-server
ctl=$build/client/xtrainctl
spec=examples/demo-job.yaml

"$server" --listen 127.0.0.1:0 --port-file "$demo/port" --data-dir "$demo/data" --data-root /usr/share/datasets \
  --device cpu:capacity=2GiB:slots=1 --threads-per-job 2 --metrics-port 0 --log-level warn > "$demo/server.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  [[ -s $demo/port ]] && break
  kill -0 $pid 2>/dev/null || { cat "$demo/server.log"; exit 1; }
  sleep 0.1
done
port=$(cat "$demo/port")
export XTRAIN_SERVER=127.0.0.1:$port
echo "== xtrain-server on port $port, store $demo/data/xtrain.db (log: $demo/server.log)"

# The exact job's peak, from a dry run without XConv.
exact=$("$ctl" plan "$spec" --probes exact --output json |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["plan"]["exactPeakBytes"])')
budget=$(/usr/bin/python3 -c "print(int($exact * $share))")
echo "== the exact job needs $exact bytes at its peak; the budget is $share of that: $budget bytes"
echo "== xtrainctl plan $spec --budget $budget"
"$ctl" plan "$spec" --budget "$budget"
echo "== xtrainctl submit $spec --budget $budget --watch"
"$ctl" submit "$spec" --budget "$budget" --watch   # a progress bar on a terminal, one line per event otherwise
job=$("$ctl" list --label demo=true --output json |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["id"])')
"$ctl" get "$job" --output json > "$demo/job.json"
/usr/bin/python3 - "$demo/job.json" "$exact" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
exact = int(sys.argv[2])
mib = lambda b: int(b) / 2**20
p, plan = job.get("progress", {}), job.get("plan", {})
measured, predicted, budget = int(p.get("measuredPeakBytes", 0)), int(p.get("predictedPeakBytes", 0)), int(job.get("budgetBytes", 0))
print(f"== outcome: {job['state']}: test accuracy {job.get('finalMetrics', {}).get('accuracy', float('nan')):.4f}")
print(f"   measured peak {mib(measured):.2f} MiB, predicted {mib(predicted):.2f} MiB, budget {mib(budget):.2f} MiB "
      f"({'within' if measured <= budget else 'OVER'} budget)")
print(f"   the exact job would need {mib(exact):.2f} MiB: this one ran in {100 * measured / exact:.0f}% of it")
sys.exit(0 if job["state"] == "SUCCEEDED" and measured <= budget else 1)
PY
