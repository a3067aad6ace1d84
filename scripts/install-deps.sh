#!/usr/bin/env bash
# Installs every Debian package the build, tests and benchmarks need. Idempotent: installs only what is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # LibTorch calls libblas.so.3; reference BLAS is >10x slower
  libabsl-dev             # absl::Status / StatusOr
  libgtest-dev libgmock-dev
  python3-torch           # the TORCH_LIBRARY test loads the op library from Python
  python3-torchvision     # scripts/export_torchvision.py and its finetuning tests
  python3-matplotlib      # benchmark plots
  zlib1g-dev              # gzipped IDX files
  libstb-dev              # PNG/JPEG decoding for image-folder datasets (header-only stb_image)
  dataset-fashion-mnist   # the real data set the tests and the accuracy benchmark use
  # The service (server/, client/): gRPC and protobuf, Asio, the SQLite job store, logs, YAML config.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libboost-dev libsqlite3-dev libspdlog-dev libyaml-cpp-dev libssl-dev
  python3-grpcio python3-protobuf   # the Python client, generated from the same proto
  openssl                 # the TLS tests make their certificates with the openssl command
  prometheus-cpp-dev      # the server's /metrics endpoint
  libpqxx-dev postgresql  # the PostgreSQL job store several replicas share; its tests start their own server
  prometheus              # promtool and the Prometheus server the metrics tests scrape with
  clang libclang-rt-14-dev  # libFuzzer (make fuzz)
  # The deploy tests (tests/deploy): the Go renderer of the Helm chart (no helm binary in Debian) with
  # Debian's sprig and yaml.v3, and node for the schema validator (its npm packages: tests/deploy/setup.sh).
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev
  nodejs
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm: Debian's own package, unless the installed nodejs brings npm itself (NodeSource's conflicts with it).
if ! command -v npm >/dev/null; then
  npm_sudo=""
  [[ $(id -u) -ne 0 ]] && npm_sudo="sudo"
  $npm_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
fi

# Make sure the OpenMP OpenBLAS serves libblas.so.3 (the reference BLAS may have been installed first).
blas=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp | head -1 || true)
if [[ -n $blas ]] && [[ $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu) != "$(readlink -f "$blas")" ]]; then
  ${sudo_cmd:-} update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas"
fi
lapack=$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp | head -1 || true)
if [[ -n $lapack ]] && [[ $(readlink -f /etc/alternatives/liblapack.so.3-x86_64-linux-gnu) != "$(readlink -f "$lapack")" ]]; then
  ${sudo_cmd:-} update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$lapack"
fi
exit 0
