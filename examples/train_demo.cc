// `make demo`: the main job end to end on embedded defaults. A ResNet-18-style net learns
// Fashion-MNIST (Debian's dataset-fashion-mnist) under a memory budget of 85% of what exact training
// needs: the memory model is built, the planner picks probes per layer, the converted model trains one
// epoch with gradient-fidelity telemetry, and the measured peak is set against the budget.

#include <cstdio>
#include <memory>
#include <string>

#include "core/data/idx_reader.h"
#include "core/data/tensor_dataset.h"
#include "core/train/trainer.h"

namespace {

using namespace xtrain::core;

constexpr char kData[] = "/usr/share/datasets/fashion-mnist";

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "train-demo: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main() {
  absl::StatusOr<TensorDataset> train = LoadMnistFolder(kData, /*train=*/true);
  if (!train.ok()) return Fail(train.status());
  absl::StatusOr<TensorDataset> test = LoadMnistFolder(kData, /*train=*/false);
  if (!test.ok()) return Fail(test.status());
  absl::StatusOr<TensorDataset> train_part = Subset(*train, 12800);
  absl::StatusOr<TensorDataset> test_part = Subset(*test, 2000);
  if (!train_part.ok() || !test_part.ok()) return Fail(absl::InternalError("subset failed"));

  TrainOptions options;
  options.model.name = "resnet18";
  options.model.in_channels = 1;
  options.model.classes = 10;
  options.model.width = 16;
  options.model.depth = 1;
  options.model.seed = 1;
  options.data.train = std::make_shared<TensorDataset>(*std::move(train_part));
  options.data.validation = std::make_shared<TensorDataset>(*std::move(test_part));
  options.batch_size = 64;
  options.epochs = 1;
  options.seed = 1;
  options.threads = 2;
  options.optimizer.kind = OptimizerKind::kAdam;
  options.optimizer.lr = 2e-3;
  options.schedule.kind = ScheduleKind::kCosine;
  options.fidelity_interval = 50;

  // The budget: 85% of the exact job's predicted peak (a first pass plans nothing, predicts only).
  TrainOptions probe = options;
  probe.memory.predict = true;
  absl::StatusOr<std::unique_ptr<Trainer>> exact = Trainer::Create(probe);
  if (!exact.ok()) return Fail(exact.status());
  const int64_t exact_peak = (*exact)->predicted_peak_bytes();
  exact->reset();
  options.memory.budget_bytes = exact_peak * 85 / 100;
  std::printf("resnet18 (width 16) on Fashion-MNIST, 12800 images, batch 64, 2 threads\n");
  std::printf("exact training needs %.2f MiB; budget %.2f MiB (85%%)\n", exact_peak / 1048576.0,
              options.memory.budget_bytes / 1048576.0);

  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  if (!trainer.ok()) return Fail(trainer.status());
  std::printf("\nplan:\n%s\n", (*trainer)->plan()->Table().c_str());

  int64_t max_measured = 0;
  const absl::Status status = (*trainer)->Run([&](const TrainEvent& e) {
    if (e.kind == TrainEventKind::kStep) {
      max_measured = std::max(max_measured, e.measured_peak_bytes);
      if (e.step % 25 == 0 || e.fidelity) {
        std::printf("step %4ld  loss %.4f  lr %.5f  %6.0f samples/s  peak %.2f MiB (predicted %.2f)", e.step,
                    e.loss, e.lr, e.samples_per_second, e.measured_peak_bytes / 1048576.0,
                    e.predicted_peak_bytes / 1048576.0);
        if (e.fidelity) std::printf("  fidelity V_xconv/V_sgd %.3f", e.fidelity->ratio);
        std::printf("\n");
      }
    } else if (e.kind == TrainEventKind::kEpoch) {
      std::printf("epoch %ld: mean loss %.4f, test %s %.4f\n", e.epoch, e.loss, e.metric_name.c_str(),
                  e.metric_value);
    }
    std::fflush(stdout);
  });
  if (!status.ok()) return Fail(status);
  std::printf("\nmeasured peak %.2f MiB, predicted %.2f MiB, budget %.2f MiB: %s\n", max_measured / 1048576.0,
              (*trainer)->predicted_peak_bytes() / 1048576.0, options.memory.budget_bytes / 1048576.0,
              max_measured <= options.memory.budget_bytes ? "within budget" : "OVER BUDGET");
  return max_measured <= options.memory.budget_bytes ? 0 : 1;
}
