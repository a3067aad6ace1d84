"""Submits a small synthetic job to xtrain-server, watches it to its end and prints the outcome.

    XTRAIN_PYTHON_PROTO=build/python /usr/bin/python3 client/python/example.py --server localhost:50051

Exit status: 0 when the job succeeded, 1 when it failed or was cancelled.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xtrain_client import XtrainClient  # noqa: E402

# small_cnn (width 4) on 256 generated 16x16 images of 4 classes: a few seconds on one core.
TINY_JOB = {
    "display_name": "python-example",
    "model": {"name": "small_cnn", "width": 4},
    "dataset": {"kind": "SYNTHETIC", "synthetic_examples": 256, "synthetic_size": 16, "synthetic_classes": 4},
    "training": {"batch_size": 32, "max_steps": 6, "seed": 7, "fidelity_interval": -1},
    "memory": {"probes": "PROBES_AUTO"},
    "labels": {"client": "python"},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=None, help="HOST:PORT (default: XTRAIN_SERVER, else localhost:50051)")
    parser.add_argument("--proto-path", default=None, help="the build's python/ folder (default: XTRAIN_PYTHON_PROTO)")
    args = parser.parse_args()

    with XtrainClient(args.server, proto_path=args.proto_path) as client:
        pb = client.pb
        job = client.submit(TINY_JOB).job
        print(f"submitted {job.id} ({pb.JobState.Name(job.state)})")
        for response in client.watch(job.id):
            event = response.event
            kind = event.WhichOneof("kind")
            if kind == "state":
                print(f"  #{event.sequence} {pb.JobState.Name(event.state.from_state)} -> "
                      f"{pb.JobState.Name(event.state.to_state)} {event.state.reason}".rstrip())
            elif kind == "step":
                s = event.step
                print(f"  #{event.sequence} step {s.step}/{s.total_steps} loss {s.loss:.4f} "
                      f"peak {s.measured_peak_bytes} B (predicted {s.predicted_peak_bytes} B)")
            elif kind == "validation":
                print(f"  #{event.sequence} validation {event.validation.metric_name} "
                      f"{event.validation.metric_value:.4f}")
        job = client.get(job.id)
        print(f"{job.id} {pb.JobState.Name(job.state)} after {job.progress.step} steps")
        if job.failure_reason:
            print(f"  failure: {job.failure_reason}")
        for name, value in sorted(job.final_metrics.items()):
            print(f"  {name} {value:.4f}")
        print(f"  peak measured {job.progress.measured_peak_bytes} B, predicted {job.progress.predicted_peak_bytes} B, "
              f"budget {job.budget_bytes} B")
        if job.weights_artifact_id:
            print(f"  weights {job.weights_artifact_id}")
        return 0 if job.state == pb.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
