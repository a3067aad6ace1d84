#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/data/tensor_dataset.h"
#include "core/train/train_event.h"
#include "core/train/train_options.h"
#include "core/train/training_plan.h"

namespace xtrain::core::testing {

// Intra-op threads of every test run (stated so results do not depend on the machine).
inline constexpr int kTestThreads = 1;

// Training and validation examples drawn from one distribution.
struct Split {
  std::shared_ptr<const TensorDataset> train;
  std::shared_ptr<const TensorDataset> validation;
};

// Seeded synthetic classification data: images (1, spatial...) of `classes` patterns (the
// patterns depend on the seed, so both parts come from one draw).
Split Classification(int64_t train, int64_t validation, std::vector<int64_t> spatial, int64_t classes,
                     uint64_t seed);
// Seeded synthetic segmentation data: boxes of classes 1..classes-1 on background 0.
Split Segmentation(int64_t train, int64_t validation, std::vector<int64_t> spatial, int64_t classes,
                   uint64_t seed);
// Smooth images without targets (super-resolution, inpainting, generative).
Split Images(int64_t train, int64_t validation, std::vector<int64_t> spatial, uint64_t seed);

// Options of a small job: small_cnn on 16x16 classification, Adam, one thread.
TrainOptions SmallCnnOptions(uint64_t seed = 1);

// small_cnn (width 16) on 128 32x32 images of 4 classes at batch 32, one epoch of 4 steps, no
// validation: large enough that plans differ from exact.
TrainOptions PlannedCnnOptions(uint64_t model_seed, uint64_t data_seed);

// A job budget halfway between the smallest plan's and that of lean layers with every convolution
// exact (the cheapest plan without XConv), so the plan must convert a layer. `exact` is the job
// planned without a budget.
int64_t ConvertingBudget(const TrainOptions& options, const TrainingPlan& exact);

// Records the events of a run.
class EventLog {
 public:
  EventCallback Callback();
  std::vector<TrainEvent> Of(TrainEventKind kind) const;
  std::vector<double> StepLosses() const;
  const std::vector<TrainEvent>& all() const { return events_; }

 private:
  std::vector<TrainEvent> events_;
};

// Mean of the first `k` and of the last `k` values.
double MeanOfFirst(const std::vector<double>& values, size_t k);
double MeanOfLast(const std::vector<double>& values, size_t k);

// A fresh, empty directory under the test's temporary directory.
std::string FreshDir(const std::string& name);

// Named parameters and buffers of a module, cloned.
std::vector<std::pair<std::string, torch::Tensor>> Snapshot(torch::nn::Module& module);

}  // namespace xtrain::core::testing
