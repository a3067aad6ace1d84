# xtrain-server, xtrain-worker and xtrainctl in one image (README: Deploying on Kubernetes).
#
#   docker build -t xtrain:cpu .                   # Debian 12, Debian's LibTorch 1.13 (CPU)
#   docker build -t xtrain:cuda --build-arg BASE=cuda .
#
# The build stage runs the commands CI runs on a clean clone (.ci/run -> make test): the Makefile's deps
# (scripts/install-deps.sh) and its build, limited to the three service binaries (make build-service-bins).
# tests/deploy/check_dockerfile.py fails when this file drifts from the Makefile, CMake or the server's ports.
#
# BASE=cuda: NOT built or run on the project's machines (no container engine, no GPU there); written to the
# documented recipe and checked only by check_dockerfile.py. NVIDIA publishes no nvidia/cuda image on
# Debian 12, and install-deps.sh is Debian 12's, so the CUDA stage is debian:12 with NVIDIA's Debian 12
# CUDA repository (nvcc and headers: CUDA LibTorch's CMake config looks for them) and PyTorch's
# cxx11-ABI LibTorch (Debian's gRPC and protobuf use that ABI), found first through CMAKE_PREFIX_PATH.
# Its libraries (CUDA runtime, cuBLAS, cuDNN bundled) come into the runtime stage as unpackaged libraries;
# the node's driver comes from the NVIDIA container toolkit when the pod asks for nvidia.com/gpu.
ARG BASE=cpu

FROM debian:12 AS toolchain-cpu
# Makefile's CMAKE_FLAGS: the CPU build needs none.
ENV CMAKE_FLAGS=

FROM debian:12 AS toolchain-cuda
ARG CUDA_REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
ARG CUDA_PACKAGES="cuda-toolkit-12-4 cudnn9-cuda-12"
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu124/libtorch-cxx11-abi-shared-with-deps-2.4.1%2Bcu124.zip
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl unzip \
 && curl -fsSL "$CUDA_REPO/cuda-keyring_1.1-1_all.deb" -o /tmp/cuda-keyring.deb \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get update -qq && apt-get install -y -qq --no-install-recommends $CUDA_PACKAGES \
 && curl -fsSL "$LIBTORCH_URL" -o /tmp/libtorch.zip && unzip -q /tmp/libtorch.zip -d /opt && rm /tmp/libtorch.zip \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:$PATH
# The CUDA LibTorch before Debian's CPU one (which install-deps.sh installs as well).
ENV CMAKE_FLAGS=-DCMAKE_PREFIX_PATH=/opt/libtorch

FROM toolchain-${BASE} AS build
WORKDIR /src
COPY . .
RUN bash scripts/install-deps.sh
RUN make build-service-bins
# The Debian packages that hold the binaries' shared libraries, and copies of those no package holds.
RUN bash scripts/collect-runtime-libs.sh /out build/server/xtrain-server build/server/worker/xtrain-worker build/client/xtrainctl

FROM debian:12-slim AS runtime
COPY --from=build /out/runtime-packages /tmp/runtime-packages
# python3-grpcio: the HEALTHCHECK's client (scripts/grpc_health_check.py).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3-grpcio $(cat /tmp/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages
COPY --from=build /out/lib/ /usr/local/lib/xtrain/
RUN echo /usr/local/lib/xtrain > /etc/ld.so.conf.d/xtrain.conf && ldconfig
# The server starts its worker from next to itself (--worker's default).
COPY --from=build /src/build/server/xtrain-server /src/build/server/worker/xtrain-worker /src/build/client/xtrainctl /usr/local/bin/
COPY scripts/grpc_health_check.py /usr/local/lib/xtrain/grpc_health_check.py
# A fixed non-root uid, so volumes can be prepared for it (the chart's fsGroup).
RUN groupadd --gid 10001 xtrain \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/xtrain --shell /usr/sbin/nologin xtrain \
 && mkdir -p /var/lib/xtrain /data && chown 10001:10001 /var/lib/xtrain
USER 10001:10001
# Serve on every interface (the server's default is loopback); metrics listen on the same host.
ENV XTRAIN_LISTEN=0.0.0.0:50051 \
    XTRAIN_DATA_DIR=/var/lib/xtrain \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME /var/lib/xtrain
# gRPC (--listen) and Prometheus metrics (--metrics-port).
EXPOSE 50051 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "/usr/local/lib/xtrain/grpc_health_check.py", "--address", "127.0.0.1:50051"]
# SIGTERM checkpoints running jobs and exits within --grace-seconds (25): docker stop -t 30 leaves it room.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/xtrain-server"]
