#!/usr/bin/env python3
"""Asks a gRPC server's grpc.health.v1.Health/Check and exits 0 only when it answers SERVING.

xtrainctl has no health subcommand, so the container's HEALTHCHECK uses this (python3-grpcio only: the
two messages are encoded by hand, no generated code). Exit codes: 0 SERVING, 1 anything else.

Usage: grpc_health_check.py [--address HOST:PORT] [--service NAME] [--timeout S]
                            [--tls-ca FILE [--tls-cert FILE --tls-key FILE] [--tls-name NAME]]
"""

import argparse
import sys

import grpc

METHOD = "/grpc.health.v1.Health/Check"
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def EncodeRequest(service):
    """HealthCheckRequest{service = 1 (string)}; the empty service is the whole server."""
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long for this encoder")
    return b"\x0a" + bytes([len(data)]) + data


def DecodeStatus(data):
    """HealthCheckResponse{status = 1 (enum, varint)}; an absent field is 0 (UNKNOWN)."""
    i = 0
    status = 0
    while i < len(data):
        key = data[i]
        i += 1
        if key == 0x08:
            value, shift = 0, 0
            while True:
                byte = data[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            status = value
        else:
            raise ValueError(f"unexpected field key {key:#x} in HealthCheckResponse")
    return status


def Read(path):
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--tls-ca", help="CA of the server's certificate: speak TLS")
    parser.add_argument("--tls-cert", help="client certificate, for a server with --tls-client-ca")
    parser.add_argument("--tls-key", help="its private key")
    parser.add_argument("--tls-name", help="the name the server's certificate holds, if not the address's host")
    args = parser.parse_args(argv[1:])
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Read(args.tls_ca),
            private_key=Read(args.tls_key) if args.tls_key else None,
            certificate_chain=Read(args.tls_cert) if args.tls_cert else None)
        options = [("grpc.ssl_target_name_override", args.tls_name)] if args.tls_name else []
        channel = grpc.secure_channel(args.address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    check = channel.unary_unary(METHOD, request_serializer=lambda r: r, response_deserializer=lambda r: r)
    try:
        status = DecodeStatus(check(EncodeRequest(args.service), timeout=args.timeout))
    except grpc.RpcError as e:
        print(f"health check of {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    name = STATUS_NAMES.get(status, str(status))
    print(f"health check of {args.address}: {name}")
    return 0 if status == 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
