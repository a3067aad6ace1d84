#include "core/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace xtrain::core {

LrSchedule::LrSchedule(const TrainOptions::Schedule& options, double base_lr, int64_t total_steps)
    : options_(options), base_lr_(base_lr), total_steps_(total_steps) {}

double LrSchedule::At(int64_t step) const {
  if (step < options_.warmup_steps) {
    return base_lr_ * static_cast<double>(step + 1) / static_cast<double>(options_.warmup_steps);
  }
  const int64_t after = step - options_.warmup_steps;
  switch (options_.kind) {
    case ScheduleKind::kNone:
      return base_lr_;
    case ScheduleKind::kStep:
      return base_lr_ * std::pow(options_.gamma, static_cast<double>(after / options_.step_size));
    case ScheduleKind::kCosine: {
      const int64_t span = std::max<int64_t>(1, total_steps_ - options_.warmup_steps);
      const double t = static_cast<double>(std::min(after, span)) / static_cast<double>(span);
      return base_lr_ * 0.5 * (1.0 + std::cos(M_PI * t));
    }
  }
  return base_lr_;
}

}  // namespace xtrain::core
