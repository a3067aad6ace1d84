#pragma once

#include <cstdint>

namespace xtrain::core {

// Bytes a device's allocator has handed out: now, and the most since the last ResetPeak. The CPU
// meter counts exactly (cpu_memory_meter.h); the CUDA meter reads the caching allocator's
// statistics (cuda_memory_meter.h), whose blocks are rounded to 512 bytes.
class MemoryMeter {
 public:
  virtual ~MemoryMeter() = default;
  virtual int64_t current_bytes() const = 0;
  virtual int64_t peak_bytes() const = 0;
  // Sets the peak to the current bytes, so peak_bytes() covers what happens from now on.
  virtual void ResetPeak() = 0;
};

}  // namespace xtrain::core
