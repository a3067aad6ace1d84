"""The Python client against a real xtrain-server (started here on port 0, with its own data dir).

    /usr/bin/python3 client/python/test_client.py --server BUILD/server/xtrain-server \
        --worker BUILD/server/worker/xtrain-worker --proto-path BUILD/python

ctest runs it as client.python.Client with the build's own binaries.
"""

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ARGS = None
SERVER = None  # the xtrain-server process
ADDRESS = None
DIR = None

# small_cnn (width 4) on 256 generated 16x16 images of 4 classes, batch 32.
def tiny_job(max_steps=4, epochs=1, **labels):
    return {
        "display_name": "python-test",
        "model": {"name": "small_cnn", "width": 4},
        "dataset": {"kind": "SYNTHETIC", "synthetic_examples": 256, "synthetic_size": 16, "synthetic_classes": 4},
        "training": {"batch_size": 32, "epochs": epochs, "max_steps": max_steps, "seed": 7,
                     "fidelity_interval": -1},
        "labels": labels,
    }


# With --secure: the client's TLS files and token, which the example also gets (as XTRAIN_* variables).
SECURE_ENV = {}


def make_credentials(folder):
    """A CA, a server certificate for 127.0.0.1 signed by it, and a tokens file for the token "py-token",
    made with the openssl command; the server's flags."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=py-test-ca")
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(folder, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    with open(os.path.join(folder, "tokens.txt"), "w") as f:
        f.write(hashlib.sha256(b"py-token").hexdigest() + " py user\n")
    SECURE_ENV.update(XTRAIN_TLS_CA=os.path.join(folder, "ca.pem"), XTRAIN_TOKEN="py-token")
    return ["--tls-cert", os.path.join(folder, "server.pem"), "--tls-key", os.path.join(folder, "server.key"),
            "--tokens", os.path.join(folder, "tokens.txt")]


def setUpModule():
    global SERVER, ADDRESS, DIR
    DIR = tempfile.mkdtemp(prefix="xtrain-python-test-")
    data_root = os.path.join(DIR, "data")
    os.makedirs(data_root)
    port_file = os.path.join(DIR, "port")
    secure_flags = make_credentials(DIR) if ARGS.secure else []
    SERVER = subprocess.Popen([ARGS.server, "--listen", "127.0.0.1:0", "--port-file", port_file,
                               "--data-dir", os.path.join(DIR, "store"), "--data-root", data_root,
                               "--worker", ARGS.worker, "--threads-per-job", "1", "--log-level", "warn", "--metrics-port", "0",
                               *secure_flags])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if SERVER.poll() is not None:
            raise RuntimeError(f"xtrain-server exited at start with {SERVER.returncode}")
        try:
            with open(port_file) as f:
                port = int(f.read().strip() or 0)
            if port > 0:
                ADDRESS = f"127.0.0.1:{port}"
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("xtrain-server did not write its port within 60 s")


def tearDownModule():
    try:
        if SERVER is not None and SERVER.poll() is None:
            SERVER.send_signal(signal.SIGTERM)
            try:
                SERVER.wait(timeout=30)
            except subprocess.TimeoutExpired:
                SERVER.kill()
                SERVER.wait()
    finally:
        shutil.rmtree(DIR, ignore_errors=True)


class ClientTest(unittest.TestCase):
    def setUp(self):
        from xtrain_client import XtrainClient, XtrainError  # noqa: F401
        self.Error = XtrainError
        # Over TLS with a token when --secure (the files and token as keyword arguments here; the example
        # below gets them as XTRAIN_* variables).
        self.client = XtrainClient(ADDRESS, proto_path=ARGS.proto_path, timeout=60, plan_timeout=300,
                                   tls_ca=SECURE_ENV.get("XTRAIN_TLS_CA"), token=SECURE_ENV.get("XTRAIN_TOKEN"))
        self.pb = self.client.pb

    def tearDown(self):
        self.client.close()

    def watch_all(self, job_id, from_sequence=0):
        return list(self.client.watch(job_id, from_sequence))

    def assert_watch_contract(self, responses, from_sequence, backlog_through):
        """WatchJob's contract for one stream (tests/server/watch_contract.h): no repeat, no reordering,
        each sequence the previous one's + 1 + that response's `coalesced` (live steps a watcher fell
        behind on), and nothing skipped in the backlog (events through `backlog_through`)."""
        previous = max(from_sequence, 1) - 1
        for i, response in enumerate(responses):
            sequence, coalesced = response.event.sequence, response.coalesced
            self.assertGreater(sequence, previous, f"response {i}: a repeat or out of order")
            self.assertEqual(sequence, previous + 1 + coalesced,
                             f"response {i}: sequence {sequence} after {previous} with coalesced {coalesced}")
            if coalesced:
                self.assertGreater(previous + 1, backlog_through, f"response {i}: backlog events skipped")
            previous = sequence

    def test_plan_then_from_the_cache(self):
        first = self.client.plan(tiny_job())
        self.assertEqual(first.plan.batch_size, 32)
        self.assertGreater(first.plan.predicted_peak_bytes, 0)
        self.assertGreater(len(first.plan.layers), 0)
        self.assertTrue(first.devices)
        second = self.client.plan(tiny_job())
        self.assertTrue(second.cached)
        self.assertEqual(second.plan.predicted_peak_bytes, first.plan.predicted_peak_bytes)

    def test_plan_refused_under_a_tiny_budget(self):
        spec = tiny_job()
        spec["memory"] = {"budget_bytes": 4096}
        with self.assertRaises(self.Error) as caught:
            self.client.plan(spec)
        self.assertEqual(caught.exception.code.name, "RESOURCE_EXHAUSTED")
        self.assertIn("budget", caught.exception.message)

    def test_invalid_spec_names_the_field(self):
        spec = tiny_job()
        spec["training"]["batch_size"] = -4
        with self.assertRaises(self.Error) as caught:
            self.client.submit(spec)
        self.assertEqual(caught.exception.code.name, "INVALID_ARGUMENT")
        self.assertIn("training.batch_size", caught.exception.message)

    def test_submit_watch_to_the_end(self):
        response = self.client.submit(tiny_job(max_steps=4, test="watch"))
        job_id = response.job.id
        # Watched live: steps it falls behind on may be coalesced, and counted.
        responses = self.watch_all(job_id)
        self.assert_watch_contract(responses, 0, response.job.last_sequence)
        events = [r.event for r in responses]
        self.assertEqual(events[-1].WhichOneof("kind"), "state")
        self.assertEqual(events[-1].state.to_state, self.pb.SUCCEEDED, events[-1])
        steps = [e.step.step for e in events if e.WhichOneof("kind") == "step"]
        self.assertTrue(steps)
        self.assertEqual(max(steps), 4)
        job = self.client.get(job_id)
        self.assertEqual(job.state, self.pb.SUCCEEDED)
        self.assertEqual(job.progress.step, 4)
        self.assertEqual(events[-1].sequence, job.last_sequence)
        self.assertTrue(job.weights_artifact_id)
        # Watching again from the middle replays the rest, whole: it is all backlog now.
        tail = self.watch_all(job_id, from_sequence=3)
        self.assert_watch_contract(tail, 3, job.last_sequence)
        self.assertEqual([r.event.sequence for r in tail], list(range(3, job.last_sequence + 1)))

    def test_submit_is_idempotent_by_request_id(self):
        first = self.client.submit(tiny_job(max_steps=1), client_request_id="python-idempotent")
        again = self.client.submit(tiny_job(max_steps=1), client_request_id="python-idempotent")
        self.assertFalse(first.existing)
        self.assertTrue(again.existing)
        self.assertEqual(first.job.id, again.job.id)
        self.watch_all(first.job.id)

    def test_list_by_label(self):
        job_id = self.client.submit(tiny_job(max_steps=1, test="list")).job.id
        listed = self.client.list(labels={"test": "list"})
        self.assertEqual([j.id for j in listed.jobs], [job_id])
        self.watch_all(job_id)
        self.assertEqual([j.id for j in self.client.list(states=["SUCCEEDED"], labels={"test": "list"}).jobs],
                         [job_id])

    def test_cancel(self):
        # 1000 epochs of 8 steps: the job cannot end by itself before the cancel arrives.
        job_id = self.client.submit(tiny_job(max_steps=100000, epochs=1000, test="cancel")).job.id
        for response in self.client.watch(job_id):
            if response.event.WhichOneof("kind") == "step":
                break  # running
        self.client.cancel(job_id)
        last = self.watch_all(job_id)[-1].event
        self.assertEqual(last.state.to_state, self.pb.CANCELLED)
        self.assertEqual(self.client.get(job_id).state, self.pb.CANCELLED)

    def test_unknown_job_is_not_found(self):
        with self.assertRaises(self.Error) as caught:
            self.client.get("job-0000000000000000")
        self.assertEqual(caught.exception.code.name, "NOT_FOUND")

    def test_upload_then_download_resuming(self):
        content = random.Random(5).randbytes((5 << 20) // 2)
        source = os.path.join(DIR, "upload.bin")
        with open(source, "wb") as f:
            f.write(content)
        info = self.client.upload(source, name="weights")
        self.assertEqual(info.size_bytes, len(content))
        self.assertEqual(info.name, "weights")
        target = os.path.join(DIR, "download.bin")
        with open(target + ".part", "wb") as f:
            f.write(content[:1000])  # an interrupted download
        downloaded = self.client.download(info.id, target)
        self.assertEqual(downloaded.sha256, info.sha256)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertFalse(os.path.exists(target + ".part"))

    def test_without_the_token_or_over_plaintext_is_refused(self):
        if not ARGS.secure:
            self.skipTest("the server runs without TLS and tokens (--secure runs it with both)")
        from xtrain_client import XtrainClient
        grpc = __import__("grpc")

        def refused(code, **options):
            client = XtrainClient(ADDRESS, proto_path=ARGS.proto_path, timeout=20, attempts=1, **options)
            try:
                with self.assertRaises(self.Error) as caught:
                    client.list()
                self.assertEqual(caught.exception.code, code)
            finally:
                client.close()

        saved = os.environ.pop("XTRAIN_TOKEN", None)  # no token at all
        try:
            refused(grpc.StatusCode.UNAUTHENTICATED, tls_ca=SECURE_ENV["XTRAIN_TLS_CA"], token="")
        finally:
            if saved is not None:
                os.environ["XTRAIN_TOKEN"] = saved
        refused(grpc.StatusCode.UNAVAILABLE, token="py-token")  # plaintext to a TLS server

    def test_example_runs_a_job_to_success(self):
        result = subprocess.run([sys.executable, os.path.join(HERE, "example.py"), "--server", ADDRESS,
                                 "--proto-path", ARGS.proto_path], capture_output=True, text=True, timeout=300,
                                env={**os.environ, **SECURE_ENV})
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCEEDED after 6 steps", result.stdout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the xtrain-server executable")
    parser.add_argument("--worker", required=True, help="the xtrain-worker executable")
    parser.add_argument("--proto-path", required=True, help="the build's python/ folder")
    parser.add_argument("--secure", action="store_true",
                        help="run the server with TLS and a tokens file, and the client with both")
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
