// Checkpoints: the file format round trip, the directory, weights files, and the promise that a
// stopped and resumed job ends bit for bit where an uninterrupted one does.
#include "core/train/checkpoint.h"

#include <signal.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/models/model_zoo.h"
#include "core/train/archive_check.h"
#include "core/train/checkpoint_store.h"
#include "core/train/trainer.h"
#include "core/train/training_plan.h"
#include "tests/train/train_test_util.h"

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;
using namespace ::xtrain::core::testing;

struct ResumeCase {
  std::string name;
  TrainOptions options;
  int64_t stop_after = 0;   // steps of the first leg
  bool stop_by_cancel = false;
};

void PrintTo(const ResumeCase& c, std::ostream* os) { *os << c.name; }

// Exact small_cnn with SGD momentum, weight decay and a step schedule, stopped mid-epoch.
ResumeCase ExactCnn() {
  ResumeCase c{"exact_small_cnn", SmallCnnOptions(41), 5};
  c.options.data.train = Classification(96, 0, {16, 16}, 4, 41).train;
  c.options.optimizer = {.kind = OptimizerKind::kSgdMomentum, .lr = 0.05, .weight_decay = 1e-4};
  c.options.schedule = {.kind = ScheduleKind::kStep, .warmup_steps = 2, .step_size = 4, .gamma = 0.5};
  return c;
}

// A planned XConv U-Net with BatchNorm on segmentation: Adam, cosine schedule, clipping and
// fidelity telemetry on; stopped exactly at an epoch's end.
ResumeCase PlannedUNet() {
  ResumeCase c{"planned_unet_batchnorm", {}, 6};
  TrainOptions& o = c.options;
  o.model = {.name = "unet", .in_channels = 1, .out_channels = 3, .width = 4, .depth = 2, .seed = 43};
  o.task.kind = TaskKind::kSegmentation;
  o.data.train = Segmentation(48, 0, {16, 16}, 3, 43).train;
  o.batch_size = 8;
  o.epochs = 2;
  o.seed = 43;
  o.optimizer = {.kind = OptimizerKind::kAdam, .lr = 0.01};
  o.schedule = {.kind = ScheduleKind::kCosine, .warmup_steps = 3};
  o.clip_grad_norm = 1.0;
  o.fidelity_interval = 2;
  o.memory.budget_bytes = 0;  // set from the exact prediction in the test
  o.threads = kTestThreads;
  return c;
}

// SqueezeNet (dropout: the global generator) with fixed probes and AdamW, stopped by cancellation.
ResumeCase DropoutSqueezeNet() {
  ResumeCase c{"squeezenet_dropout_cancelled", SmallCnnOptions(47), 4, true};
  c.options.model = {.name = "squeezenet1_1", .in_channels = 1, .classes = 4, .width = 8, .seed = 47};
  {
    const Split data = Classification(64, 16, {32, 32}, 4, 47);
    c.options.data.train = data.train;
    c.options.data.validation = data.validation;
  }
  c.options.batch_size = 8;
  c.options.memory.fixed_probes = 4;
  c.options.optimizer.kind = OptimizerKind::kAdamW;
  return c;
}

// A user's TorchScript module (tests/models/make_script_modules.py: BatchNorm, a residual, a functional
// conv left exact), its convs XConv at 4 probes behind lean layers, SGD momentum, validation and fidelity
// telemetry; the module is written in the test.
ResumeCase TorchScriptXConv() {
  ResumeCase c{"torchscript_xconv", SmallCnnOptions(53), 5};
  TrainOptions& o = c.options;
  o.model = {.name = kTorchScriptModel, .in_channels = 2, .classes = 4, .seed = 53};
  // The module takes two channels: the image and its mirror.
  auto two_channels = [](const TensorDataset& one) {
    TensorDataset two = one;
    two.inputs = torch::cat({one.inputs, one.inputs.flip(3)}, 1);
    return std::make_shared<const TensorDataset>(two);
  };
  const Split data = Classification(64, 16, {32, 32}, 4, 53);
  o.data.train = two_channels(*data.train);
  o.data.validation = two_channels(*data.validation);
  o.batch_size = 16;
  o.epochs = 2;
  o.optimizer = {.kind = OptimizerKind::kSgdMomentum, .lr = 0.05};
  o.memory.fixed_probes = 4;
  o.fidelity_interval = 2;
  o.threads = kTestThreads;
  return c;
}

class ResumeTest : public ::testing::TestWithParam<ResumeCase> {};

TEST_P(ResumeTest, ResumedJobMatchesUninterruptedBitForBit) {
  ResumeCase c = GetParam();
  if (c.name == "torchscript_xconv") {
    const char* source = std::getenv("XTRAIN_SOURCE_DIR");
    ASSERT_NE(source, nullptr) << "ctest sets XTRAIN_SOURCE_DIR";
    const std::string dir = FreshDir("torchscript_module");
    const std::string command = absl::StrCat("/usr/bin/python3 ", source, "/tests/models/make_script_modules.py ", dir,
                                             " > /dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
    c.options.model.script_path = dir + "/scripted.pt";
  }
  if (c.name == "planned_unet_batchnorm") {
    // Halfway between the smallest plan and the exact model: some layers XConv, some exact.
    absl::StatusOr<TrainingPlan> exact = PlanTraining(c.options);
    ASSERT_TRUE(exact.ok()) << exact.status();
    c.options.memory.budget_bytes = (exact->minimum_budget_bytes + exact->exact_peak_bytes) / 2;
  }
  // Uninterrupted (one job per process: each trainer is gone before the next is created).
  EventLog straight_log;
  std::vector<std::pair<std::string, torch::Tensor>> expected;
  std::vector<std::pair<std::string, int64_t>> straight_probes;
  int64_t straight_steps = 0;
  {
    absl::StatusOr<std::unique_ptr<Trainer>> straight = Trainer::Create(c.options);
    ASSERT_TRUE(straight.ok()) << straight.status();
    ASSERT_TRUE((*straight)->Run(straight_log.Callback()).ok());
    if (c.options.memory.budget_bytes > 0) {
      ASSERT_GT((*straight)->plan()->converted_layers(), 0);
      EXPECT_FALSE(straight_log.Of(TrainEventKind::kStep)[1].fidelity->layers.empty());
    }
    expected = Snapshot(*(*straight)->model());
    straight_probes = (*straight)->layer_probes();
    straight_steps = (*straight)->step();
  }

  // Stopped after `stop_after` steps with a checkpoint...
  TrainOptions first = c.options;
  first.checkpoint.dir = FreshDir(c.name);
  std::atomic<bool> cancel{false};
  EventLog first_log;
  {
    if (!c.stop_by_cancel) first.max_steps = c.stop_after;
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(first);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    const EventCallback record = first_log.Callback();
    const absl::Status status = (*trainer)->Run(
        [&](const TrainEvent& e) {
          record(e);
          if (c.stop_by_cancel && e.kind == TrainEventKind::kStep && e.step == c.stop_after) cancel = true;
        },
        &cancel);
    ASSERT_EQ(status.ok(), !c.stop_by_cancel) << status;
    ASSERT_EQ((*trainer)->step(), c.stop_after);
  }
  // ...and a fresh trainer continues from the checkpoint to the end.
  absl::StatusOr<std::string> latest = CheckpointStore::Latest(first.checkpoint.dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  TrainOptions second = c.options;
  second.checkpoint.resume_from = *latest;
  absl::StatusOr<std::unique_ptr<Trainer>> resumed = Trainer::Create(second);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->step(), c.stop_after);
  EventLog resumed_log;
  ASSERT_TRUE((*resumed)->Run(resumed_log.Callback()).ok());
  EXPECT_EQ((*resumed)->step(), straight_steps);
  EXPECT_EQ((*resumed)->layer_probes(), straight_probes);

  const auto actual = Snapshot(*(*resumed)->model());
  ASSERT_EQ(expected.size(), actual.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].first, actual[i].first);
    EXPECT_TRUE(torch::equal(expected[i].second, actual[i].second)) << expected[i].first;
  }
  // The step losses of the second leg repeat the uninterrupted run's exactly.
  const std::vector<double> all = straight_log.StepLosses();
  const std::vector<double> tail = resumed_log.StepLosses();
  ASSERT_EQ(tail.size(), all.size() - static_cast<size_t>(c.stop_after));
  for (size_t i = 0; i < tail.size(); ++i) EXPECT_EQ(tail[i], all[i + c.stop_after]) << "step " << i;
}

INSTANTIATE_TEST_SUITE_P(Jobs, ResumeTest,
                         ::testing::Values(ExactCnn(), PlannedUNet(), DropoutSqueezeNet(), TorchScriptXConv()),
                         [](const ::testing::TestParamInfo<ResumeCase>& info) { return info.param.name; });

// A job that resumes with a new plan (the service shrinking it to pack another job beside it):
// the checkpoint's weights and optimizer state load, then the model takes the given plan.
TEST(Resume, TakesANewPlanWithTheCheckpointsWeights) {
  TrainOptions options = SmallCnnOptions(45);
  options.data.validation = nullptr;
  options.memory.predict = true;
  options.checkpoint.dir = FreshDir("new_plan");
  options.max_steps = 3;
  std::vector<std::pair<std::string, torch::Tensor>> stopped;
  PlanSpec spec;
  {
    absl::StatusOr<std::unique_ptr<Trainer>> first = Trainer::Create(options);
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE((*first)->Run(nullptr).ok());
    stopped = Snapshot(*(*first)->model());
    spec = (*first)->training_plan()->spec;  // the exact plan it ran
  }
  ASSERT_FALSE(spec.lean_layers);
  for (PlanSpec::Layer& layer : spec.layers) layer.probes = 4;
  spec.lean_layers = true;

  TrainOptions second = options;
  second.max_steps = 0;
  second.checkpoint.resume_from = *CheckpointStore::Latest(options.checkpoint.dir);
  absl::StatusOr<std::unique_ptr<Trainer>> resumed = Trainer::Create(second, spec);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->step(), 3);
  EXPECT_EQ((*resumed)->layer_probes(),
            (std::vector<std::pair<std::string, int64_t>>{{"features.0", 4}, {"features.3", 4}}));
  EXPECT_EQ((*resumed)->training_plan()->spec, spec);
  // The weights it continues from are the checkpoint's.
  const auto parameters = (*resumed)->model()->named_parameters();
  for (const auto& [name, value] : stopped) {
    if (parameters.contains(name)) {
      EXPECT_TRUE(torch::equal(parameters[name], value)) << name;
    }
  }
  EventLog log;
  ASSERT_TRUE((*resumed)->Run(log.Callback()).ok());
  EXPECT_EQ((*resumed)->step(), (*resumed)->total_steps());
  const std::vector<TrainEvent> steps = log.Of(TrainEventKind::kStep);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.front().probes, (*resumed)->layer_probes());
  EXPECT_EQ(steps.front().predicted_peak_bytes, (*resumed)->training_plan()->predicted_peak_bytes);
}

TEST(Checkpoint, WritesAtomicallyAndReadsBack) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(model.ok());
  torch::optim::SGD optimizer((*model)->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  CheckpointState state;
  state.model_name = "small_cnn";
  state.step = 17;
  state.position = {2, 3};
  state.epoch_loss_sum = 1.25;
  state.epoch_loss_count = 3;
  state.lr = 0.01;
  state.global_generator_state = at::make_generator<at::CPUGeneratorImpl>(1).get_state();
  state.task_generator_state = at::make_generator<at::CPUGeneratorImpl>(2).get_state();
  state.lean_layers = true;
  XConvSettings settings;
  settings.probes = 12;
  settings.distribution = ProbeDistribution::kGaussian;
  state.xconv_layers = {{"features.0", settings}, {"features.3", XConvSettings{}}};
  const std::string dir = FreshDir("atomic");
  const std::string path = dir + "/one.pt";
  ASSERT_TRUE(Checkpoint::Write(path, **model, optimizer, state).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  absl::StatusOr<Checkpoint> read = Checkpoint::Read(path);
  ASSERT_TRUE(read.ok()) << read.status();
  const CheckpointState& back = read->state();
  EXPECT_EQ(back.model_name, "small_cnn");
  EXPECT_EQ(back.step, 17);
  EXPECT_EQ(back.position, (LoaderPosition{2, 3}));
  EXPECT_EQ(back.epoch_loss_sum, 1.25);
  EXPECT_EQ(back.epoch_loss_count, 3);
  EXPECT_TRUE(torch::equal(back.global_generator_state, state.global_generator_state));
  EXPECT_TRUE(torch::equal(back.task_generator_state, state.task_generator_state));
  EXPECT_TRUE(back.lean_layers);
  ASSERT_EQ(back.xconv_layers.size(), 2u);
  EXPECT_EQ(back.xconv_layers[0].path, "features.0");
  EXPECT_EQ(back.xconv_layers[0].settings.probes, 12);
  EXPECT_EQ(back.xconv_layers[0].settings.distribution, ProbeDistribution::kGaussian);
  EXPECT_EQ(back.xconv_layers[1].settings.probes, XConvSettings{}.probes);

  absl::StatusOr<std::shared_ptr<NetworkImpl>> other = BuildModel({.name = "small_cnn", .width = 4, .seed = 9});
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(read->LoadModel(**other).ok());
  for (const auto& p : (*model)->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), (*other)->named_parameters()[p.key()])) << p.key();
  }
}

// A write that fails partway (here the file size limit, EFBIG, as a full disk gives ENOSPC): the
// writer ends cleanly with the system's reason (LibTorch 1.13's zip writer aborted the process when
// told of a short write), leaves no temporary file, and what was at the path stays as it was.
TEST(Checkpoint, AFailedWriteKeepsTheFileBeforeAndSaysWhy) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 16});
  ASSERT_TRUE(model.ok());
  torch::optim::SGD optimizer((*model)->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  CheckpointState state;
  state.model_name = "small_cnn";
  state.step = 5;
  state.global_generator_state = at::make_generator<at::CPUGeneratorImpl>(1).get_state();
  state.task_generator_state = at::make_generator<at::CPUGeneratorImpl>(2).get_state();
  const std::string dir = FreshDir("failed-write");
  const std::string path = dir + "/checkpoint.pt";
  const absl::Status written = Checkpoint::Write(path, **model, optimizer, state);
  ASSERT_TRUE(written.ok()) << written;
  const uintmax_t size = std::filesystem::file_size(path);
  ASSERT_GT(size, 8192u);

  state.step = 6;
  struct rlimit old_limit {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction ignore {}, old_action {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);  // past the limit write(2) fails with EFBIG
  struct rlimit small = old_limit;
  small.rlim_cur = size / 2;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status failed = Checkpoint::Write(path, **model, optimizer, state);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  sigaction(SIGXFSZ, &old_action, nullptr);

  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_THAT(std::string(failed.message()), ::testing::HasSubstr(std::strerror(EFBIG)));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  absl::StatusOr<Checkpoint> kept = Checkpoint::Read(path);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->state().step, 5);
}

TEST(Checkpoint, ReadRejectsMissingAndForeignFiles) {
  EXPECT_EQ(Checkpoint::Read("/nonexistent/ckpt.pt").status().code(), absl::StatusCode::kNotFound);
  const std::string text = FreshDir("foreign") + "/notes.txt";
  std::ofstream(text) << "not a checkpoint";
  EXPECT_EQ(Checkpoint::Read(text).status().code(), absl::StatusCode::kInvalidArgument);
  // A LibTorch archive, but not ours.
  const std::string weights = FreshDir("foreign_weights") + "/w.pt";
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(model.ok());
  torch::save(*model, weights);
  const absl::StatusOr<Checkpoint> read = Checkpoint::Read(weights);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), HasSubstr("not an xtrain checkpoint"));
}

// LibTorch 1.13 reads archives without checking CRCs, and some damaged bytes crash it: every entry's
// CRC-32 is checked first, so one flipped bit anywhere in an entry's bytes is a clear DataLoss.
TEST(Checkpoint, AFlippedBitInAnyEntryIsCaughtBeforeLibTorchReadsIt) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(model.ok());
  torch::optim::SGD optimizer((*model)->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  CheckpointState state;
  state.model_name = "small_cnn";
  state.global_generator_state = torch::zeros({8}, torch::kByte);
  state.task_generator_state = torch::zeros({8}, torch::kByte);
  const std::string dir = FreshDir("flipped");
  const std::string good = dir + "/good.pt";
  ASSERT_TRUE(Checkpoint::Write(good, **model, optimizer, state).ok());
  ASSERT_TRUE(VerifyArchive(good).ok());
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A bit in the pickled model ("data.pkl") and one in a tensor's bytes ("data/0").
  for (const std::string entry : {"data.pkl", "data/0"}) {
    // The first occurrence of the name is in the entry's local header: 30 fixed bytes (the extra
    // field's length at 28), the name, the extra field, then the entry's bytes.
    const std::string name = "archive/" + entry;
    const size_t at = bytes.find(name);
    ASSERT_NE(at, std::string::npos) << entry;
    ASSERT_GE(at, 30u);
    const size_t extra = static_cast<unsigned char>(bytes[at - 2]) | static_cast<unsigned char>(bytes[at - 1]) << 8;
    std::string damaged = bytes;
    damaged[at + name.size() + extra] ^= 0x10;
    const std::string path = dir + "/damaged.pt";
    std::ofstream(path, std::ios::binary) << damaged;
    const absl::StatusOr<Checkpoint> read = Checkpoint::Read(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << entry << ": " << read.status();
    EXPECT_THAT(read.status().message(), HasSubstr("archive/" + entry + " is damaged")) << entry;
  }
  // Cut short: the directory at the end is gone.
  std::ofstream(dir + "/short.pt", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  EXPECT_EQ(Checkpoint::Read(dir + "/short.pt").status().code(), absl::StatusCode::kInvalidArgument);
}

// Found by fuzz_checkpoint (its input is kept in fuzz/corpus/checkpoint/): LibTorch's unpickler threw
// std::out_of_range, not c10::Error, on this archive, and the exception ended the worker. Its damaged
// entry is now caught by the CRC check (DataLoss); an archive crafted with valid CRCs reaches the
// unpickler, whose exceptions of any type are refused (GuardFileRead).
TEST(Checkpoint, AnArchiveThatMadeLibTorchThrowOutOfRangeIsRefused) {
  const char* source_dir = std::getenv("XTRAIN_SOURCE_DIR");
  ASSERT_NE(source_dir, nullptr) << "run through ctest, which sets XTRAIN_SOURCE_DIR";
  const std::string path = std::string(source_dir) + "/fuzz/corpus/checkpoint/unpickler-out-of-range.pt";
  ASSERT_TRUE(std::filesystem::is_regular_file(path)) << path;
  const absl::StatusOr<Checkpoint> read = Checkpoint::Read(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(read.status().message(), HasSubstr(path));
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(model.ok());
  const absl::StatusOr<WeightsLoadReport> weights = LoadWeights(path, **model, /*strict=*/false);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(weights.status().message(), HasSubstr(path));
}

TEST(CheckpointStore, KeepsTheNewestAndFindsTheLatest) {
  const std::string dir = FreshDir("store");
  absl::StatusOr<CheckpointStore> store = CheckpointStore::Open(dir, 2);
  ASSERT_TRUE(store.ok());
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(model.ok());
  torch::optim::SGD optimizer((*model)->parameters(), 0.1);
  CheckpointState state;
  state.model_name = "small_cnn";
  state.global_generator_state = at::make_generator<at::CPUGeneratorImpl>(1).get_state();
  state.task_generator_state = state.global_generator_state;
  for (int64_t step : {3, 6, 9, 12}) {
    state.step = step;
    ASSERT_TRUE(store->Save(**model, optimizer, state).ok());
  }
  const std::vector<std::string> files = CheckpointStore::List(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], store->PathFor(9));
  EXPECT_EQ(*CheckpointStore::Latest(dir), store->PathFor(12));
  EXPECT_EQ(CheckpointStore::Latest(FreshDir("empty")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CheckpointStore::Open(dir, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadWeights, StrictNamesTheMismatchAndNonStrictSkipsIt) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> ten = BuildModel({.name = "small_cnn", .classes = 10, .width = 4});
  absl::StatusOr<std::shared_ptr<NetworkImpl>> five =
      BuildModel({.name = "small_cnn", .classes = 5, .width = 4, .seed = 3});
  ASSERT_TRUE(ten.ok() && five.ok());
  const std::string weights = FreshDir("weights") + "/ten.pt";
  torch::save(*ten, weights);

  const absl::StatusOr<WeightsLoadReport> strict = LoadWeights(weights, **five, /*strict=*/true);
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(strict.status().message(), HasSubstr("head.2.weight"));

  const torch::Tensor head_before = (*five)->named_parameters()["head.2.weight"].clone();
  const absl::StatusOr<WeightsLoadReport> loose = LoadWeights(weights, **five, /*strict=*/false);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_THAT(loose->skipped, ::testing::UnorderedElementsAre("head.2.weight", "head.2.bias"));
  EXPECT_TRUE(torch::equal((*five)->named_parameters()["features.0.weight"],
                           (*ten)->named_parameters()["features.0.weight"]));
  EXPECT_TRUE(torch::equal((*five)->named_parameters()["head.2.weight"], head_before));
}

}  // namespace
}  // namespace xtrain::core
