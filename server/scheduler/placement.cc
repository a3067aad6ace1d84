#include "server/scheduler/placement.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::server {
namespace {

constexpr int64_t kKiB = int64_t{1} << 10;
constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

// Byte counts of one sentence in one unit, chosen by its largest figure, so they read side by side.
class ByteUnit {
 public:
  explicit ByteUnit(int64_t largest) {
    if (largest >= kGiB) {
      unit_ = kGiB, name_ = "GiB";
    } else if (largest >= kMiB) {
      unit_ = kMiB, name_ = "MiB";
    } else if (largest >= kKiB) {
      unit_ = kKiB, name_ = "KiB";
    }
  }
  std::string operator()(int64_t bytes) const {
    if (unit_ == 1) return absl::StrFormat("%d B", bytes);
    return absl::StrFormat("%.2f %s", static_cast<double>(bytes) / static_cast<double>(unit_), name_);
  }

 private:
  int64_t unit_ = 1;
  const char* name_ = "B";
};

// Why a queued demand cannot be placed as written, or "" when it can.
std::string Malformed(const JobDemand& job) {
  const int n = static_cast<int>(job.budgets.size());
  if (n == 0) return "it has no budgets";
  if (job.requested < 0 || job.requested >= n) {
    return absl::StrFormat("its requested point %d is not one of its %d points", job.requested, n);
  }
  if (job.floor < 0 || job.floor > job.requested) {
    return absl::StrFormat("its floor %d is not between 0 and its requested point %d", job.floor, job.requested);
  }
  for (int i = 0; i < n; ++i) {
    if (job.budgets[i] < 0) return absl::StrFormat("its budget at point %d is negative", i);
    if (i > 0 && job.budgets[i] < job.budgets[i - 1]) {
      return absl::StrFormat("its budgets are not ascending at point %d", i);
    }
  }
  return "";
}

bool OnChain(const JobDemand& job, int point) { return point >= 0 && point < static_cast<int>(job.budgets.size()); }

// Bytes a running job holds: its budget at its point (the largest budget if the point is off its chain).
int64_t Held(const RunningJob& r) {
  if (OnChain(r.demand, r.point)) return r.demand.budgets[r.point];
  return r.demand.budgets.empty() ? 0 : r.demand.budgets.back();
}

// Whether room-making may touch a running job: nothing is in flight for it and its point is known.
bool Movable(const RunningJob& r) { return !r.busy && OnChain(r.demand, r.point); }

// Bytes shrinking a running job to its floor frees (0 when it may not shrink).
int64_t SavingToFloor(const RunningJob& r) {
  if (!Movable(r) || !OnChain(r.demand, r.demand.floor) || r.demand.floor >= r.point) return 0;
  return r.demand.budgets[r.point] - r.demand.budgets[r.demand.floor];
}

// Room-making prefers the least important running job first: lowest priority, then the most recent.
bool PreferredVictim(const RunningJob* a, const RunningJob* b) {
  return std::tie(a->demand.priority, b->demand.order, b->demand.id) <
         std::tie(b->demand.priority, a->demand.order, a->demand.id);
}

// "1.20 GiB at its floor", "2.00 GiB at point 3", ... for the figure a job needs at `point`.
std::string Need(const JobDemand& job, int point, const ByteUnit& unit) {
  const std::string bytes = unit(job.budgets[point]);
  if (job.floor == job.requested) return absl::StrCat(bytes, " (it cannot shrink)");
  if (point == job.requested) return absl::StrCat(bytes, " at its requested point");
  if (point == job.floor) return absl::StrCat(bytes, " at its floor");
  return absl::StrFormat("%s at point %d", bytes, point);
}

// A configured device as one pass sees it: what runs there, what this pass admitted, what is held.
struct Device {
  const DeviceState* state = nullptr;
  int index = 0;                        // configuration order: the last tie-break
  std::vector<const RunningJob*> jobs;  // running there
  int64_t used = 0;                     // held by running jobs and by jobs admitted this pass
  int taken = 0;                        // slots of the same
  int64_t reserved = 0;                 // held for waiting jobs earlier in queue order
  int reserved_slots = 0;
  std::vector<std::string> holders;  // the jobs it is held for

  int64_t Free() const { return state->capacity_bytes - used - reserved; }
  int FreeSlots() const { return state->slots - taken - reserved_slots; }
  bool CanEverHold(int64_t bytes) const { return state->slots > 0 && state->capacity_bytes >= bytes; }
  void Reserve(const JobDemand& job, int64_t bytes) {
    reserved += bytes;
    reserved_slots += 1;
    holders.push_back(job.id);
  }
};

// "needs 1.20 GiB at its floor, 0.40 GiB free (0.80 GiB missing)", with what is held and slots.
std::string Shortfall(const JobDemand& job, int point, const Device& d) {
  const int64_t need = job.budgets[point];
  const int64_t free = std::max<int64_t>(0, d.Free());
  const ByteUnit unit(std::max({need, free, d.reserved}));
  std::string text = absl::StrFormat("needs %s, %s free", Need(job, point, unit), unit(free));
  if (d.reserved > 0) {
    absl::StrAppend(&text, " beside ", unit(d.reserved), " held for ", d.holders.front());
    if (d.holders.size() > 1) absl::StrAppend(&text, " and ", d.holders.size() - 1, " more");
  }
  if (need > free) absl::StrAppend(&text, " (", unit(need - free), " missing)");
  if (d.FreeSlots() < 1) {
    absl::StrAppend(&text, need > free ? ", and " : ", but ",
                    d.state->slots == 1 ? "its one slot is taken"
                                        : absl::StrFormat("all %d slots there are taken", d.state->slots));
    if (d.reserved_slots > 0) absl::StrAppend(&text, " or held");
  }
  return text;
}

// The budget a queued job charges its tenant in the fair-share order: its requested point's.
int64_t Charge(const JobDemand& job) { return Malformed(job).empty() ? job.budgets[job.requested] : 0; }

// Queue order (placement.h): priority, then starving jobs by submission, then tenants by bytes
// running, FIFO within a tenant. A job placed in the order charges its tenant its requested budget,
// as if the jobs ahead of it ran, so a tenant that floods the queue alternates with the others.
std::vector<const JobDemand*> QueueOrder(const std::vector<RunningJob>& running, const std::vector<JobDemand>& queued,
                                         const PlacementOptions& options) {
  std::map<std::string, int64_t> tenant_bytes;
  for (const RunningJob& r : running) tenant_bytes[r.demand.tenant] += Held(r);

  std::vector<const JobDemand*> jobs;
  jobs.reserve(queued.size());
  for (const JobDemand& job : queued) jobs.push_back(&job);
  std::sort(jobs.begin(), jobs.end(), [](const JobDemand* a, const JobDemand* b) {
    return std::tie(b->priority, a->order, a->id) < std::tie(a->priority, b->order, b->id);
  });

  std::vector<const JobDemand*> order;
  order.reserve(jobs.size());
  for (size_t begin = 0; begin < jobs.size();) {
    size_t end = begin;
    while (end < jobs.size() && jobs[end]->priority == jobs[begin]->priority) ++end;
    // Within one priority (already FIFO): starving jobs first, the rest per tenant.
    std::map<std::string, std::vector<const JobDemand*>> fifo;
    for (size_t i = begin; i < end; ++i) {
      const JobDemand* job = jobs[i];
      if (job->waited_seconds > options.starvation_seconds) {
        order.push_back(job);
        tenant_bytes[job->tenant] += Charge(*job);
      } else {
        fifo[job->tenant].push_back(job);
      }
    }
    // Tenants by (bytes so far, their next job's order and id); the next index into each FIFO.
    std::set<std::tuple<int64_t, int64_t, std::string, std::string>> next;
    std::map<std::string, size_t> cursor;
    for (const auto& [tenant, list] : fifo) {
      next.emplace(tenant_bytes[tenant], list.front()->order, list.front()->id, tenant);
      cursor[tenant] = 0;
    }
    while (!next.empty()) {
      const std::string tenant = std::get<3>(*next.begin());
      next.erase(next.begin());
      const std::vector<const JobDemand*>& list = fifo[tenant];
      const JobDemand* job = list[cursor[tenant]++];
      order.push_back(job);
      const int64_t bytes = tenant_bytes[tenant] += Charge(*job);
      if (cursor[tenant] < list.size()) {
        const JobDemand* after = list[cursor[tenant]];
        next.emplace(bytes, after->order, after->id, tenant);
      }
    }
    begin = end;
  }
  return order;
}

// Running jobs to shrink or stop so that the head job gets `point` on `device`.
struct RoomPlan {
  Device* device = nullptr;
  int point = 0;                                           // the head's point room is made for
  std::vector<std::pair<const RunningJob*, int>> shrinks;  // job, its new point
  std::vector<const RunningJob*> preempts;
  int64_t bytes_taken = 0;  // freed from others, in all
  int top_priority = 0;     // the highest priority touched

  // Gentler plans first: shrinking touches the least important jobs, then the fewest, then the
  // fewest bytes; preempting stops the fewest jobs first.
  auto ShrinkKey() const { return std::make_tuple(top_priority, shrinks.size(), bytes_taken, device->index); }
  auto PreemptKey() const {
    return std::make_tuple(preempts.size(), top_priority, shrinks.size(), bytes_taken, device->index);
  }
};

// Shrinks `candidates` (in preference order) as little as needed to free `shortfall` bytes: each to
// the largest point that covers what is still missing, never below its floor. False if they cannot.
bool ShrinkInto(const std::vector<const RunningJob*>& candidates, int64_t shortfall, RoomPlan& plan) {
  for (const RunningJob* r : candidates) {
    if (shortfall <= 0) break;
    const std::vector<int64_t>& b = r->demand.budgets;
    int to = r->demand.floor;
    for (int q = r->point - 1; q > r->demand.floor; --q) {
      if (b[r->point] - b[q] >= shortfall) {
        to = q;
        break;
      }
    }
    const int64_t freed = b[r->point] - b[to];
    if (freed <= 0) continue;
    plan.shrinks.emplace_back(r, to);
    plan.bytes_taken += freed;
    plan.top_priority = std::max(plan.top_priority, r->demand.priority);
    shortfall -= freed;
  }
  return shortfall <= 0;
}

// Running jobs on `d` that may shrink for `head`: no higher priority, above their floor, in preference order.
std::vector<const RunningJob*> ShrinkCandidates(const Device& d, const JobDemand& head) {
  std::vector<const RunningJob*> out;
  for (const RunningJob* r : d.jobs) {
    if (r->demand.priority <= head.priority && SavingToFloor(*r) > 0) out.push_back(r);
  }
  std::sort(out.begin(), out.end(), PreferredVictim);
  return out;
}

// Room for `head` at `point` on `d` by shrinking alone, if shrinking can make it.
std::optional<RoomPlan> PlanShrink(Device& d, const JobDemand& head, int point) {
  if (d.FreeSlots() < 1 || !d.CanEverHold(head.budgets[point])) return std::nullopt;
  RoomPlan plan;
  plan.device = &d;
  plan.point = point;
  plan.top_priority = std::numeric_limits<int>::min();
  if (!ShrinkInto(ShrinkCandidates(d, head), head.budgets[point] - d.Free(), plan)) return std::nullopt;
  return plan;
}

// Room for `head` at its floor on `d` by stopping the fewest strictly lower-priority jobs (the least
// important among equally few), then shrinking the others as little as needed.
std::optional<RoomPlan> PlanPreempt(Device& d, const JobDemand& head, bool allow_shrink) {
  const int64_t need = head.budgets[head.floor];
  if (!d.CanEverHold(need)) return std::nullopt;
  std::vector<const RunningJob*> victims;
  for (const RunningJob* r : d.jobs) {
    if (Movable(*r) && r->demand.priority < head.priority) victims.push_back(r);
  }
  if (victims.empty()) return std::nullopt;
  std::sort(victims.begin(), victims.end(), PreferredVictim);
  const std::vector<const RunningJob*> shrinkable =
      allow_shrink ? ShrinkCandidates(d, head) : std::vector<const RunningJob*>{};

  // With every candidate shrunk to its floor, stopping a job frees what it would still hold there.
  int64_t base = d.Free();
  for (const RunningJob* r : shrinkable) base += SavingToFloor(*r);
  const int64_t byte_need = need - base;
  const size_t slot_need = static_cast<size_t>(std::max(1, 1 - d.FreeSlots()));
  std::vector<int64_t> gain(victims.size());
  for (size_t i = 0; i < victims.size(); ++i) {
    gain[i] = allow_shrink ? Held(*victims[i]) - SavingToFloor(*victims[i]) : Held(*victims[i]);
  }
  // The sum of the `count` largest gains among victims [from, end).
  auto best = [&](size_t from, size_t count) {
    std::vector<int64_t> rest(gain.begin() + static_cast<std::ptrdiff_t>(from), gain.end());
    if (rest.size() < count) return std::optional<int64_t>();
    std::partial_sort(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(count), rest.end(),
                      std::greater<int64_t>());
    int64_t sum = 0;
    for (size_t i = 0; i < count; ++i) sum += rest[i];
    return std::optional<int64_t>(sum);
  };
  size_t k = slot_need;
  while (k <= victims.size() && best(0, k).value_or(0) < byte_need) ++k;
  if (k > victims.size()) return std::nullopt;

  // Of the sets of k jobs that make room, the one that comes first in preference order.
  RoomPlan plan;
  plan.device = &d;
  plan.point = head.floor;
  plan.top_priority = std::numeric_limits<int>::min();
  int64_t gained = 0;
  for (size_t i = 0; i < victims.size() && plan.preempts.size() < k; ++i) {
    const size_t left = k - plan.preempts.size() - 1;
    const std::optional<int64_t> rest = best(i + 1, left);
    if (!rest || gained + gain[i] + *rest < byte_need) continue;
    plan.preempts.push_back(victims[i]);
    plan.bytes_taken += Held(*victims[i]);
    plan.top_priority = std::max(plan.top_priority, victims[i]->demand.priority);
    gained += gain[i];
  }
  std::vector<const RunningJob*> others;
  for (const RunningJob* r : shrinkable) {
    if (std::find(plan.preempts.begin(), plan.preempts.end(), r) == plan.preempts.end()) others.push_back(r);
  }
  const int top = plan.top_priority;  // ranks preempting plans by whom they stop, not whom they shrink
  if (!ShrinkInto(others, need - d.Free() - plan.bytes_taken, plan)) return std::nullopt;
  plan.top_priority = top;
  return plan;
}

// Room for the head job: shrinking alone for the largest point it can make (requested first), else
// stopping lower-priority jobs for its floor.
std::optional<RoomPlan> MakeRoom(const std::vector<Device*>& viable, const JobDemand& head,
                                 const PlacementOptions& options) {
  if (options.allow_shrink) {
    for (int p = head.requested; p >= head.floor; --p) {
      std::optional<RoomPlan> best;
      for (Device* d : viable) {
        std::optional<RoomPlan> plan = PlanShrink(*d, head, p);
        if (plan && (!best || plan->ShrinkKey() < best->ShrinkKey())) best = std::move(plan);
      }
      if (best) return best;
    }
  }
  if (options.allow_preempt) {
    std::optional<RoomPlan> best;
    for (Device* d : viable) {
      std::optional<RoomPlan> plan = PlanPreempt(*d, head, options.allow_shrink);
      if (plan && (!best || plan->PreemptKey() < best->PreemptKey())) best = std::move(plan);
    }
    return best;
  }
  return std::nullopt;
}

// The device a waiting job is closest to fitting on: fewest bytes missing at its floor, then a free
// slot, then the smallest, then configuration order.
Device* Closest(const std::vector<Device*>& viable, const JobDemand& job) {
  const int64_t need = job.budgets[job.floor];
  auto key = [&](const Device* d) {
    return std::make_tuple(std::max<int64_t>(0, need - d->Free()), d->FreeSlots() < 1, d->state->capacity_bytes,
                           d->index);
  };
  return *std::min_element(viable.begin(), viable.end(),
                           [&](const Device* a, const Device* b) { return key(a) < key(b); });
}

// The largest point at or below the job's requested one that `d` can ever hold.
int LargestHoldable(const Device& d, const JobDemand& job) {
  int p = job.requested;
  while (p > job.floor && !d.CanEverHold(job.budgets[p])) --p;
  return p;
}

// Why a job can never start as configured, or "" if some device could hold it.
std::string NeverFits(const JobDemand& job, const std::vector<Device*>& candidates) {
  const int64_t need = job.budgets[job.floor];
  if (!job.pinned_device.empty()) {
    const Device& d = *candidates.front();
    if (d.state->slots <= 0) {
      return absl::StrFormat("pinned to %s, which runs no jobs (0 slots): it can never start", d.state->name);
    }
    const ByteUnit unit(std::max(need, d.state->capacity_bytes));
    return absl::StrFormat("pinned to %s, which has %s in all, and it needs %s: it can never fit", d.state->name,
                           unit(d.state->capacity_bytes), Need(job, job.floor, unit));
  }
  const Device* largest = nullptr;
  for (const Device* d : candidates) {
    if (d->state->slots > 0 && (!largest || d->state->capacity_bytes > largest->state->capacity_bytes)) largest = d;
  }
  if (!largest) return "no configured device runs jobs (every one has 0 slots): it can never start";
  const ByteUnit unit(std::max(need, largest->state->capacity_bytes));
  return absl::StrFormat("needs %s, more than any device holds (the largest, %s, has %s in all): it can never fit",
                         Need(job, job.floor, unit), largest->state->name, unit(largest->state->capacity_bytes));
}

std::string AdmitReason(const JobDemand& job, int point, const Device& d) {
  const ByteUnit unit(std::max(job.budgets[job.requested], d.Free()));
  if (point == job.requested) {
    return absl::StrFormat("starts on %s at its requested point %d (%s; %s free there)", d.state->name, point,
                           unit(job.budgets[point]), unit(d.Free()));
  }
  return absl::StrFormat(
      "starts on %s at point %d (%s), below its requested point %d (%s): the largest that fits in the %s free there",
      d.state->name, point, unit(job.budgets[point]), job.requested, unit(job.budgets[job.requested]), unit(d.Free()));
}

// Appends the plan's shrinks and preemptions to `decisions`; returns why the head waits meanwhile.
std::string AnnounceRoom(const RoomPlan& plan, const JobDemand& head, std::vector<Decision>& decisions) {
  const Device& d = *plan.device;
  const std::string need = Need(head, plan.point, ByteUnit(head.budgets[plan.point]));
  for (const auto& [r, to] : plan.shrinks) {
    const std::vector<int64_t>& b = r->demand.budgets;
    const ByteUnit unit(b[r->point]);
    decisions.push_back(
        {Decision::Kind::kShrink, r->demand.id, d.state->name, to,
         absl::StrFormat("shrinks on %s from point %d (%s) to point %d (%s) to make room for %s (priority %d), which "
                         "needs %s",
                         d.state->name, r->point, unit(b[r->point]), to, unit(b[to]), head.id, head.priority, need)});
  }
  for (const RunningJob* r : plan.preempts) {
    decisions.push_back(
        {Decision::Kind::kPreempt, r->demand.id, d.state->name, r->point,
         absl::StrFormat("stops on %s to make room for %s (priority %d over its %d), which needs %s; it checkpoints "
                         "and goes back to the queue",
                         d.state->name, head.id, head.priority, r->demand.priority, need)});
  }
  const size_t n = plan.preempts.empty() ? plan.shrinks.size() : plan.preempts.size();
  return absl::StrFormat("waits for %s while %d %s job%s %s to make room: %s", d.state->name, n,
                         plan.preempts.empty() ? "running" : "lower-priority", n == 1 ? "" : "s",
                         plan.preempts.empty() ? (n == 1 ? "shrinks" : "shrink") : (n == 1 ? "stops" : "stop"),
                         Shortfall(head, plan.point, d));
}

std::string Ahead(int jobs_ahead) {
  if (jobs_ahead == 0) return "next in the queue";
  return absl::StrFormat("%d job%s ahead", jobs_ahead, jobs_ahead == 1 ? "" : "s");
}

}  // namespace

PlacementResult Place(const std::vector<DeviceState>& devices, const std::vector<RunningJob>& running,
                      const std::vector<JobDemand>& queued, const PlacementOptions& options) {
  std::vector<Device> view(devices.size());
  std::map<std::string, Device*> by_name;
  for (size_t i = 0; i < devices.size(); ++i) {
    view[i].state = &devices[i];
    view[i].index = static_cast<int>(i);
    by_name.emplace(devices[i].name, &view[i]);  // a repeated name: the first one counts
  }
  for (const RunningJob& r : running) {
    auto it = by_name.find(r.device);
    if (it == by_name.end()) continue;  // not a configured device: nothing to account it against
    it->second->jobs.push_back(&r);
    it->second->used += Held(r);
    it->second->taken += 1;
  }

  struct Waiter {
    const JobDemand* job;
    std::string reason;
    bool never_fits;
  };
  std::vector<Waiter> waiters;
  PlacementResult result;
  bool head_seen = false;  // the first job that waits (and could ever start) may make room

  for (const JobDemand* job_ptr : QueueOrder(running, queued, options)) {
    const JobDemand& job = *job_ptr;
    if (std::string why = Malformed(job); !why.empty()) {
      waiters.push_back({&job, absl::StrCat("its demand is malformed (", why, "): it can never start"), true});
      continue;
    }
    std::vector<Device*> candidates;
    if (job.pinned_device.empty()) {
      for (Device& d : view) candidates.push_back(&d);
    } else if (auto it = by_name.find(job.pinned_device); it != by_name.end()) {
      candidates.push_back(it->second);
    } else {
      waiters.push_back(
          {&job,
           absl::StrFormat("pinned to %s, which is not a configured device: it can never start", job.pinned_device),
           true});
      continue;
    }
    if (candidates.empty()) {
      waiters.push_back({&job, "no devices are configured: it can never start", true});
      continue;
    }
    std::vector<Device*> viable;
    for (Device* d : candidates) {
      if (d->CanEverHold(job.budgets[job.floor])) viable.push_back(d);
    }
    if (viable.empty()) {
      waiters.push_back({&job, NeverFits(job, candidates), true});
      continue;
    }

    // Its requested point where it fits (best fit), else the largest point at or above its floor.
    Device* chosen = nullptr;
    int point = job.requested;
    for (; point >= job.floor && !chosen; --point) {
      for (Device* d : viable) {
        if (d->Free() < job.budgets[point] || d->FreeSlots() < 1) continue;
        if (!chosen || std::make_pair(d->Free(), d->index) < std::make_pair(chosen->Free(), chosen->index)) {
          chosen = d;
        }
      }
    }
    if (chosen) {
      ++point;  // the loop stepped past the point that fit
      result.decisions.push_back(
          {Decision::Kind::kAdmit, job.id, chosen->state->name, point, AdmitReason(job, point, *chosen)});
      chosen->used += job.budgets[point];
      chosen->taken += 1;
      continue;
    }

    const bool starving = job.waited_seconds > options.starvation_seconds;
    std::string reason;
    if (!head_seen) {
      head_seen = true;
      // Room-making already in flight on a device it could use (a busy job it may have displaced):
      // wait for it to settle rather than displace more, and keep later jobs out of the room it makes.
      Device* pending = nullptr;
      for (Device* d : viable) {
        const bool in_flight = std::any_of(d->jobs.begin(), d->jobs.end(), [&](const RunningJob* r) {
          return r->busy && r->demand.priority <= job.priority;
        });
        if (in_flight && (!pending || Closest({pending, d}, job) == d)) pending = d;
      }
      if (pending) {
        const int p = LargestHoldable(*pending, job);
        reason = absl::StrCat("waits for ", pending->state->name,
                              ", where a shrink or stop is in flight: ", Shortfall(job, p, *pending));
        pending->Reserve(job, job.budgets[p]);
      } else if (std::optional<RoomPlan> plan = MakeRoom(viable, job, options)) {
        reason = AnnounceRoom(*plan, job, result.decisions);
        plan->device->Reserve(job, job.budgets[LargestHoldable(*plan->device, job)]);
      }
    }
    if (reason.empty()) {
      Device& d = *Closest(viable, job);
      if (starving) {
        reason = absl::StrFormat("has waited %.0f s (over %.0f s), so %s is held for it: %s", job.waited_seconds,
                                 options.starvation_seconds, d.state->name, Shortfall(job, job.floor, d));
        d.Reserve(job, job.budgets[job.floor]);
      } else {
        reason = absl::StrCat("waits for ", d.state->name, ": ", Shortfall(job, job.floor, d));
      }
    }
    waiters.push_back({&job, std::move(reason), false});
  }

  // Positions count only jobs that can start: one the scheduler will fail is ahead of no one.
  result.waiting.reserve(waiters.size());
  int ahead = 0;
  for (Waiter& w : waiters) {
    WaitInfo info;
    info.job_id = w.job->id;
    info.never_fits = w.never_fits;
    if (w.never_fits) {
      info.reason = std::move(w.reason);
    } else {
      info.queue_position = ahead + 1;
      info.reason = absl::StrCat(w.reason, "; ", Ahead(ahead));
      ++ahead;
    }
    result.waiting.push_back(std::move(info));
  }
  return result;
}

}  // namespace xtrain::server
