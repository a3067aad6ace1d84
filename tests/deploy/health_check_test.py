#!/usr/bin/env python3
"""scripts/grpc_health_check.py (the image's HEALTHCHECK) against an in-process grpc.health.v1 server:
exit 0 for SERVING only; 1 for NOT_SERVING, an unknown service (NOT_FOUND) and a closed port."""

import os
import subprocess
import sys
from concurrent import futures

import grpc

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "grpc_health_check.py")
# HealthCheckResponse bytes by service name: status field 1 as a varint.
STATUS = {"": b"\x08\x01", "draining": b"\x08\x02"}


def Check(request, context):
    service = request[2:].decode() if request else ""  # HealthCheckRequest{service = 1}
    if service not in STATUS:
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return STATUS[service]


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(Check, request_deserializer=None, response_serializer=None)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cases = [([], 0, "SERVING"), (["--service", "draining"], 1, "NOT_SERVING"),
             (["--service", "nothing"], 1, "NOT_FOUND")]
    failures = 0
    for extra, want, word in cases:
        done = subprocess.run([sys.executable, SCRIPT, "--address", f"127.0.0.1:{port}", *extra],
                              capture_output=True, text=True)
        ok = done.returncode == want and word in done.stdout + done.stderr
        print(f"{extra or 'server'}: exit {done.returncode} {'as expected' if ok else 'WRONG'}: {(done.stdout + done.stderr).strip()}")
        failures += not ok
    server.stop(0)
    done = subprocess.run([sys.executable, SCRIPT, "--address", f"127.0.0.1:{port}", "--timeout", "1"],
                          capture_output=True, text=True)
    ok = done.returncode == 1
    print(f"stopped server: exit {done.returncode} {'as expected' if ok else 'WRONG'}")
    failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
