#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// How a DataLoader cuts a dataset into batches.
struct LoaderOptions {
  int64_t batch_size = 32;
  bool shuffle = true;    // a fresh seeded permutation each epoch; false keeps dataset order
  bool drop_last = true;  // drop the final partial batch
  uint64_t seed = 0;      // epoch e's order comes from MixSeed(seed, e)
  int64_t prefetch = 4;   // most batches gathered ahead of the consumer (queue depth)
  int64_t workers = 1;    // background threads that gather batches
};

// Batch `index` of `epoch`: the gathered examples and which dataset rows they are.
struct ExampleBatch {
  torch::Tensor inputs;
  torch::Tensor targets;  // undefined when the dataset has none
  torch::Tensor indices;  // int64 (batch) dataset rows
  int64_t epoch = 0;
  int64_t index = 0;
};

// Where a loader stands: Next() returns batch `batch` of `epoch` next.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t batch = 0;
  bool operator==(const LoaderPosition&) const = default;
};

// Gathers batches on background threads ahead of the consumer and hands them out in order. Epoch
// e's order depends only on (seed, e), never on thread timing, so StartEpoch(e, k) yields exactly
// the batches k, k+1, ... of an uninterrupted epoch e. The caller applies the task adapter.
class DataLoader {
 public:
  // InvalidArgument for an invalid dataset, batch_size/prefetch/workers < 1, or options that give
  // no batch at all (drop_last with fewer examples than batch_size).
  static absl::StatusOr<std::unique_ptr<DataLoader>> Create(
      std::shared_ptr<const TensorDataset> dataset, const LoaderOptions& options);

  // Stops the workers (abandoning batches in flight) and joins them.
  ~DataLoader();

  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Begins `epoch` at batch `skip_batches` (0..num_batches()), discarding anything prefetched.
  absl::Status StartEpoch(int64_t epoch, int64_t skip_batches = 0);

  // The next batch of the current epoch, blocking until it is gathered; nullopt at the epoch's end,
  // before the first StartEpoch, or after a worker failed (see status()).
  std::optional<ExampleBatch> Next();

  // The batch Next() returns next, as a resume point.
  LoaderPosition Position() const;

  // OK unless gathering a batch failed (a LibTorch error, e.g. out of memory).
  absl::Status status() const;

  // Batches gathered and waiting for Next(); never more than options.prefetch.
  int64_t buffered() const;

  int64_t num_batches() const { return num_batches_; }
  const LoaderOptions& options() const { return options_; }

 private:
  DataLoader(std::shared_ptr<const TensorDataset> dataset, const LoaderOptions& options,
             int64_t num_batches);

  void WorkerLoop();
  // True when a worker may start gathering batch next_claim_.
  bool CanClaim() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<const TensorDataset> dataset_;
  const LoaderOptions options_;
  const int64_t num_batches_;

  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;   // signalled when a batch becomes claimable or on shutdown
  absl::CondVar ready_cv_;  // signalled when a batch lands in ready_ or a worker fails
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool epoch_active_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by StartEpoch; stale work is dropped
  int64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  torch::Tensor order_ ABSL_GUARDED_BY(mu_);       // int64 permutation of the rows for this epoch
  int64_t next_claim_ ABSL_GUARDED_BY(mu_) = 0;    // next batch a worker gathers
  int64_t next_deliver_ ABSL_GUARDED_BY(mu_) = 0;  // next batch Next() returns
  std::map<int64_t, ExampleBatch> ready_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);

  std::vector<std::thread> workers_;
};

}  // namespace xtrain::core
