# The README's two commands: `make demo` and `make test`. Both install what is missing first.
BUILD_DIR ?= build
JOBS ?= 2
BUILD_TYPE ?= Release
CMAKE_FLAGS ?=
# ccache must accept precompiled headers.
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime
# Paths under the checkout are hashed relative to it, so a clone in another folder (CI) hits the cache.
export CCACHE_BASEDIR ?= $(CURDIR)

.PHONY: all deps configure build test demo demo-core demo-layer bench bench-quick sanitize sanitize-asan sanitize-tsan sanitize-tsan-ci sanitize-core fuzz clean

all: build

deps:
	bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	bash scripts/run-tests.sh $(BUILD_DIR)

# The service's three binaries and nothing else (the container image builds these: Dockerfile).
.PHONY: build-service-bins
build-service-bins: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target xtrain-server xtrain-worker xtrainctl

# The main job end to end through the service: xtrain-server on its SQLite store, a Fashion-MNIST job
# planned into about half of its exact peak, submitted, watched and reported by xtrainctl.
demo: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target xtrain-server xtrain-worker xtrainctl
	bash scripts/demo.sh $(BUILD_DIR)

# The core alone, in one process: plan a ResNet into 85% of its exact memory, train, evaluate.
demo-core: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target train-demo
	$(BUILD_DIR)/examples/train-demo

# The operator alone on a ResNet-18 stage-1 layer: bytes kept, time and gradient error per r.
demo-layer: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target xconv-demo
	$(BUILD_DIR)/examples/xconv-demo

# Benchmarks write dated results under bench/results/ at a stated thread count. `bench` runs them
# all (the layer grid takes one to two hours at 1 thread here); `bench-quick` runs the quick slices.
BENCH_THREADS ?= 1
BENCH_DATE := $(shell date +%F)
BENCH_TOOL := $(BUILD_DIR)/bench/xtrain-bench

.PHONY: bench-tool bench-layer bench-memory bench-accuracy bench-service bench-finetune
bench-tool: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target xtrain-bench

bench-layer: bench-tool
	$(BENCH_TOOL) layer --threads $(BENCH_THREADS) --json bench/results/layer-cpu-$(BENCH_DATE).jsonl --markdown bench/results/layer-cpu-$(BENCH_DATE).md
	/usr/bin/python3 bench/plot_layer.py bench/results/layer-cpu-$(BENCH_DATE).jsonl bench/results/layer-cpu-$(BENCH_DATE).png

# The memory model calibrates with at least 2 threads (LibTorch picks conv kernels by thread count).
bench-memory: bench-tool
	$(BENCH_TOOL) memory --threads 2 --json bench/results/memory-cpu-$(BENCH_DATE).jsonl --markdown bench/results/memory-cpu-$(BENCH_DATE).md
	/usr/bin/python3 bench/plot_memory.py bench/results/memory-cpu-$(BENCH_DATE).jsonl bench/results/memory-cpu-$(BENCH_DATE).png

# Fashion-MNIST, small CNN: exact, lean (exact gradients) and XConv under budgets, one recipe for all.
# The run on record: 3 seeds of 10 epochs per arm and no fixed-r grid (2 h 14 min at 1 thread here, other
# work beside it; the tool's defaults, 5 seeds of 12 epochs and the grid, take about twice as long).
ACCURACY_FLAGS ?= --seeds 3 --epochs 10 --grid ""
bench-accuracy: bench-tool
	$(BENCH_TOOL) accuracy --threads 1 $(ACCURACY_FLAGS) --json bench/results/accuracy-cpu-$(BENCH_DATE).jsonl --markdown bench/results/accuracy-cpu-$(BENCH_DATE).md --curves bench/results/accuracy-cpu-$(BENCH_DATE)-curves.jsonl
	/usr/bin/python3 bench/plot_accuracy.py bench/results/accuracy-cpu-$(BENCH_DATE)-curves.jsonl bench/results/accuracy-cpu-$(BENCH_DATE).png

# Bring your own model: torchvision's resnet18 and squeezenet1_1 (random weights) exported as TorchScript and
# benchmarked like the zoo's nets on 1x64x64 inputs, with the training step time exact against planned.
bench-finetune: bench-tool
	mkdir -p $(BUILD_DIR)/finetune-bench
	/usr/bin/python3 scripts/export_torchvision.py resnet18 $(BUILD_DIR)/finetune-bench/resnet18.pt --in-channels 1
	/usr/bin/python3 scripts/export_torchvision.py squeezenet1_1 $(BUILD_DIR)/finetune-bench/squeezenet1_1.pt --in-channels 1
	$(BENCH_TOOL) memory --threads 2 --script resnet18=$(BUILD_DIR)/finetune-bench/resnet18.pt,squeezenet1_1=$(BUILD_DIR)/finetune-bench/squeezenet1_1.pt --json bench/results/finetune-cpu-$(BENCH_DATE).jsonl --markdown bench/results/finetune-cpu-$(BENCH_DATE).md

bench: bench-layer bench-memory bench-accuracy bench-finetune

# The service against a real xtrain-server on loopback (about 2 minutes): unary latencies at 1/16/64 clients,
# PlanJob cold and cached, submit-to-first-step, 1,000 and 10,000 watchers. SERVICE_WORKER=path picks the
# worker (tests/server/xtrain-fake-worker runs it without LibTorch; the rows say which).
SERVICE_WORKER ?= $(BUILD_DIR)/server/worker/xtrain-worker
bench-service: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target xtrain-service-bench xtrain-server \
	  $(if $(filter $(BUILD_DIR)/server/worker/xtrain-worker,$(SERVICE_WORKER)),xtrain-worker) \
	  $(if $(filter $(BUILD_DIR)/tests/server/xtrain-fake-worker,$(SERVICE_WORKER)),xtrain-fake-worker)
	$(BUILD_DIR)/bench/xtrain-service-bench --server-bin $(BUILD_DIR)/server/xtrain-server --worker-bin $(SERVICE_WORKER) --json bench/results/service-cpu-$(BENCH_DATE).jsonl --markdown bench/results/service-cpu-$(BENCH_DATE).md

bench-quick: bench-tool
	$(BENCH_TOOL) layer --quick --json $(BUILD_DIR)/layer-quick.jsonl --markdown $(BUILD_DIR)/layer-quick.md
	$(BENCH_TOOL) memory --quick --json $(BUILD_DIR)/memory-quick.jsonl --markdown $(BUILD_DIR)/memory-quick.md
	$(BENCH_TOOL) accuracy --quick --json $(BUILD_DIR)/accuracy-quick.jsonl --markdown $(BUILD_DIR)/accuracy-quick.md

# Sanitizer builds of what they test, each in its own tree, so CI stays well under its hour:
# - ASan/UBSan (with leak checks) of the data parsers (xtrain_data_tests: IDX, CIFAR-10, .npy, image
#   folders, the loader), the code that reads untrusted files, and of the whole service (server,
#   client, their tests; LibTorch-free, so quick). The operator's, the memory model's and the trainer's
#   suites spend their time inside LibTorch and run tens of minutes under ASan: `make sanitize-core`
#   runs them when wanted (not in CI).
# - ThreadSanitizer (LibTorch is not TSan-built, so the service only). In CI (`sanitize-tsan-ci`): the
#   parts whose synchronisation is ours and visible to TSan: the store, the supervisor, the worker
#   frames, placement, and the client library and xtrainctl against an in-process server. The tests
#   through xtrain-server's gRPC callback API (`make sanitize-tsan` runs them all) are NOT in CI:
#   Debian's gRPC and Abseil are not TSan-built, and gRPC hands each call's messages and our reactors
#   between its threads through synchronisation TSan cannot see, so it reports those hand-offs (in
#   gRPC's header code, protobuf destructors, std::function moves) as races; suppressing them would
#   hide races in our reactors too. Our own locks are TSan-visible (server/common/mutex.h).
# The service trees' tests start the xtrain-worker that `make build` made.
SAN_WORKER := -DXTRAIN_WORKER_PATH=$(CURDIR)/$(BUILD_DIR)/server/worker/xtrain-worker
# -O1 -g1 (line tables: sanitizer reports keep file:line) compiles in about half the time of -O2 -g
# (scheduler.cc under ASan: 57 s against 108 s here), and -O1 is what the sanitizers' authors advise.
SAN_OPT := -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
SAN_CORE_TARGETS ?= xtrain_data_tests
SAN_CORE_EXCLUDE := python|NOT_BUILT

sanitize: sanitize-asan sanitize-tsan-ci

sanitize-core:
	$(MAKE) sanitize-asan SAN_CORE_TARGETS="xtrain_core_tests xtrain_data_tests xtrain_models_tests xtrain_train_tests"

sanitize-asan: build
	cmake -S . -B $(BUILD_DIR)-asan -G Ninja $(SAN_OPT) -DXTRAIN_SANITIZE=ON \
	  -DXTRAIN_BUILD_BENCH=OFF -DXTRAIN_BUILD_SERVICE=OFF
	cmake --build $(BUILD_DIR)-asan -j $(JOBS) --target $(SAN_CORE_TARGETS)
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 bash scripts/run-tests.sh $(BUILD_DIR)-asan -E '$(SAN_CORE_EXCLUDE)'
	cmake -S . -B $(BUILD_DIR)-asan-svc -G Ninja $(SAN_OPT) -DXTRAIN_SANITIZE=ON \
	  -DXTRAIN_BUILD_CORE=OFF -DXTRAIN_BUILD_BENCH=OFF $(SAN_WORKER)
	cmake --build $(BUILD_DIR)-asan-svc -j $(JOBS)
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 bash scripts/run-tests.sh $(BUILD_DIR)-asan-svc

TSAN_OPTIONS_ALL := halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$(CURDIR)/tests/tsan.supp
# The TSan tree: the service only (LibTorch is not TSan-built).
TSAN_CONFIGURE = cmake -S . -B $(BUILD_DIR)-tsan -G Ninja $(SAN_OPT) -DXTRAIN_TSAN=ON \
  -DXTRAIN_BUILD_CORE=OFF -DXTRAIN_BUILD_BENCH=OFF $(SAN_WORKER)
TSAN_CI_TARGETS := xtrain_store_tests xtrain_protocol_tests xtrain_supervisor_tests xtrain_placement_tests xtrain_client_tests \
  xtrain_metrics_tests xtrain_logging_tests

sanitize-tsan-ci:
	$(TSAN_CONFIGURE)
	cmake --build $(BUILD_DIR)-tsan -j $(JOBS) --target $(TSAN_CI_TARGETS)
	TSAN_OPTIONS=$(TSAN_OPTIONS_ALL) bash scripts/run-tests.sh $(BUILD_DIR)-tsan -LE real-server -E 'NOT_BUILT'

sanitize-tsan: build
	$(TSAN_CONFIGURE)
	cmake --build $(BUILD_DIR)-tsan -j $(JOBS)
	TSAN_OPTIONS=$(TSAN_OPTIONS_ALL) bash scripts/run-tests.sh $(BUILD_DIR)-tsan

# libFuzzer (clang): the spec text and wire parsers with validation, the worker protocol's decoder, the
# tokens file, the data set parsers (IDX, .npy, CIFAR-10, images) and the checkpoint and weights loader,
# each run FUZZ_SECONDS from fuzz/corpus/ (scripts/run-fuzzers.sh). Only the fuzz targets are built.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := fuzz_spec_text fuzz_job_spec fuzz_frames fuzz_tokens fuzz_idx fuzz_npy fuzz_cifar10 fuzz_image fuzz_checkpoint
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B $(BUILD_DIR)-fuzz -G Ninja $(SAN_OPT) -DXTRAIN_FUZZ=ON \
	  -DXTRAIN_BUILD_BENCH=OFF -DXTRAIN_BUILD_TESTS=OFF
	cmake --build $(BUILD_DIR)-fuzz -j $(JOBS) --target $(FUZZ_TARGETS) fuzz_checkpoint_seeds
	bash scripts/run-fuzzers.sh $(BUILD_DIR)-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan $(BUILD_DIR)-asan-svc $(BUILD_DIR)-tsan $(BUILD_DIR)-fuzz
