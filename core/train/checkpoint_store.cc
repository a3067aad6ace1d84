#include "core/train/checkpoint_store.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::core {
namespace {

namespace fs = std::filesystem;

constexpr char kPrefix[] = "checkpoint-";
constexpr char kSuffix[] = ".pt";

// The step in a checkpoint file name, or -1 for other files.
int64_t StepOf(const std::string& name) {
  if (!absl::StartsWith(name, kPrefix) || !absl::EndsWith(name, kSuffix)) return -1;
  const std::string digits =
      name.substr(sizeof(kPrefix) - 1, name.size() - (sizeof(kPrefix) - 1) - (sizeof(kSuffix) - 1));
  int64_t step = -1;
  if (digits.empty() || !absl::SimpleAtoi(digits, &step)) return -1;
  return step;
}

}  // namespace

absl::StatusOr<CheckpointStore> CheckpointStore::Open(const std::string& dir, int64_t keep) {
  if (keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint.keep is ", keep, "; keep at least 1 checkpoint"));
  }
  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir)) {
    return absl::UnavailableError(absl::StrCat("cannot create checkpoint directory ", dir, ": ",
                                               error ? error.message() : "not a directory"));
  }
  return CheckpointStore(dir, keep);
}

std::string CheckpointStore::PathFor(int64_t step) const {
  return (fs::path(dir_) / absl::StrFormat("%s%08d%s", kPrefix, step, kSuffix)).string();
}

absl::StatusOr<std::string> CheckpointStore::Save(const torch::nn::Module& model,
                                                  const torch::optim::Optimizer& optimizer,
                                                  const CheckpointState& state) {
  const std::string path = PathFor(state.step);
  if (absl::Status s = Checkpoint::Write(path, model, optimizer, state); !s.ok()) return s;
  std::vector<std::string> files = List(dir_);
  for (size_t i = 0; i + static_cast<size_t>(keep_) < files.size(); ++i) {
    std::error_code ignored;  // a file another process removed first is not an error
    fs::remove(files[i], ignored);
  }
  return path;
}

std::vector<std::string> CheckpointStore::List(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const int64_t step = StepOf(it->path().filename().string());
    if (step >= 0 && it->is_regular_file(error)) found.emplace_back(step, it->path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> files;
  for (auto& [step, path] : found) files.push_back(std::move(path));
  return files;
}

absl::StatusOr<std::string> CheckpointStore::Latest(const std::string& dir) {
  std::vector<std::string> files = List(dir);
  if (files.empty()) return absl::NotFoundError(absl::StrCat("no checkpoint in ", dir));
  return files.back();
}

}  // namespace xtrain::core
