// WatchHub's guarantees on a real gRPC server (port 0) and a real SQLite store, with real clients: every
// watcher sees its job's log in order; a watcher behind on live events has step events coalesced and
// counted, never a state change, checkpoint, validation or the final event; the backlog a watch asks
// for is replayed whole; cancelled and shut-down watchers end cleanly while events keep coming.
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/api/watch_hub.h"
#include "server/common/util.h"
#include "server/store/job_store.h"
#include "tests/server/watch_contract.h"
#include "xtrain/v1/training_service.grpc.pb.h"

namespace xtrain::server {
namespace {
namespace fs = std::filesystem;
namespace v1 = ::xtrain::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// WatchJob served by the hub alone (the server's TrainingServiceImpl checks the job first, then does
// the same).
class HubService final
    : public v1::TrainingService::WithRawCallbackMethod_WatchJob<v1::TrainingService::CallbackService> {
 public:
  explicit HubService(WatchHub& hub) : hub_(hub) {}
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchJob(grpc::CallbackServerContext*,
                                                       const grpc::ByteBuffer* bytes) override {
    v1::WatchJobRequest request;
    grpc::ByteBuffer copy(*bytes);
    EXPECT_TRUE(grpc::SerializationTraits<v1::WatchJobRequest>::Deserialize(&copy, &request).ok());
    return hub_.Watch(request.job_id(), "", request.from_sequence());
  }

 private:
  WatchHub& hub_;
};

v1::JobEvent State(v1::JobState from, v1::JobState to) {
  v1::JobEvent event;
  event.mutable_state()->set_from_state(from);
  event.mutable_state()->set_to_state(to);
  return event;
}
v1::JobEvent Step(int64_t step) {
  v1::JobEvent event;
  event.mutable_step()->set_step(step);
  return event;
}
v1::JobEvent Checkpoint(int64_t step) {
  v1::JobEvent event;
  event.mutable_checkpoint()->set_step(step);
  return event;
}
v1::JobEvent Validation(int64_t step) {
  v1::JobEvent event;
  event.mutable_validation()->set_step(step);
  return event;
}

// A job in a real store whose events are committed, then published, as the scheduler does; a hub and
// a gRPC server on port 0 serving it.
class HubTest {
 public:
  explicit HubTest(WatchHubOptions options = {}) {
    std::string pattern = (fs::temp_directory_path() / "xtrain-hub-test-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(dir_ + "/xtrain.db");
    EXPECT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    hub_ = std::make_unique<WatchHub>(*store_, options);
    service_ = std::make_unique<HubService>(*hub_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    job_.set_id("job-hub-test");
    job_.set_tenant("local");
    job_.set_state(v1::QUEUED);
    JobWrite write;
    write.events.push_back(State(v1::JOB_STATE_UNSPECIFIED, v1::QUEUED));
    Number(write.events);
    write.job = job_;
    EXPECT_TRUE(store_->InsertJob(write).ok());
  }
  ~HubTest() {
    hub_->Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_.reset();
    hub_.reset();
    store_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Commits `events` after the log's end, then publishes them in one call.
  void Append(std::vector<v1::JobEvent> events) {
    Number(events);
    for (const v1::JobEvent& event : events) {
      if (event.has_state()) job_.set_state(event.state().to_state());
    }
    JobWrite write;
    write.job = job_;
    write.events = events;
    ASSERT_TRUE(store_->Commit({write}).ok());
    hub_->Publish(job_, events);
  }

  std::unique_ptr<v1::TrainingService::Stub> Stub(const grpc::ChannelArguments& args = {}) const {
    return v1::TrainingService::NewStub(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                                                  grpc::InsecureChannelCredentials(), args));
  }
  int64_t last_sequence() const { return job_.last_sequence(); }
  WatchHub& hub() { return *hub_; }

 private:
  void Number(std::vector<v1::JobEvent>& events) {
    for (v1::JobEvent& event : events) {
      event.set_sequence(job_.last_sequence() + 1);
      *event.mutable_time() = NowTimestamp();
      job_.set_last_sequence(event.sequence());
    }
  }

  std::string dir_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<WatchHub> hub_;
  std::unique_ptr<HubService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  v1::Job job_;
};

// A watch stream read on its own thread until it ends. `first` is signalled when the first response
// arrives (the watcher is then caught up or replaying). With `pause_after` > 0 it stops reading after
// that many responses until Resume.
class Reader {
 public:
  Reader(v1::TrainingService::Stub& stub, int64_t from_sequence, size_t pause_after = 0) {
    // A stream the hub forgets fails the test instead of hanging it.
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    thread_ = std::thread([this, &stub, from_sequence, pause_after] {
      v1::WatchJobRequest request;
      request.set_job_id("job-hub-test");
      request.set_from_sequence(from_sequence);
      auto reader = stub.WatchJob(&context_, request);
      v1::WatchJobResponse response;
      while (reader->Read(&response)) {
        responses_.push_back(response);
        last_sequence_ = response.event().sequence();
        first_ = true;
        if (responses_.size() == pause_after) {
          while (!resumed_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      status_ = reader->Finish();
      done_ = true;
    });
  }
  ~Reader() {
    Resume();
    Join();
  }

  void WaitForFirst() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!first_ && !done_ && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(first_.load()) << "no response within 30 s";
  }
  void Cancel() { context_.TryCancel(); }
  void Resume() { resumed_ = true; }
  // The sequence number of the newest event received so far (0 before any).
  int64_t last_sequence() const { return last_sequence_.load(); }
  // The responses and how the stream ended, once it has.
  const std::vector<v1::WatchJobResponse>& Join() {
    if (thread_.joinable()) thread_.join();
    return responses_;
  }
  const grpc::Status& status() {
    Join();
    return status_;
  }

 private:
  grpc::ClientContext context_;
  std::vector<v1::WatchJobResponse> responses_;
  grpc::Status status_;
  std::atomic<bool> first_{false};
  std::atomic<int64_t> last_sequence_{0};
  std::atomic<bool> done_{false};
  std::atomic<bool> resumed_{false};
  std::thread thread_;
};

// Every event of a log ending at `last`, once and in order, none coalesced (the contract with the whole
// log as backlog).
::testing::AssertionResult WholeLog(const std::vector<v1::WatchJobResponse>& seen, int64_t last) {
  if (static_cast<int64_t>(seen.size()) != last) {
    return ::testing::AssertionFailure() << seen.size() << " responses for a log of " << last << " events";
  }
  return testing::FollowsWatchContract(seen, 1, last);
}

std::vector<int64_t> Sequences(const std::vector<v1::WatchJobResponse>& responses) {
  std::vector<int64_t> sequences;
  for (const v1::WatchJobResponse& r : responses) sequences.push_back(r.event().sequence());
  return sequences;
}
std::vector<int64_t> Coalesced(const std::vector<v1::WatchJobResponse>& responses) {
  std::vector<int64_t> counts;
  for (const v1::WatchJobResponse& r : responses) counts.push_back(r.coalesced());
  return counts;
}

TEST(WatchHub, CaughtUpWatchersGetEveryEventInOrder) {
  WatchHubOptions options;
  options.coalesce_lag = 1 << 30;  // never coalesce: every watcher must see every event
  // Nor by age: the 200 steps below are published faster than 50 watchers read them, so with the age
  // rule on, steps would be more than 50 ms old by the time some watchers reach them.
  options.coalesce_age = std::chrono::milliseconds(0);
  HubTest test(options);
  auto stub = test.Stub();
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < 50; ++i) readers.push_back(std::make_unique<Reader>(*stub, 1));
  for (auto& reader : readers) reader->WaitForFirst();
  test.Append({State(v1::QUEUED, v1::RUNNING)});
  for (int step = 1; step <= 200; ++step) {
    test.Append({Step(step)});
    if (step % 50 == 0) test.Append({Checkpoint(step), Validation(step)});
  }
  test.Append({State(v1::RUNNING, v1::SUCCEEDED)});
  for (auto& reader : readers) {
    ASSERT_TRUE(reader->status().ok()) << reader->status().error_message();
    const std::vector<v1::WatchJobResponse>& seen = reader->Join();
    ASSERT_TRUE(WholeLog(seen, test.last_sequence()));
  }
  EXPECT_EQ(test.hub().events_coalesced(), 0);
}

TEST(WatchHub, WatcherBehindGetsStepsCoalescedButEveryOtherEventAndTheFinalOne) {
  HubTest test;  // coalesce_lag 16 (the age rule, where it holds too, skips the same steps)
  auto stub = test.Stub();
  Reader reader(*stub, 1);
  reader.WaitForFirst();  // caught up: the burst below is all live
  // 2..21 steps, 22 checkpoint, 23..42 steps, 43 validation, 44..63 steps, 64 the final state change.
  std::vector<v1::JobEvent> burst;
  for (int i = 0; i < 20; ++i) burst.push_back(Step(i));
  burst.push_back(Checkpoint(20));
  for (int i = 20; i < 40; ++i) burst.push_back(Step(i));
  burst.push_back(Validation(40));
  for (int i = 40; i < 60; ++i) burst.push_back(Step(i));
  burst.push_back(State(v1::RUNNING, v1::SUCCEEDED));
  test.Append(burst);
  ASSERT_TRUE(reader.status().ok()) << reader.status().error_message();
  // Behind by more than 16: the steps before each non-step event are skipped, and the newest step is
  // sent once the watcher is within 16 of the end again.
  EXPECT_THAT(Sequences(reader.Join()), ElementsAre(1, 22, 43, 63, 64));
  EXPECT_THAT(Coalesced(reader.Join()), ElementsAre(0, 20, 20, 19, 0));
  EXPECT_EQ(test.hub().events_coalesced(), 59);
}

// step_rate 20 over 4 watchers: each gets a live step at most every 200 ms (jittered to 100..300 ms),
// then the newest one, with the skipped steps counted; checkpoints and state changes are never held;
// the newest step reaches every watcher on the hub's tick when nothing more is published.
TEST(WatchHub, PacedWatchersGetTheNewestStepEachIntervalAndEveryOtherEvent) {
  WatchHubOptions options;
  options.coalesce_lag = 1 << 30;  // pacing alone
  options.coalesce_age = std::chrono::milliseconds(0);
  options.step_rate = 20;
  options.tick = std::chrono::milliseconds(50);
  HubTest test(options);
  auto stub = test.Stub();
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < 4; ++i) readers.push_back(std::make_unique<Reader>(*stub, 1));
  for (auto& reader : readers) reader->WaitForFirst();
  std::vector<bool> steps = {false, false};  // [0] unused; 1: QUEUED
  test.Append({State(v1::QUEUED, v1::RUNNING)});
  steps.push_back(false);
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= 100; ++step) {
    test.Append({Step(step)});
    steps.push_back(true);
    if (step == 50) {
      test.Append({Checkpoint(step)});
      steps.push_back(false);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int64_t newest_step = test.last_sequence();
  // Nothing is published now: the tick must bring the newest step to every watcher.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (auto& reader : readers) {
    while (reader->last_sequence() < newest_step && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(reader->last_sequence(), newest_step) << "the newest step did not arrive without a publish";
  }
  const double paced_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  test.Append({State(v1::RUNNING, v1::SUCCEEDED)});
  steps.push_back(false);
  for (auto& reader : readers) {
    ASSERT_TRUE(reader->status().ok()) << reader->status().error_message();
    const std::vector<v1::WatchJobResponse>& seen = reader->Join();
    EXPECT_TRUE(testing::FollowsWatchContract(seen, 1, 1, steps));
    int64_t step_responses = 0;
    bool checkpoint = false;
    for (const v1::WatchJobResponse& r : seen) {
      step_responses += r.event().has_step();
      checkpoint |= r.event().has_checkpoint();
    }
    EXPECT_TRUE(checkpoint);
    EXPECT_EQ(seen.back().event().state().to_state(), v1::SUCCEEDED);
    // At least 100 ms between two steps: at most one per 100 ms of publishing, plus the first.
    EXPECT_LE(step_responses, static_cast<int64_t>(paced_s / 0.1) + 1) << "over " << paced_s << " s";
    EXPECT_GE(step_responses, 2);  // the first at once, and the newest
  }
  EXPECT_GT(test.hub().events_coalesced(), 4 * 50);  // 100 steps, about 5 sent to each
}

// A watcher whose write is held in flight (its client stops reading during an event larger than the
// stream's flow-control window) while `live` is published, then resumes once every event of it is
// older than `wait`: what it receives, from 1 (QUEUED) and 2 (the large event) on.
std::vector<v1::WatchJobResponse> HeldBackWatcher(HubTest& test, std::vector<v1::JobEvent> live,
                                                  std::chrono::milliseconds wait) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);  // the window stays at 64 KiB however fast the link
  auto stub = test.Stub(args);
  Reader reader(*stub, 1, /*pause_after=*/1);
  reader.WaitForFirst();
  v1::JobEvent large = State(v1::QUEUED, v1::RUNNING);
  large.mutable_state()->set_reason(std::string(3 << 20, 'x'));  // under the 4 MiB message limit
  test.Append({large});
  test.Append(std::move(live));
  std::this_thread::sleep_for(wait);
  reader.Resume();
  EXPECT_TRUE(reader.status().ok()) << reader.status().error_message();
  return reader.Join();
}

// 3..12 steps, 13 checkpoint, 14..20 steps, 21 validation, 22..25 steps, 26 the final state change.
std::vector<v1::JobEvent> StepsAroundACheckpointAndAValidation() {
  std::vector<v1::JobEvent> events;
  for (int i = 1; i <= 10; ++i) events.push_back(Step(i));
  events.push_back(Checkpoint(10));
  for (int i = 11; i <= 17; ++i) events.push_back(Step(i));
  events.push_back(Validation(17));
  for (int i = 18; i <= 21; ++i) events.push_back(Step(i));
  events.push_back(State(v1::RUNNING, v1::SUCCEEDED));
  return events;
}

TEST(WatchHub, WatcherBehindByAgeSkipsToTheNewestStepButGetsEveryOtherEvent) {
  WatchHubOptions options;
  options.coalesce_lag = 1 << 30;  // the age rule alone
  options.coalesce_age = std::chrono::milliseconds(20);
  HubTest test(options);
  // Every live step is more than 20 ms old when the watcher reaches it: each run of steps is skipped up
  // to the next non-step event, or to the newest step (25, old too, but nothing newer exists).
  const std::vector<v1::WatchJobResponse> seen =
      HeldBackWatcher(test, StepsAroundACheckpointAndAValidation(), std::chrono::milliseconds(100));
  EXPECT_THAT(Sequences(seen), ElementsAre(1, 2, 13, 21, 25, 26));
  EXPECT_THAT(Coalesced(seen), ElementsAre(0, 0, 10, 7, 3, 0));
  EXPECT_EQ(test.hub().events_coalesced(), 20);
}

TEST(WatchHub, AgeRuleOffNeverCoalescesAWatcherHeldBack) {
  for (const std::chrono::milliseconds age : {std::chrono::milliseconds(0), std::chrono::milliseconds(-1)}) {
    WatchHubOptions options;
    options.coalesce_lag = 1 << 30;
    options.coalesce_age = age;  // zero or negative: off
    HubTest test(options);
    const std::vector<v1::WatchJobResponse> seen =
        HeldBackWatcher(test, StepsAroundACheckpointAndAValidation(), std::chrono::milliseconds(100));
    ASSERT_TRUE(WholeLog(seen, 26)) << "coalesce_age " << age.count() << " ms";
    EXPECT_EQ(test.hub().events_coalesced(), 0);
  }
}

TEST(WatchHub, BacklogOlderThanTheAgeIsReplayedWhole) {
  WatchHubOptions options;
  options.coalesce_lag = 1 << 30;
  options.coalesce_age = std::chrono::milliseconds(1);
  HubTest test(options);
  auto stub = test.Stub();
  // A watcher already there, so that the hub holds the log and the backlog below is published to it
  // (rather than loaded from the store, fresh, by the next watch).
  Reader early(*stub, 1);
  early.WaitForFirst();
  std::vector<bool> steps = {false, false};
  std::vector<v1::JobEvent> backlog;
  for (int i = 1; i <= 30; ++i) backlog.push_back(Step(i));
  test.Append(backlog);  // 2..31
  steps.resize(steps.size() + 30, true);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // older than the age
  Reader late(*stub, 1);
  late.WaitForFirst();
  test.Append({State(v1::RUNNING, v1::SUCCEEDED)});
  steps.push_back(false);
  ASSERT_TRUE(early.status().ok()) << early.status().error_message();
  ASSERT_TRUE(late.status().ok()) << late.status().error_message();
  EXPECT_TRUE(testing::FollowsWatchContract(early.Join(), 1, 1, steps)) << "early";
  const std::vector<v1::WatchJobResponse>& seen = late.Join();
  EXPECT_TRUE(WholeLog(seen, 32));
}

TEST(WatchHub, BacklogIsReplayedWholeAndOnlyLiveEventsAreCoalesced) {
  HubTest test;
  std::vector<bool> steps = {false, false};  // [0] unused; 1: QUEUED
  std::vector<v1::JobEvent> backlog;
  for (int i = 0; i < 100; ++i) backlog.push_back(Step(i));
  test.Append(backlog);
  steps.resize(steps.size() + 100, true);
  auto stub = test.Stub();
  // Watchers that arrive after the backlog (the log is loaded from the store for the first of them).
  Reader from_start(*stub, 0);
  Reader from_middle(*stub, 51);
  from_start.WaitForFirst();
  from_middle.WaitForFirst();
  std::vector<v1::JobEvent> live;
  for (int i = 100; i < 200; ++i) live.push_back(Step(i));
  live.push_back(State(v1::RUNNING, v1::SUCCEEDED));
  test.Append(live);
  steps.resize(steps.size() + 100, true);
  steps.push_back(false);
  ASSERT_TRUE(from_start.status().ok()) << from_start.status().error_message();
  ASSERT_TRUE(from_middle.status().ok()) << from_middle.status().error_message();
  EXPECT_TRUE(testing::FollowsWatchContract(from_start.Join(), 1, 101, steps)) << "from 0";
  EXPECT_TRUE(testing::FollowsWatchContract(from_middle.Join(), 51, 101, steps)) << "from 51";
  // The backlog whole, in order.
  for (int64_t sequence = 1; sequence <= 101; ++sequence) {
    ASSERT_EQ(from_start.Join()[sequence - 1].event().sequence(), sequence);
  }
}

// Many watchers, events published from another thread in bursts of varied size while the fan-out
// thread and gRPC's threads deliver them: every watcher's stream keeps the guarantees.
TEST(WatchHub, ManyWatchersKeepOrderAndCoalescingUnderConcurrentPublishing) {
  WatchHubOptions options;
  options.coalesce_lag = 4;  // coalesce often
  options.wake_batch = 7;    // many lock acquisitions per wake
  HubTest test(options);
  auto stub = test.Stub();
  std::vector<bool> steps = {false, false};
  constexpr int kWatchers = 300;
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < kWatchers; ++i) readers.push_back(std::make_unique<Reader>(*stub, 1));
  for (int i = 0; i < kWatchers / 3; ++i) readers[i]->WaitForFirst();  // the rest connect meanwhile
  std::mt19937 random(7);
  int64_t step = 0;
  for (int burst = 0; burst < 150; ++burst) {
    std::vector<v1::JobEvent> events;
    const int size = 1 + static_cast<int>(random() % 12);
    for (int i = 0; i < size; ++i) {
      const bool other = random() % 9 == 0;
      events.push_back(other ? Checkpoint(step) : Step(++step));
      steps.push_back(!other);
    }
    test.Append(events);
    if (random() % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
  }
  test.Append({State(v1::RUNNING, v1::SUCCEEDED)});
  steps.push_back(false);
  for (int i = 0; i < kWatchers; ++i) {
    ASSERT_TRUE(readers[i]->status().ok()) << i << ": " << readers[i]->status().error_message();
    // A watcher that connected late has more of the log as its backlog than the first event.
    EXPECT_TRUE(testing::FollowsWatchContract(readers[i]->Join(), 1, 1, steps)) << "watcher " << i;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (test.hub().watchers() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(test.hub().watchers(), 0);
}

// Watchers cancelled while idle, while being woken and while writing; the others go on to the end.
TEST(WatchHub, CancelledWatchersEndWhileOthersGoOn) {
  HubTest test;
  auto stub = test.Stub();
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < 200; ++i) readers.push_back(std::make_unique<Reader>(*stub, 1));
  for (auto& reader : readers) reader->WaitForFirst();
  for (int i = 0; i < 200; i += 4) readers[i]->Cancel();  // idle ones
  std::vector<bool> steps = {false, false};
  for (int step = 1; step <= 300; ++step) {
    test.Append({Step(step)});
    steps.push_back(true);
    if (step % 60 == 0) {
      for (int i = step / 60; i < 200; i += 8) readers[i]->Cancel();  // any state
    }
  }
  test.Append({State(v1::RUNNING, v1::SUCCEEDED)});
  steps.push_back(false);
  std::set<int> cancelled;
  for (int i = 0; i < 200; i += 4) cancelled.insert(i);
  for (int step = 60; step <= 300; step += 60) {
    for (int i = step / 60; i < 200; i += 8) cancelled.insert(i);
  }
  for (int i = 0; i < 200; ++i) {
    const grpc::Status& status = readers[i]->status();
    if (cancelled.count(i)) {
      // Cancelled, unless it had already got the whole log.
      EXPECT_TRUE(status.error_code() == grpc::StatusCode::CANCELLED || status.ok()) << i << ": " << status.error_message();
      continue;
    }
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
    EXPECT_TRUE(testing::FollowsWatchContract(readers[i]->Join(), 1, 1, steps)) << "watcher " << i;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (test.hub().watchers() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(test.hub().watchers(), 0);
}

TEST(WatchHub, ShutdownEndsEveryStreamSayingWhereToReconnect) {
  HubTest test;
  auto stub = test.Stub();
  test.Append({State(v1::QUEUED, v1::RUNNING), Step(1), Step(2)});
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < 20; ++i) readers.push_back(std::make_unique<Reader>(*stub, 1));
  for (auto& reader : readers) reader->WaitForFirst();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // caught up and idle
  test.hub().Shutdown();
  for (auto& reader : readers) {
    const grpc::Status& status = reader->status();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    const int64_t next = reader->Join().back().event().sequence() + 1;
    EXPECT_THAT(status.error_message(), HasSubstr(absl::StrCat("reconnect with from_sequence = ", next)));
  }
  // Later watches are refused the same way.
  Reader late(*stub, 1);
  EXPECT_EQ(late.status().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(WatchHub, WatchFromPastTheEndIsOutOfRange) {
  HubTest test;
  auto stub = test.Stub();
  Reader reader(*stub, 3);  // the log ends at 1
  EXPECT_EQ(reader.status().error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_THAT(reader.status().error_message(), HasSubstr("watch from 2 or less"));
}

}  // namespace
}  // namespace xtrain::server
