#include "server/scheduler/placement.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace xtrain::server {
namespace {

using Kind = Decision::Kind;

int64_t GiB(double gib) { return static_cast<int64_t>(gib * static_cast<double>(int64_t{1} << 30)); }

// A queued job with a chain of budgets in GiB, asking for `requested`, shrinkable down to `floor`.
struct J {
  JobDemand d;
  J(std::string id, std::vector<double> gib, int requested, int floor) {
    d.id = std::move(id);
    d.tenant = "t";
    for (double g : gib) d.budgets.push_back(GiB(g));
    d.requested = requested;
    d.floor = floor;
  }
  J& Priority(int p) { return d.priority = p, *this; }
  J& Order(int64_t o) { return d.order = o, *this; }
  J& Tenant(std::string t) { return d.tenant = std::move(t), *this; }
  J& Waited(double s) { return d.waited_seconds = s, *this; }
  J& Pinned(std::string device) { return d.pinned_device = std::move(device), *this; }
  operator JobDemand() const { return d; }  // NOLINT: the builder reads as the demand it builds
};

RunningJob Running(const JobDemand& demand, std::string device, int point, bool busy = false) {
  RunningJob r;
  r.demand = demand;
  r.device = std::move(device);
  r.point = point;
  r.busy = busy;
  return r;
}

DeviceState Dev(std::string name, double gib, int slots = 8) { return {std::move(name), GiB(gib), slots}; }

std::vector<std::string> Ids(const PlacementResult& r, Kind kind) {
  std::vector<std::string> ids;
  for (const Decision& d : r.decisions) {
    if (d.kind == kind) ids.push_back(d.job_id);
  }
  return ids;
}

const Decision* Find(const PlacementResult& r, const std::string& id) {
  for (const Decision& d : r.decisions) {
    if (d.job_id == id) return &d;
  }
  return nullptr;
}

const WaitInfo* Waiting(const PlacementResult& r, const std::string& id) {
  for (const WaitInfo& w : r.waiting) {
    if (w.job_id == id) return &w;
  }
  return nullptr;
}

// The point a decision names for `id`, -1 if none does.
int PointOf(const PlacementResult& r, const std::string& id) {
  const Decision* d = Find(r, id);
  return d ? d->point : -1;
}

std::string WaitReason(const PlacementResult& r, const std::string& id) {
  const WaitInfo* w = Waiting(r, id);
  return w ? w->reason : "(not waiting)";
}

std::vector<std::string> WaitingIds(const PlacementResult& r) {
  std::vector<std::string> ids;
  for (const WaitInfo& w : r.waiting) ids.push_back(w.job_id);
  return ids;
}

// Everything a pass decided, as text: two passes agree exactly when these agree.
std::string Summary(const PlacementResult& r) {
  std::string s;
  for (const Decision& d : r.decisions) {
    absl::StrAppend(&s, static_cast<int>(d.kind), " ", d.job_id, " ", d.device, " ", d.point, " ", d.reason, "\n");
  }
  for (const WaitInfo& w : r.waiting) {
    absl::StrAppend(&s, "wait ", w.job_id, " ", w.queue_position, " ", w.never_fits, " ", w.reason, "\n");
  }
  return s;
}

TEST(Placement, AdmitsAtRequestedPoint) {
  const PlacementResult r = Place({Dev("cpu", 8)}, {}, {J("a", {1, 2, 4}, 2, 0)});
  ASSERT_EQ(r.decisions.size(), 1u);
  EXPECT_EQ(r.decisions[0].kind, Kind::kAdmit);
  EXPECT_EQ(r.decisions[0].job_id, "a");
  EXPECT_EQ(r.decisions[0].device, "cpu");
  EXPECT_EQ(r.decisions[0].point, 2);
  EXPECT_EQ(r.decisions[0].reason, "starts on cpu at its requested point 2 (4.00 GiB; 8.00 GiB free there)");
  EXPECT_TRUE(r.waiting.empty());
}

TEST(Placement, BestFitIsTheDeviceWithTheLeastFreeBytesThatHoldsIt) {
  // big has the most room, mid the least that still holds 4.5 GiB, small too little.
  const std::vector<DeviceState> devices = {Dev("big", 16), Dev("mid", 8), Dev("small", 4)};
  const std::vector<RunningJob> running = {Running(J("r", {3}, 0, 0), "mid", 0)};
  const PlacementResult r = Place(devices, running, {J("a", {4.5}, 0, 0)});
  ASSERT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"a"});
  EXPECT_EQ(r.decisions[0].device, "mid");
}

TEST(Placement, ShrunkAdmissionAtTheLargestPointThatFits) {
  const std::vector<RunningJob> running = {Running(J("r", {5}, 0, 0), "cpu", 0)};  // 3 GiB free
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("a", {1, 2, 2.5, 4, 6}, 4, 0)});
  ASSERT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"a"});
  EXPECT_EQ(r.decisions[0].point, 2);
  EXPECT_EQ(r.decisions[0].reason,
            "starts on cpu at point 2 (2.50 GiB), below its requested point 4 (6.00 GiB): the largest that fits in "
            "the 3.00 GiB free there");
}

TEST(Placement, NeverBelowFloor) {
  const std::vector<RunningJob> running = {Running(J("r", {5}, 0, 0), "cpu", 0)};  // 3 GiB free
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("a", {1, 2, 4, 6}, 3, 2)});
  EXPECT_TRUE(r.decisions.empty());  // point 1 would fit, but the floor is point 2
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"a"});
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cpu: needs 4.00 GiB at its floor, 3.00 GiB free (1.00 GiB missing); next in the queue");
  EXPECT_FALSE(r.waiting[0].never_fits);
}

TEST(Placement, NonShrinkableJobWaits) {
  const std::vector<RunningJob> running = {Running(J("r", {5}, 0, 0), "cpu", 0)};
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("a", {1, 2, 4}, 2, 2), J("b", {1, 2, 4}, 2, 0)});
  // a cannot shrink and waits; b behind it starts smaller in what a cannot use.
  ASSERT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"b"});
  EXPECT_EQ(r.decisions[0].point, 1);
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"a"});
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cpu: needs 4.00 GiB (it cannot shrink), 3.00 GiB free (1.00 GiB missing); next in the queue");
}

TEST(Placement, SlotsLimitJobsPerDevice) {
  const std::vector<JobDemand> queued = {J("a", {1}, 0, 0).Order(1), J("b", {1}, 0, 0).Order(2),
                                         J("c", {1}, 0, 0).Order(3)};
  const PlacementResult r = Place({Dev("cpu", 100, 2)}, {}, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"c"});
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cpu: needs 1.00 GiB (it cannot shrink), 98.00 GiB free, but all 2 slots there are taken; next "
            "in the queue");

  // A running job takes a slot too.
  const std::vector<RunningJob> running = {Running(J("r", {1}, 0, 0), "cpu", 0)};
  EXPECT_EQ(Ids(Place({Dev("cpu", 100, 2)}, running, queued), Kind::kAdmit), std::vector<std::string>{"a"});
}

TEST(Placement, AdmissionsInOnePassSeeEachOther) {
  const std::vector<JobDemand> queued = {J("a", {6}, 0, 0).Order(1), J("b", {6}, 0, 0).Order(2),
                                         J("c", {3, 4}, 1, 0).Order(3)};
  const PlacementResult r = Place({Dev("cpu", 10)}, {}, queued);
  // a takes 6 of 10 GiB; b no longer fits; c gets the 4 GiB left, not a's.
  EXPECT_EQ(Ids(r, Kind::kAdmit), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(PointOf(r, "c"), 1);
  EXPECT_EQ(WaitingIds(r), std::vector<std::string>{"b"});
}

TEST(Placement, PinnedJobsUseOnlyTheirDevice) {
  const std::vector<DeviceState> devices = {Dev("cuda:0", 16), Dev("cuda:1", 8)};
  // Unpinned, best fit would take cuda:1; pinned to cuda:0 it goes there.
  PlacementResult r = Place(devices, {}, {J("a", {2}, 0, 0).Pinned("cuda:0")});
  ASSERT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"a"});
  EXPECT_EQ(r.decisions[0].device, "cuda:0");

  // Pinned to a busy cuda:1, it waits for it although cuda:0 is empty.
  const std::vector<RunningJob> running = {Running(J("r", {6}, 0, 0), "cuda:1", 0)};
  r = Place(devices, running, {J("b", {4}, 0, 0).Pinned("cuda:1")});
  EXPECT_TRUE(r.decisions.empty());
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"b"});
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cuda:1: needs 4.00 GiB (it cannot shrink), 2.00 GiB free (2.00 GiB missing); next in the "
            "queue");
}

TEST(Placement, JobsThatCanNeverStartSaySo) {
  const std::vector<DeviceState> devices = {Dev("cuda:0", 16), Dev("cuda:1", 8)};
  const PlacementResult r =
      Place(devices, {},
            {J("pinned_small", {12}, 0, 0).Pinned("cuda:1").Order(1),
             J("pinned_gone", {1}, 0, 0).Pinned("cuda:3").Order(2), J("huge", {20, 24}, 1, 0).Order(3),
             J("bad", {4, 2}, 1, 0).Order(4), J("fits", {12}, 0, 0).Order(5), J("later", {12}, 0, 0).Order(6)});
  // The doomed jobs make no room, hold nothing and are ahead of no one: the one behind them starts,
  // the next waits first in line.
  EXPECT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"fits"});
  ASSERT_EQ(r.waiting.size(), 5u);
  for (const WaitInfo& w : r.waiting) {
    EXPECT_EQ(w.never_fits, w.job_id != "later") << w.job_id;
    EXPECT_EQ(w.queue_position, w.job_id == "later" ? 1 : 0) << w.job_id;
  }
  EXPECT_EQ(WaitReason(r, "later"),
            "waits for cuda:0: needs 12.00 GiB (it cannot shrink), 4.00 GiB free (8.00 GiB missing); next in the "
            "queue");
  EXPECT_EQ(WaitReason(r, "pinned_small"),
            "pinned to cuda:1, which has 8.00 GiB in all, and it needs 12.00 GiB (it cannot shrink): it can never fit");
  EXPECT_EQ(WaitReason(r, "pinned_gone"), "pinned to cuda:3, which is not a configured device: it can never start");
  EXPECT_EQ(WaitReason(r, "huge"),
            "needs 20.00 GiB at its floor, more than any device holds (the largest, cuda:0, has 16.00 GiB in all): it "
            "can never fit");
  EXPECT_EQ(WaitReason(r, "bad"),
            "its demand is malformed (its budgets are not ascending at point 1): it can never start");
}

TEST(Placement, HigherPriorityFirst) {
  const std::vector<JobDemand> queued = {J("low", {1}, 0, 0).Order(1), J("high", {1}, 0, 0).Priority(5).Order(2)};
  const PlacementResult r = Place({Dev("cpu", 100, 1)}, {}, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"high"});
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"low"});
  EXPECT_EQ(r.waiting[0].queue_position, 1);
}

TEST(Placement, FifoWithinPriority) {
  const std::vector<JobDemand> queued = {J("third", {1}, 0, 0).Order(3), J("first", {1}, 0, 0).Order(1),
                                         J("second", {1}, 0, 0).Order(2)};
  const PlacementResult r = Place({Dev("cpu", 100, 1)}, {}, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"first"});
  ASSERT_EQ(WaitingIds(r), (std::vector<std::string>{"second", "third"}));
  EXPECT_EQ(r.waiting[0].queue_position, 1);
  EXPECT_EQ(r.waiting[1].queue_position, 2);
  EXPECT_EQ(r.waiting[1].reason,
            "waits for cpu: needs 1.00 GiB (it cannot shrink), 99.00 GiB free, but its one slot is taken; 1 job ahead");
}

TEST(Placement, StarvingJobGoesFirstInItsPriority) {
  const std::vector<JobDemand> queued = {J("early", {1}, 0, 0).Order(1), J("starving", {1}, 0, 0).Order(2).Waited(700)};
  EXPECT_EQ(Ids(Place({Dev("cpu", 100, 1)}, {}, queued), Kind::kAdmit), std::vector<std::string>{"starving"});
  // Priority still comes first.
  std::vector<JobDemand> with_high = queued;
  with_high.push_back(J("high", {1}, 0, 0).Order(3).Priority(1));
  EXPECT_EQ(Ids(Place({Dev("cpu", 100, 1)}, {}, with_high), Kind::kAdmit), std::vector<std::string>{"high"});
}

TEST(Placement, FairShareAlternatesWhenOneTenantFloods) {
  std::vector<JobDemand> queued;
  for (int i = 1; i <= 6; ++i) queued.push_back(J(absl::StrCat("a", i), {1}, 0, 0).Tenant("A").Order(i));
  for (int i = 1; i <= 2; ++i) queued.push_back(J(absl::StrCat("b", i), {1}, 0, 0).Tenant("B").Order(10 + i));
  const PlacementResult r = Place({Dev("cpu", 100, 4)}, {}, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), (std::vector<std::string>{"a1", "b1", "a2", "b2"}));
  EXPECT_EQ(WaitingIds(r), (std::vector<std::string>{"a3", "a4", "a5", "a6"}));
}

TEST(Placement, FairShareFavoursTheTenantWithFewerBytesRunning) {
  const std::vector<RunningJob> running = {Running(J("ra", {4}, 0, 0).Tenant("A"), "cpu", 0)};
  const std::vector<JobDemand> queued = {J("a", {1}, 0, 0).Tenant("A").Order(1),
                                         J("b", {1}, 0, 0).Tenant("B").Order(2)};
  const PlacementResult r = Place({Dev("cpu", 100, 2)}, running, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"b"});
  EXPECT_EQ(WaitingIds(r), std::vector<std::string>{"a"});
}

// A large job (6 GiB, cannot shrink) behind a stream of 1 GiB jobs of the same priority: two arrive
// every pass and run for four, so two end every pass. Only "big" (8 GiB) can ever hold the large one.
struct StreamOutcome {
  int large_started_at = -1;          // the pass it was admitted in, -1 if never
  int small_on_small_while_held = 0;  // small jobs started beside the reservation, on the other device
  int small_on_big_while_held = 0;    // small jobs started on the held device (would delay it)
};

StreamOutcome RunStream(double starvation_seconds, int passes) {
  const std::vector<DeviceState> devices = {Dev("big", 8, 8), Dev("small", 2, 2)};
  PlacementOptions options;
  options.starvation_seconds = starvation_seconds;
  struct Live {
    RunningJob job;
    int ends;
  };
  std::vector<Live> live;
  for (int i = 0; i < 8; ++i) live.push_back({Running(J(absl::StrCat("s0_", i), {1}, 0, 0), "big", 0), 1 + i / 2});
  std::map<std::string, int> arrived;  // queued job id -> pass it arrived in
  std::vector<JobDemand> queue = {J("large", {6}, 0, 0).Order(0)};
  arrived["large"] = 0;
  int64_t order = 0;
  StreamOutcome out;
  for (int pass = 0; pass < passes; ++pass) {
    std::erase_if(live, [&](const Live& l) { return l.ends <= pass; });
    for (int i = 0; i < 2; ++i) {
      const std::string id = absl::StrCat("s", pass + 1, "_", i);
      queue.push_back(J(id, {1}, 0, 0).Order(++order));
      arrived[id] = pass;
    }
    for (JobDemand& job : queue) job.waited_seconds = 10.0 * (pass - arrived[job.id]);
    std::vector<RunningJob> running;
    for (const Live& l : live) running.push_back(l.job);

    const PlacementResult r = Place(devices, running, queue, options);
    const WaitInfo* large = Waiting(r, "large");
    const bool held = large && large->reason.find("so big is held for it") != std::string::npos;
    for (const Decision& d : r.decisions) {
      if (d.kind != Kind::kAdmit) {  // nothing here may shrink or be preempted
        ADD_FAILURE() << d.job_id << " " << d.reason;
        return out;
      }
      if (d.job_id == "large") {
        out.large_started_at = pass;
        return out;
      }
      if (held) ++(d.device == "big" ? out.small_on_big_while_held : out.small_on_small_while_held);
      auto it = std::find_if(queue.begin(), queue.end(), [&](const JobDemand& j) { return j.id == d.job_id; });
      if (it == queue.end()) {
        ADD_FAILURE() << "admitted a job not queued: " << d.job_id;
        return out;
      }
      live.push_back({Running(*it, d.device, d.point), pass + 4});
      queue.erase(it);
    }
  }
  return out;
}

TEST(Placement, NoStarvation) {
  // Without reservations the stream keeps "big" from ever draining to 6 GiB free.
  EXPECT_EQ(RunStream(/*starvation_seconds=*/1e9, 100).large_started_at, -1);
  // Starving after 5 passes (50 s), it holds "big"; what runs there ends within 4 passes.
  const StreamOutcome out = RunStream(/*starvation_seconds=*/45, 100);
  ASSERT_NE(out.large_started_at, -1);
  EXPECT_LE(out.large_started_at, 5 + 4);
  EXPECT_EQ(out.small_on_big_while_held, 0);
  EXPECT_GT(out.small_on_small_while_held, 0);  // small jobs go on beside it where room remains
}

TEST(Placement, SmallJobsBackfillBesideAReservation) {
  const std::vector<DeviceState> devices = {Dev("big", 8, 4), Dev("small", 2, 2)};
  const std::vector<RunningJob> running = {Running(J("r", {4}, 0, 0), "big", 0)};
  auto queued = [](double waited) {
    return std::vector<JobDemand>{J("large", {6}, 0, 0).Order(1).Waited(waited), J("s1", {1}, 0, 0).Order(2),
                                  J("s2", {1}, 0, 0).Order(3), J("s3", {1}, 0, 0).Order(4),
                                  J("s4", {1}, 0, 0).Order(5).Pinned("big")};
  };
  // Not starving: the small ones fill what they can, on big too.
  PlacementResult r = Place(devices, running, queued(0));
  EXPECT_EQ(Ids(r, Kind::kAdmit), (std::vector<std::string>{"s1", "s2", "s3", "s4"}));

  // Starving: big is held for the large job's 6 GiB; small ones run only on the other device.
  r = Place(devices, running, queued(700));
  EXPECT_EQ(Ids(r, Kind::kAdmit), (std::vector<std::string>{"s1", "s2"}));
  for (const Decision& d : r.decisions) EXPECT_EQ(d.device, "small");
  EXPECT_EQ(WaitReason(r, "large"),
            "has waited 700 s (over 600 s), so big is held for it: needs 6.00 GiB (it cannot shrink), 4.00 GiB free "
            "(2.00 GiB missing); next in the queue");
  EXPECT_EQ(WaitReason(r, "s3"),
            "waits for small: needs 1.00 GiB (it cannot shrink), 0.00 GiB free (1.00 GiB missing), and all 2 slots "
            "there are taken; 1 job ahead");
  EXPECT_EQ(WaitReason(r, "s4"),
            "waits for big: needs 1.00 GiB (it cannot shrink), 0.00 GiB free beside 6.00 GiB held for large (1.00 GiB "
            "missing); 2 jobs ahead");
}

TEST(Placement, ShrinksBeforePreemptingAndAsLittleAsNeeded) {
  // low runs at 6 GiB and may shrink to 2; high needs 4 with 2 free: low shrinks to 4, not to 2, and
  // is not stopped although it could be.
  const std::vector<RunningJob> running = {Running(J("low", {2, 4, 6}, 2, 0), "cpu", 2)};
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("high", {4}, 0, 0).Priority(5)});
  ASSERT_EQ(r.decisions.size(), 1u);
  EXPECT_EQ(r.decisions[0].kind, Kind::kShrink);
  EXPECT_EQ(r.decisions[0].job_id, "low");
  EXPECT_EQ(r.decisions[0].point, 1);
  EXPECT_EQ(r.decisions[0].reason,
            "shrinks on cpu from point 2 (6.00 GiB) to point 1 (4.00 GiB) to make room for high (priority 5), which "
            "needs 4.00 GiB (it cannot shrink)");
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"high"});  // the shrink frees nothing this pass
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cpu while 1 running job shrinks to make room: needs 4.00 GiB (it cannot shrink), 2.00 GiB free "
            "(2.00 GiB missing); next in the queue");
}

TEST(Placement, ShrinksTheLeastImportantFirstAndNeverAboveTheHead) {
  const std::vector<RunningJob> running = {
      Running(J("old_low", {1, 2, 4}, 2, 0).Order(1), "cpu", 2),
      Running(J("new_low", {1, 2, 4}, 2, 0).Order(2), "cpu", 2),
      Running(J("same", {1, 2, 4}, 2, 0).Order(3).Priority(3), "cpu", 2),
      Running(J("above", {1, 2, 4}, 2, 0).Order(4).Priority(4), "cpu", 2),
  };
  // 16 GiB all taken; the head needs 5: new_low gives 3 (to its floor), old_low the 2 still missing.
  const PlacementResult r = Place({Dev("cpu", 16)}, running, {J("head", {5}, 0, 0).Priority(3)});
  ASSERT_EQ(Ids(r, Kind::kShrink), (std::vector<std::string>{"new_low", "old_low"}));
  EXPECT_EQ(PointOf(r, "new_low"), 0);
  EXPECT_EQ(PointOf(r, "old_low"), 1);
  EXPECT_TRUE(Ids(r, Kind::kPreempt).empty());
  EXPECT_EQ(WaitReason(r, "head"),
            "waits for cpu while 2 running jobs shrink to make room: needs 5.00 GiB (it cannot shrink), 0.00 GiB free "
            "(5.00 GiB missing); next in the queue");

  // Needing 12: shrinking all of priority <= 3 frees 9 and stopping both low ones 2 more, 1 short.
  // Shrinking 'above' would make it; it is never touched, so nothing is.
  const PlacementResult big = Place({Dev("cpu", 16)}, running, {J("head", {12}, 0, 0).Priority(3)});
  EXPECT_TRUE(big.decisions.empty());
  EXPECT_EQ(WaitingIds(big), std::vector<std::string>{"head"});
}

TEST(Placement, ShrinkMakesRoomForTheLargestPointItCan) {
  // The head asks for 6 GiB (point 2); shrinking low can free at most 3 of the 4 missing, so room is
  // made for its point 1 (5 GiB) instead of preempting.
  const std::vector<RunningJob> running = {Running(J("low", {3, 6}, 1, 0), "cpu", 1)};
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("head", {4, 5, 6}, 2, 0).Priority(5)});
  ASSERT_EQ(Ids(r, Kind::kShrink), std::vector<std::string>{"low"});
  EXPECT_EQ(PointOf(r, "low"), 0);
  EXPECT_TRUE(Ids(r, Kind::kPreempt).empty());
  EXPECT_NE(WaitReason(r, "head").find("needs 5.00 GiB at point 1"), std::string::npos) << WaitReason(r, "head");
}

TEST(Placement, PreemptsOnlyLowerPriority) {
  const JobDemand head = J("head", {4}, 0, 0).Priority(3);
  // An equal-priority job that cannot shrink is never stopped.
  PlacementResult r = Place({Dev("cpu", 8)}, {Running(J("equal", {6}, 0, 0).Priority(3), "cpu", 0)}, {head});
  EXPECT_TRUE(r.decisions.empty());
  // A lower-priority one is.
  r = Place({Dev("cpu", 8)}, {Running(J("lower", {6}, 0, 0).Priority(2), "cpu", 0)}, {head});
  ASSERT_EQ(Ids(r, Kind::kPreempt), std::vector<std::string>{"lower"});
  EXPECT_EQ(r.decisions[0].reason,
            "stops on cpu to make room for head (priority 3 over its 2), which needs 4.00 GiB (it cannot shrink); it "
            "checkpoints and goes back to the queue");
  EXPECT_EQ(WaitReason(r, "head"),
            "waits for cpu while 1 lower-priority job stops to make room: needs 4.00 GiB (it cannot shrink), 2.00 GiB "
            "free (2.00 GiB missing); next in the queue");
  // Shrinking cannot give a slot: a full slot is made by preempting.
  r = Place({Dev("cpu", 100, 1)}, {Running(J("slot", {1, 2}, 1, 0).Priority(2), "cpu", 1)}, {head});
  EXPECT_EQ(Ids(r, Kind::kPreempt), std::vector<std::string>{"slot"});
  EXPECT_TRUE(Ids(r, Kind::kShrink).empty());
  // With preemption off, it waits.
  PlacementOptions no_preempt;
  no_preempt.allow_preempt = false;
  EXPECT_TRUE(Place({Dev("cpu", 8)}, {Running(J("lower", {6}, 0, 0).Priority(2), "cpu", 0)}, {head}, no_preempt)
                  .decisions.empty());
}

TEST(Placement, PreemptsTheFewestJobsThenTheLeastImportant) {
  // 1 GiB free, 5 missing. In preference order p2, p1 would free only 4 and need p3 too; p3 alone frees 5.
  const std::vector<RunningJob> running = {Running(J("p1", {2}, 0, 0).Order(1), "cpu", 0),
                                           Running(J("p2", {2}, 0, 0).Order(2), "cpu", 0),
                                           Running(J("p3", {5}, 0, 0).Order(3).Priority(1), "cpu", 0)};
  PlacementResult r = Place({Dev("cpu", 10)}, running, {J("head", {6}, 0, 0).Priority(5)});
  EXPECT_EQ(Ids(r, Kind::kPreempt), std::vector<std::string>{"p3"});
  // Needing 2 missing, p1 or p2 alone would do: the most recent of the lowest priority goes.
  r = Place({Dev("cpu", 10)}, running, {J("head", {3}, 0, 0).Priority(5)});
  EXPECT_EQ(Ids(r, Kind::kPreempt), std::vector<std::string>{"p2"});
}

TEST(Placement, PreemptsOnlyWhenShrinkingIsNotEnough) {
  // Shrinking 'flex' to its floor frees 2 of the 6 missing: 'rigid' is stopped and 'flex' shrinks for the rest.
  const std::vector<RunningJob> running = {Running(J("flex", {2, 4}, 1, 0).Order(1), "cpu", 1),
                                           Running(J("rigid", {4}, 0, 0).Order(2), "cpu", 0)};
  const PlacementResult r = Place({Dev("cpu", 8)}, running, {J("head", {6}, 0, 0).Priority(5)});
  EXPECT_EQ(Ids(r, Kind::kPreempt), std::vector<std::string>{"rigid"});
  EXPECT_EQ(Ids(r, Kind::kShrink), std::vector<std::string>{"flex"});
  EXPECT_EQ(PointOf(r, "flex"), 0);
}

TEST(Placement, BusyJobsAreUntouchedAndHoldTheirBytes) {
  // 'busy' is shrinking already; the head waits for it and makes no more room, even where it could.
  const std::vector<DeviceState> devices = {Dev("cuda:0", 8), Dev("cuda:1", 8)};
  const std::vector<RunningJob> running = {Running(J("busy", {2, 6}, 1, 0), "cuda:0", 1, /*busy=*/true),
                                           Running(J("other", {2, 6}, 1, 0), "cuda:1", 1)};
  const PlacementResult r = Place(devices, running, {J("head", {4}, 0, 0).Priority(5)});
  EXPECT_TRUE(r.decisions.empty());
  ASSERT_EQ(WaitingIds(r), std::vector<std::string>{"head"});
  EXPECT_EQ(r.waiting[0].reason,
            "waits for cuda:0, where a shrink or stop is in flight: needs 4.00 GiB (it cannot shrink), 2.00 GiB free "
            "(2.00 GiB missing); next in the queue");

  // A busy job alone: it is neither shrunk nor stopped, and its bytes stay taken.
  const PlacementResult alone = Place({Dev("cpu", 8)}, {Running(J("busy", {2, 6}, 1, 0), "cpu", 1, true)},
                                      {J("head", {4}, 0, 0).Priority(5), J("small", {2.5}, 0, 0)});
  EXPECT_TRUE(alone.decisions.empty());
}

TEST(Placement, ShrinkFreesBytesOnlyOnceConfirmed) {
  const JobDemand low = J("low", {2, 4, 6}, 2, 0);
  const std::vector<JobDemand> queued = {J("head", {4}, 0, 0).Priority(5), J("small", {1}, 0, 0)};
  // Pass 1: low is told to shrink; head holds cpu, so small does not take the 2 GiB free.
  PlacementResult r = Place({Dev("cpu", 8)}, {Running(low, "cpu", 2)}, queued);
  EXPECT_EQ(Ids(r, Kind::kShrink), std::vector<std::string>{"low"});
  EXPECT_TRUE(Ids(r, Kind::kAdmit).empty());
  // Pass 2: the shrink is in flight: nothing more is decided.
  r = Place({Dev("cpu", 8)}, {Running(low, "cpu", 2, /*busy=*/true)}, queued);
  EXPECT_TRUE(r.decisions.empty());
  // Pass 3: low runs at point 1: head starts in the room made.
  r = Place({Dev("cpu", 8)}, {Running(low, "cpu", 1)}, queued);
  EXPECT_EQ(Ids(r, Kind::kAdmit), std::vector<std::string>{"head"});
}

TEST(Placement, ReasonsNameDeviceAndBytes) {
  // Two higher-priority jobs wait ahead; the running job has their priority, so no room is made.
  const std::vector<RunningJob> running = {Running(J("r", {1.6}, 0, 0).Priority(1), "cpu", 0)};
  const std::vector<JobDemand> queued = {J("a", {1.5}, 0, 0).Priority(1).Order(1),
                                         J("b", {1.5}, 0, 0).Priority(1).Order(2), J("c", {1.2, 2}, 1, 0).Order(3)};
  const PlacementResult r = Place({Dev("cpu", 2)}, running, queued);
  EXPECT_TRUE(r.decisions.empty());
  ASSERT_EQ(WaitingIds(r), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(r.waiting[2].queue_position, 3);
  EXPECT_EQ(r.waiting[2].reason,
            "waits for cpu: needs 1.20 GiB at its floor, 0.40 GiB free (0.80 GiB missing); 2 jobs ahead");
  // Small figures read in smaller units.
  const PlacementResult mib = Place({DeviceState{"cpu", 300 << 20, 1}}, {}, {J("m", {0.5}, 0, 0)});
  EXPECT_EQ(WaitReason(mib, "m"),
            "needs 512.00 MiB (it cannot shrink), more than any device holds (the largest, cpu, "
            "has 300.00 MiB in all): it can never fit");
}

// A random but valid scenario: devices, running jobs within capacity and slots, a queue.
struct Scenario {
  std::vector<DeviceState> devices;
  std::vector<RunningJob> running;
  std::vector<JobDemand> queued;
};

Scenario RandomScenario(uint32_t seed, int devices, int running, int queued, int max_gib = 80) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto demand = [&](const std::string& id, int64_t order) {
    JobDemand d;
    d.id = id;
    d.tenant = absl::StrCat("tenant", uniform(0, 4));
    d.priority = uniform(0, 3);
    d.order = order;
    d.waited_seconds = uniform(0, 900);
    int64_t bytes = int64_t{uniform(1, 64)} << 26;
    for (int p = uniform(1, 6); p > 0; --p) {
      d.budgets.push_back(bytes);
      bytes += int64_t{uniform(0, 32)} << 26;
    }
    d.requested = uniform(0, static_cast<int>(d.budgets.size()) - 1);
    d.floor = uniform(0, d.requested);
    return d;
  };
  Scenario s;
  for (int i = 0; i < devices; ++i)
    s.devices.push_back(Dev(i == 0 ? "cpu" : absl::StrCat("cuda:", i - 1), uniform(8, max_gib), uniform(4, 32)));
  std::vector<int64_t> used(devices, 0);
  std::vector<int> taken(devices, 0);
  for (int i = 0; static_cast<int>(s.running.size()) < running && i < running * 10; ++i) {
    JobDemand d = demand(absl::StrCat("run", i), i);
    const int dev = uniform(0, devices - 1);
    const int point = uniform(d.floor, static_cast<int>(d.budgets.size()) - 1);
    if (used[dev] + d.budgets[point] > s.devices[dev].capacity_bytes || taken[dev] >= s.devices[dev].slots) continue;
    used[dev] += d.budgets[point];
    taken[dev] += 1;
    s.running.push_back(Running(d, s.devices[dev].name, point, uniform(0, 9) == 0));
  }
  for (int i = 0; i < queued; ++i) {
    JobDemand d = demand(absl::StrCat("q", i), 1000 + uniform(0, queued / 2));  // repeated orders: ties by id
    if (uniform(0, 9) == 0) d.pinned_device = s.devices[uniform(0, devices - 1)].name;
    s.queued.push_back(std::move(d));
  }
  return s;
}

// What a pass must keep whatever it decides: admissions within free bytes and slots, every queued
// job accounted for once, busy jobs untouched, shrinks above floors, preemptions for higher priority.
void ExpectConsistent(const Scenario& s, const PlacementResult& r) {
  std::map<std::string, const JobDemand*> queued;
  for (const JobDemand& j : s.queued) queued[j.id] = &j;
  std::map<std::string, const RunningJob*> running;
  for (const RunningJob& j : s.running) running[j.demand.id] = &j;
  std::map<std::string, int64_t> used;
  std::map<std::string, int> taken;
  for (const RunningJob& j : s.running) used[j.device] += j.demand.budgets[j.point], taken[j.device] += 1;
  std::map<std::string, int> seen;
  int top_waiting_priority = std::numeric_limits<int>::min();
  for (const WaitInfo& w : r.waiting) {
    ++seen[w.job_id];
    top_waiting_priority = std::max(top_waiting_priority, queued.at(w.job_id)->priority);
  }
  for (const Decision& d : r.decisions) {
    if (d.kind == Kind::kAdmit) {
      ++seen[d.job_id];
      const JobDemand& j = *queued.at(d.job_id);
      EXPECT_GE(d.point, j.floor);
      EXPECT_LE(d.point, j.requested);
      if (!j.pinned_device.empty()) {
        EXPECT_EQ(d.device, j.pinned_device);
      }
      used[d.device] += j.budgets[d.point];
      taken[d.device] += 1;
      continue;
    }
    const RunningJob& rj = *running.at(d.job_id);
    EXPECT_FALSE(rj.busy) << d.reason;
    EXPECT_EQ(d.device, rj.device);
    if (d.kind == Kind::kShrink) {
      EXPECT_GE(d.point, rj.demand.floor);
      EXPECT_LT(d.point, rj.point);
      EXPECT_LE(rj.demand.priority, top_waiting_priority);
    } else {
      EXPECT_LT(rj.demand.priority, top_waiting_priority);
    }
  }
  for (const DeviceState& dev : s.devices) {
    EXPECT_LE(used[dev.name], dev.capacity_bytes) << dev.name;
    EXPECT_LE(taken[dev.name], dev.slots) << dev.name;
  }
  EXPECT_EQ(seen.size(), s.queued.size());
  for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id;
  int position = 0;
  for (const WaitInfo& w : r.waiting) EXPECT_EQ(w.queue_position, w.never_fits ? 0 : ++position) << w.job_id;
}

TEST(Placement, Deterministic) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    Scenario s = RandomScenario(seed, 4, 30, 100);
    const PlacementResult first = Place(s.devices, s.running, s.queued);
    ExpectConsistent(s, first);
    EXPECT_EQ(Summary(Place(s.devices, s.running, s.queued)), Summary(first)) << "seed " << seed;
    // The order jobs arrive in the input vectors does not matter either.
    std::mt19937 rng(seed);
    std::shuffle(s.running.begin(), s.running.end(), rng);
    std::shuffle(s.queued.begin(), s.queued.end(), rng);
    EXPECT_EQ(Summary(Place(s.devices, s.running, s.queued)), Summary(first)) << "seed " << seed;
  }
}

TEST(Placement, LargePassSanityBound) {
  const Scenario s = RandomScenario(7, 8, 100, 1000, /*max_gib=*/160);
  ASSERT_EQ(s.running.size(), 100u);
  const auto start = std::chrono::steady_clock::now();
  const PlacementResult r = Place(s.devices, s.running, s.queued);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ExpectConsistent(s, r);
  EXPECT_FALSE(r.decisions.empty());
  EXPECT_FALSE(r.waiting.empty());
  EXPECT_LT(elapsed, std::chrono::seconds(1));  // a sanity bound, not a speed claim (bench/ measures)
}

}  // namespace
}  // namespace xtrain::server
