"""A small Python client of xtrain-server (the xtrain.v1.TrainingService gRPC API).

Uses Debian's python3-grpcio and python3-protobuf and the modules the build generates from
proto/xtrain/v1/training_service.proto (target xtrain_python_proto, into <build>/python). They are found
through the `proto_path` argument, else the XTRAIN_PYTHON_PROTO environment variable, else the usual
import path.

    client = XtrainClient("localhost:50051")
    job = client.submit({"model": {"name": "small_cnn"}, "dataset": {"kind": "SYNTHETIC"}}).job
    for response in client.watch(job.id):
        print(response.event)
"""

import hashlib
import importlib
import os
import sys
import time
import uuid

import grpc
from google.protobuf import json_format

_CHUNK_BYTES = 1 << 20


def load_generated(proto_path=None):
    """The generated modules (training_service_pb2, training_service_pb2_grpc)."""
    path = proto_path or os.environ.get("XTRAIN_PYTHON_PROTO")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        pb2 = importlib.import_module("xtrain.v1.training_service_pb2")
        pb2_grpc = importlib.import_module("xtrain.v1.training_service_pb2_grpc")
    except ImportError as error:
        raise ImportError(
            "xtrain/v1/training_service_pb2*.py not found: build the target xtrain_python_proto and pass "
            "proto_path=<build>/python or set XTRAIN_PYTHON_PROTO") from error
    return pb2, pb2_grpc


class XtrainError(Exception):
    """A call failed: `code` is the grpc.StatusCode, `message` the server's sentence."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _error(rpc_error):
    return XtrainError(rpc_error.code(), rpc_error.details() or "")


class XtrainClient:
    """One method per RPC. Errors raise XtrainError. watch() reconnects from the last event seen;
    upload() checksums and chunks a file; download() resumes a partial file and verifies it."""

    def __init__(self, target=None, token=None, proto_path=None, timeout=60.0, plan_timeout=600.0,
                 reconnect_timeout=120.0, attempts=3, tls_ca=None, tls_cert=None, tls_key=None, tls=False):
        """TLS is on with `tls` or any of the PEM files (`tls_ca`: the CA the server's certificate chains
        to, else the system's roots; `tls_cert` and `tls_key`: a client certificate), each also from
        XTRAIN_TLS_CA, XTRAIN_TLS_CERT and XTRAIN_TLS_KEY; the token from XTRAIN_TOKEN."""
        self.pb, pb_grpc = load_generated(proto_path)
        self.target = target or os.environ.get("XTRAIN_SERVER") or "localhost:50051"
        token = token or os.environ.get("XTRAIN_TOKEN")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.plan_timeout = plan_timeout
        self.reconnect_timeout = reconnect_timeout
        self.attempts = max(1, attempts)
        # gRPC's own reconnection backoff (up to 120 s) would keep calls failing long after a restarted
        # server is back: cap it.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        tls_ca = tls_ca or os.environ.get("XTRAIN_TLS_CA")
        tls_cert = tls_cert or os.environ.get("XTRAIN_TLS_CERT")
        tls_key = tls_key or os.environ.get("XTRAIN_TLS_KEY")
        if tls or tls_ca or tls_cert or tls_key:
            if bool(tls_cert) != bool(tls_key):
                raise ValueError("a client certificate needs both tls_cert and tls_key")

            def pem(path):
                if not path:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            credentials = grpc.ssl_channel_credentials(root_certificates=pem(tls_ca), private_key=pem(tls_key),
                                                       certificate_chain=pem(tls_cert))
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = pb_grpc.TrainingServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def job_spec(self, spec):
        """A JobSpec from a JobSpec, a dict in the proto's JSON mapping, or a JSON string."""
        if isinstance(spec, self.pb.JobSpec):
            return spec
        if isinstance(spec, str):
            return json_format.Parse(spec, self.pb.JobSpec())
        return json_format.ParseDict(spec, self.pb.JobSpec())

    def _unary(self, method, request, timeout, idempotent=True):
        delay = 0.1
        for attempt in range(1, self.attempts + 1):
            try:
                return method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                retry = idempotent and error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.attempts
                if not retry:
                    raise _error(error) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def plan(self, spec):
        """PlanJobResponse: the plan, the devices it fits. RESOURCE_EXHAUSTED: no plan fits."""
        request = self.pb.PlanJobRequest(spec=self.job_spec(spec))
        return self._unary(self._stub.PlanJob, request, self.plan_timeout)

    def submit(self, spec, client_request_id=None):
        """SubmitJobResponse. Retries on UNAVAILABLE keep one request id, so the job is queued once."""
        request = self.pb.SubmitJobRequest(spec=self.job_spec(spec),
                                           client_request_id=client_request_id or f"py-{uuid.uuid4().hex}")
        return self._unary(self._stub.SubmitJob, request, self.plan_timeout)

    def get(self, job_id):
        return self._unary(self._stub.GetJob, self.pb.GetJobRequest(job_id=job_id), self.timeout).job

    def list(self, states=(), labels=None, page_size=0, page_token=""):
        """ListJobsResponse: a page of jobs, newest first. `states` takes JobState values or names."""
        request = self.pb.ListJobsRequest(
            states=[self.pb.JobState.Value(s) if isinstance(s, str) else s for s in states],
            labels=labels or {}, page_size=page_size, page_token=page_token)
        return self._unary(self._stub.ListJobs, request, self.timeout)

    def cancel(self, job_id):
        # Not retried: a repeat after a lost answer reports FAILED_PRECONDITION for a job it cancelled.
        return self._unary(self._stub.CancelJob, self.pb.CancelJobRequest(job_id=job_id), self.timeout,
                           idempotent=False).job

    def watch(self, job_id, from_sequence=0):
        """Yields the job's WatchJobResponses from `from_sequence` (0: the whole log) until its last event,
        reconnecting on UNAVAILABLE from the last sequence seen + 1: each event once, in order. Raises
        XtrainError(UNAVAILABLE) once the server has been unreachable for reconnect_timeout seconds."""
        next_sequence = max(from_sequence, 0)
        failing_since = None
        delay = 0.1
        while True:
            call = self._stub.WatchJob(self.pb.WatchJobRequest(job_id=job_id, from_sequence=next_sequence),
                                       metadata=self._metadata)
            try:
                for response in call:
                    failing_since, delay = None, 0.1
                    if response.event.sequence < next_sequence:
                        continue  # seen before this reconnect
                    next_sequence = response.event.sequence + 1
                    yield response
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise _error(error) from None
                now = time.monotonic()
                failing_since = failing_since or now
                left = failing_since + self.reconnect_timeout - now
                if left <= 0:
                    raise XtrainError(grpc.StatusCode.UNAVAILABLE,
                                      f"watching job {job_id}: the server has been unreachable for "
                                      f"{self.reconnect_timeout} s ({error.details()}); watch again from "
                                      f"sequence {max(next_sequence, 1)}") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()  # a no-op once the stream has ended; ends it when the caller stops early

    def upload(self, path, name=None):
        """ArtifactInfo of a file uploaded as initial weights (model.init_artifact_id)."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                size += len(chunk)
        header = self.pb.UploadArtifactRequest.Header(name=name or os.path.basename(path), size_bytes=size,
                                                      sha256=digest.hexdigest())

        def requests():
            yield self.pb.UploadArtifactRequest(header=header)
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                    yield self.pb.UploadArtifactRequest(data=chunk)

        try:
            return self._stub.UploadArtifact(requests(), metadata=self._metadata).artifact
        except grpc.RpcError as error:
            raise _error(error) from None

    def download(self, artifact_id, path):
        """ArtifactInfo of an artifact written to `path`: the bytes go to `path`.part, resuming from its
        size (also after a dropped stream), and are renamed to `path` once size and SHA-256 match."""
        partial = path + ".part"
        info = None
        failing_since = None
        delay = 0.1
        while True:
            offset = os.path.getsize(partial) if os.path.exists(partial) else 0
            call = self._stub.DownloadArtifact(self.pb.DownloadArtifactRequest(artifact_id=artifact_id, offset=offset),
                                               metadata=self._metadata)
            try:
                with open(partial, "ab") as out:
                    for response in call:
                        failing_since, delay = None, 0.1
                        if response.HasField("info"):
                            info = response.info
                        if response.offset != offset:
                            raise XtrainError(grpc.StatusCode.DATA_LOSS,
                                              f"artifact {artifact_id}: bytes from offset {response.offset} where "
                                              f"{offset} was expected")
                        out.write(response.data)
                        offset += len(response.data)
                break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    if os.path.exists(partial) and os.path.getsize(partial) == 0:
                        os.remove(partial)
                    raise _error(error) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.reconnect_timeout:
                    raise _error(error) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()
        if info is None:
            raise XtrainError(grpc.StatusCode.DATA_LOSS, f"artifact {artifact_id}: the server sent no description")
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
        size = os.path.getsize(partial)
        if size != info.size_bytes or digest.hexdigest() != info.sha256.lower():
            os.remove(partial)
            raise XtrainError(grpc.StatusCode.DATA_LOSS,
                              f"artifact {artifact_id}: the download has {size} bytes with SHA-256 "
                              f"{digest.hexdigest()} but the artifact has {info.size_bytes} bytes with SHA-256 "
                              f"{info.sha256}; the partial file was removed: download it again")
        os.replace(partial, path)
        return info
