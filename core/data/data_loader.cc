#include "core/data/data_loader.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/util/mix_seed.h"
#include "core/util/status_macros.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Create(
    std::shared_ptr<const TensorDataset> dataset, const LoaderOptions& options) {
  if (dataset == nullptr) return absl::InvalidArgumentError("data loader: dataset is null");
  if (absl::Status status = ValidateDataset(*dataset); !status.ok()) return status;
  if (options.batch_size < 1 || options.prefetch < 1 || options.workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data loader: batch_size (", options.batch_size, "), prefetch (", options.prefetch,
        ") and workers (", options.workers, ") must all be at least 1"));
  }
  const int64_t n = dataset->size();
  const int64_t batches = options.drop_last ? n / options.batch_size
                                            : (n + options.batch_size - 1) / options.batch_size;
  if (batches == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("data loader: ", n, " examples make no batch of ", options.batch_size,
                     "; lower batch_size or set drop_last = false"));
  }
  return std::unique_ptr<DataLoader>(new DataLoader(std::move(dataset), options, batches));
}

DataLoader::DataLoader(std::shared_ptr<const TensorDataset> dataset, const LoaderOptions& options,
                       int64_t num_batches)
    : dataset_(std::move(dataset)), options_(options), num_batches_(num_batches) {
  workers_.reserve(options_.workers);
  for (int64_t i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

DataLoader::~DataLoader() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_cv_.SignalAll();
    ready_cv_.SignalAll();
  }
  for (std::thread& worker : workers_) worker.join();
}

absl::Status DataLoader::StartEpoch(int64_t epoch, int64_t skip_batches) {
  if (epoch < 0 || skip_batches < 0 || skip_batches > num_batches_) {
    return absl::InvalidArgumentError(
        absl::StrCat("data loader: cannot start epoch ", epoch, " at batch ", skip_batches,
                     "; use epoch >= 0 and a batch in 0..", num_batches_));
  }
  XTRAIN_ASSIGN_OR_RETURN(torch::Tensor order, GuardTorch("data loader", [&]() -> absl::StatusOr<torch::Tensor> {
    if (!options_.shuffle) return torch::arange(dataset_->size(), torch::kLong).to(dataset_->inputs.device());
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(MixSeed(options_.seed, static_cast<uint64_t>(epoch)));
    return torch::randperm(dataset_->size(), gen, torch::kLong).to(dataset_->inputs.device());
  }));
  absl::MutexLock lock(&mu_);
  ++generation_;
  epoch_active_ = true;
  epoch_ = epoch;
  order_ = std::move(order);
  next_claim_ = skip_batches;
  next_deliver_ = skip_batches;
  ready_.clear();
  status_ = absl::OkStatus();
  work_cv_.SignalAll();
  return absl::OkStatus();
}

std::optional<ExampleBatch> DataLoader::Next() {
  absl::MutexLock lock(&mu_);
  while (true) {
    if (!epoch_active_ || next_deliver_ >= num_batches_ || !status_.ok() || stopping_) {
      return std::nullopt;
    }
    auto it = ready_.find(next_deliver_);
    if (it != ready_.end()) {
      ExampleBatch batch = std::move(it->second);
      ready_.erase(it);
      ++next_deliver_;
      work_cv_.SignalAll();
      return batch;
    }
    ready_cv_.Wait(&mu_);
  }
}

LoaderPosition DataLoader::Position() const {
  absl::MutexLock lock(&mu_);
  return {epoch_, next_deliver_};
}

absl::Status DataLoader::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

int64_t DataLoader::buffered() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(ready_.size());
}

bool DataLoader::CanClaim() const {
  return epoch_active_ && status_.ok() && next_claim_ < num_batches_ &&
         next_claim_ < next_deliver_ + options_.prefetch;
}

void DataLoader::WorkerLoop() {
  // Gathering never needs autograd history, and grad mode is per thread.
  torch::NoGradGuard no_grad;
  while (true) {
    uint64_t generation = 0;
    ExampleBatch batch;
    torch::Tensor order;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && !CanClaim()) work_cv_.Wait(&mu_);
      if (stopping_) return;
      generation = generation_;
      order = order_;
      batch.epoch = epoch_;
      batch.index = next_claim_++;
    }
    const absl::Status failure = GuardTorch(
        [&] { return absl::StrCat("data loader: gathering batch ", batch.index); },
        [&]() -> absl::Status {
          const int64_t begin = batch.index * options_.batch_size;
          const int64_t end = std::min(begin + options_.batch_size, dataset_->size());
          batch.indices = order.slice(0, begin, end);
          TensorDataset gathered = GatherExamples(*dataset_, batch.indices);
          batch.inputs = std::move(gathered.inputs);
          batch.targets = std::move(gathered.targets);
          return absl::OkStatus();
        });
    absl::MutexLock lock(&mu_);
    if (generation != generation_) continue;  // StartEpoch moved on; drop this batch
    if (failure.ok()) {
      ready_.emplace(batch.index, std::move(batch));
    } else if (status_.ok()) {
      status_ = failure;
    }
    ready_cv_.SignalAll();
  }
}

}  // namespace xtrain::core
