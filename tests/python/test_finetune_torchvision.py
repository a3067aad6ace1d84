"""Bring your own model, end to end: torchvision's resnet18 and squeezenet1_1 (random weights, exported at test
time by scripts/export_torchvision.py) finetuned through a real xtrain-server on Fashion-MNIST resized to 64x64,
under a budget below the exact job's peak; the downloaded module evaluated by /usr/bin/python3's torch.

    /usr/bin/python3 tests/python/test_finetune_torchvision.py --server BUILD/server/xtrain-server \
        --worker BUILD/server/worker/xtrain-worker --proto-path BUILD/python [--model resnet18]

ctest runs it as python.FinetuneTorchvision.<model>.
"""
import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
import xtrain_client  # noqa: E402

DATA_ROOT = "/usr/share/datasets"  # Debian's dataset-fashion-mnist
SIDE = 64
VALIDATION = 256
STEPS = 12
BATCH = {"resnet18": 32, "squeezenet1_1": 64}  # large enough that activations, not weights, set the peak
# SqueezeNet from random weights barely moves under SGD in a dozen steps; Adam moves it.
OPTIMIZER = {"resnet18": {"optimizer": "sgd_momentum", "lr": 0.01}, "squeezenet1_1": {"optimizer": "adam", "lr": 0.001}}


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(sizes)


def validation_set():
    """The server's validation inputs: the test split's first VALIDATION images, /255, bilinear to SIDE."""
    folder = os.path.join(DATA_ROOT, "fashion-mnist")
    images = read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))[:VALIDATION]
    labels = read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))[:VALIDATION]
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    x = F.interpolate(x, size=[SIDE, SIDE], mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.from_numpy(labels.astype(np.int64))


def job_spec(model, artifact_id, budget=0, probes="PROBES_AUTO"):
    return {
        "display_name": "finetune-torchvision",
        "model": {"name": "torchscript", "init_artifact_id": artifact_id},
        "dataset": {"kind": "MNIST", "path": "fashion-mnist", "image_size": SIDE, "limit": 1024,
                    "validation_limit": VALIDATION},
        "training": {"batch_size": BATCH[model], "max_steps": STEPS, **OPTIMIZER[model],
                     "seed": 3, "fidelity_interval": -1},
        "checkpoint": {"every_seconds": -1},
        "memory": {"budget_bytes": budget, "probes": probes},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--proto-path", required=True)
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "squeezenet1_1", "refusals"])
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="xtrain-finetune-")
    server = None
    failures = []

    def check(name, ok, detail=""):
        print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)
        if not ok:
            failures.append(name)

    try:
        module_path = os.path.join(folder, f"{args.model}.pt")
        if args.model == "refusals":
            write_bad_modules(folder)
        else:
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_torchvision.py"), args.model,
                            module_path, "--in-channels", "1", "--seed", "5"], check=True)
        port_file = os.path.join(folder, "port")
        server = subprocess.Popen([args.server, "--listen", "127.0.0.1:0", "--port-file", port_file,
                                   "--data-dir", os.path.join(folder, "store"), "--data-root", DATA_ROOT,
                                   "--worker", args.worker, "--device", "cpu:capacity=8GiB:slots=1",
                                   "--threads-per-job", "2", "--log-level", "warn", "--metrics-port", "0"])
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("xtrain-server did not start")
            time.sleep(0.1)
        address = "127.0.0.1:" + open(port_file).read().strip()
        with xtrain_client.XtrainClient(address, proto_path=args.proto_path, plan_timeout=900) as client:
            if args.model == "refusals":
                check_refusals(client, folder, check)
                return finish(failures)
            artifact = client.upload(module_path, name=f"{args.model}.pt")
            exact = client.plan(job_spec(args.model, artifact.id)).plan  # no budget: the exact job, and the cheapest
            # Just above the cheapest plan's budget: the planner must convert convolutions to fit.
            budget = int(exact.minimum_budget_bytes * 1.02)
            check("the budget is below the exact job's peak", budget < exact.exact_peak_bytes,
                  f"{budget} < {exact.exact_peak_bytes}")
            planned = client.plan(job_spec(args.model, artifact.id, budget)).plan
            xconv = [layer.path for layer in planned.layers if layer.probes > 0]
            print(f"{args.model}: exact peak {exact.exact_peak_bytes} B, budget {budget} B, planned peak "
                  f"{planned.predicted_peak_bytes} B, {len(xconv)} of {len(planned.layers)} convolutions as XConv",
                  flush=True)
            for note in planned.notes:
                print("  note:", note)
            if os.environ.get("XTRAIN_TEST_VERBOSE"):
                print(planned.table)
            check("the plan fits the budget", planned.predicted_peak_bytes <= budget)
            if args.model == "resnet18":
                # squeezenet1_1's cheapest plan at this size is lean layers alone: its peak is in the backward
                # of its first layers, where gradients, not kept inputs, fill memory.
                check("the plan converts convolutions", len(xconv) > 0)
            check("the head was replaced for 10 classes", any("replaced" in n and "-> 10" in n for n in planned.notes),
                  str(list(planned.notes)))

            job = client.submit(job_spec(args.model, artifact.id, budget)).job
            losses = []
            for response in client.watch(job.id):
                event = response.event
                if event.HasField("step"):
                    losses.append((event.step.step, event.step.loss))
            final = client.get(job.id)
            check("the job succeeded", final.state == client.pb.SUCCEEDED, final.failure_reason)
            measured = final.progress.measured_peak_bytes
            check("measured peak under the budget", 0 < measured <= budget, f"{measured} of {budget} B")
            by_step = dict(losses)
            steps = sorted(by_step)
            first = np.mean([by_step[s] for s in steps[:3]]) if len(steps) >= 6 else float("nan")
            last = np.mean([by_step[s] for s in steps[-3:]]) if len(steps) >= 6 else float("nan")
            check("the loss fell", last < first, f"first steps {first:.4f}, last steps {last:.4f} ({len(steps)} steps)")

            downloaded = os.path.join(folder, "trained.pt")
            info = client.download(final.weights_artifact_id, downloaded)
            check("the result is a torchscript artifact", info.kind == "torchscript", info.kind)
            module = torch.jit.load(downloaded)
            module.eval()
            x, y = validation_set()
            with torch.no_grad():
                logits = module(x)
            loss = F.cross_entropy(logits, y).item()
            accuracy = (logits.argmax(1) == y).float().mean().item()
            server_accuracy = final.final_metrics["accuracy"]
            server_loss = final.final_metrics["val_loss"]
            print(f"{args.model}: server val_loss {server_loss:.6f} accuracy {server_accuracy:.4f}; "
                  f"PyTorch on the downloaded module: val_loss {loss:.6f} accuracy {accuracy:.4f}", flush=True)
            check("PyTorch's accuracy equals the server's", abs(accuracy - server_accuracy) <= 1.0 / VALIDATION + 1e-9)
            check("PyTorch's validation loss equals the server's", abs(loss - server_loss) <= 1e-4 * max(1.0, server_loss))
            original = torch.jit.load(module_path)
            check("the weights moved from the uploaded module",
                  not torch.equal(original.state_dict()["features.0.weight" if args.model != "resnet18" else "conv1.weight"],
                                  module.state_dict()["features.0.weight" if args.model != "resnet18" else "conv1.weight"]))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(folder, ignore_errors=True)
    finish(failures)


def finish(failures):
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


class NoConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64 * 64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Volumes(torch.nn.Module):
    """A 3-D network: Fashion-MNIST's images have one rank too few for it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=[2, 3, 4]))


class BatchDependent(torch.nn.Module):
    """Runs one more op on batches larger than two: the memory model's calibration batches differ."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if x.size(0) > 2:
            y = y * 2.0
        return self.fc(y.mean(dim=[2, 3]))


def write_bad_modules(folder):
    with open(os.path.join(folder, "garbage.pt"), "wb") as f:
        f.write(b"these bytes are no TorchScript module\n" * 100)
    torch.save(NoConv().state_dict(), os.path.join(folder, "state_dict.pt"))
    torch.jit.script(NoConv()).save(os.path.join(folder, "noconv.pt"))
    torch.jit.script(Volumes()).save(os.path.join(folder, "volumes.pt"))
    torch.jit.script(BatchDependent()).save(os.path.join(folder, "batch_dependent.pt"))


def check_refusals(client, folder, check):
    """Bad modules are refused at PlanJob with INVALID_ARGUMENT and a sentence that says why."""
    cases = [("garbage.pt", "is not a TorchScript module", "INVALID_ARGUMENT"),
             ("state_dict.pt", "is not a TorchScript module", "INVALID_ARGUMENT"),
             ("noconv.pt", "has no convolution", "INVALID_ARGUMENT"),
             ("volumes.pt", "cannot run on the", "INVALID_ARGUMENT"),
             ("batch_dependent.pt", "cannot be calibrated", "FAILED_PRECONDITION")]
    for name, reason, code in cases:
        artifact = client.upload(os.path.join(folder, name), name=name)
        try:
            client.plan(job_spec("resnet18", artifact.id))
            check(f"{name} refused", False, "PlanJob accepted it")
        except xtrain_client.XtrainError as error:
            print(f"  {name}: {error}")
            check(f"{name} refused with {code}", error.code.name == code, str(error.code))
            check(f"{name}: the reason says '{reason}'", reason in str(error), str(error))
            check(f"{name}: the message names the artifact, not the server's files",
                  "/store/" not in str(error) and (artifact.id in str(error) or name in ("volumes.pt", "batch_dependent.pt")))
    spec = job_spec("resnet18", "")
    del spec["model"]["init_artifact_id"]
    try:
        client.plan(spec)
        check("torchscript without a module refused", False, "PlanJob accepted it")
    except xtrain_client.XtrainError as error:
        check("torchscript without a module refused with INVALID_ARGUMENT", error.code.name == "INVALID_ARGUMENT")
        check("the reason names init_artifact_id", "init_artifact_id" in str(error), str(error))


if __name__ == "__main__":
    main()
