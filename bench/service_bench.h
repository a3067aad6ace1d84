#pragma once

namespace xtrain::bench {

// `xtrain-bench service` and `xtrain-service-bench`: the service's latencies, measured against a real
// xtrain-server this starts on loopback with a fresh data dir (killed and removed at the end, also on
// failure). `argv[0]` is the command's name; flags follow (see --help). Returns the exit status: 0 when
// every figure was measured (goals missed or not), 1 when one failed, 2 on a bad command line.
int RunServiceBench(int argc, char** argv);

}  // namespace xtrain::bench
