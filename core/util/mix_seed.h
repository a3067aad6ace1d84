#pragma once

// The seed mixer every seeded stream in core derives its seeds with (XConv's probes, the data
// loader's epoch order, the trainer's streams).

#include <cstdint>

namespace xtrain::core {

// A well-mixed 64-bit value for step `counter` of a stream seeded with `base` (SplitMix64).
constexpr uint64_t MixSeed(uint64_t base, uint64_t counter) {
  uint64_t z = base + 0x9E3779B97F4A7C15ULL * (counter + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace xtrain::core
