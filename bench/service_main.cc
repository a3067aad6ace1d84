// xtrain-service-bench: `xtrain-bench service` on its own, without LibTorch (a service-only tree builds it).
#include "bench/service_bench.h"

int main(int argc, char** argv) { return xtrain::bench::RunServiceBench(argc, argv); }
