#pragma once

#include <cstdint>

#include "core/train/train_options.h"

namespace xtrain::core {

// The learning rate of each step: a linear warm-up, then constant, step decay or cosine decay.
// A pure function of the step, so a resumed job needs only its step counter.
class LrSchedule {
 public:
  // `total_steps`: steps of the whole job (the cosine decays over those after the warm-up).
  LrSchedule(const TrainOptions::Schedule& options, double base_lr, int64_t total_steps);

  // The rate of 0-based step `step`.
  double At(int64_t step) const;

 private:
  TrainOptions::Schedule options_;
  double base_lr_;
  int64_t total_steps_;
};

}  // namespace xtrain::core
