#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace xtrain::server {

// A device jobs are placed on (from the configuration): "cpu", "cuda:0", ...
struct DeviceState {
  std::string name;
  int64_t capacity_bytes = 0;  // memory the service may give to jobs on it
  int slots = 1;               // jobs it runs at once
};

// What a job needs. Its plans form a chain (the planner's, at the job's batch): point i runs under
// budgets[i] bytes, ascending in i; a larger point has at least the fidelity of a smaller one.
struct JobDemand {
  std::string id;
  std::string tenant;
  int priority = 0;               // higher first
  int64_t order = 0;              // submission order: FIFO within a priority
  double waited_seconds = 0;      // since it was (re)queued
  std::vector<int64_t> budgets;   // per chain point: the budget that point needs, ascending
  int requested = 0;              // the point the job asked for (its own budget's plan)
  int floor = 0;                  // the lowest point it may be shrunk to (== requested: not shrinkable)
  std::string pinned_device;      // empty: any device
};

// A job a worker runs now.
struct RunningJob {
  JobDemand demand;
  std::string device;
  int point = 0;                  // the chain point it runs at; it holds demand.budgets[point]
  bool busy = false;              // a shrink or stop is in flight: it holds its bytes, do not touch it
};

struct PlacementOptions {
  // A job queued longer than this gets a device reserved for it: others may only use what is left
  // beside its floor there, so it runs as soon as that device drains (no starvation).
  double starvation_seconds = 600;
  bool allow_shrink = true;       // re-plan running jobs smaller (down to their floor) to make room
  bool allow_preempt = true;      // stop lower-priority jobs (they checkpoint and requeue) as a last resort
};

// One action for the scheduler to carry out.
struct Decision {
  enum class Kind {
    kAdmit,    // start `job_id` on `device` at chain `point`
    kShrink,   // re-plan running `job_id` down to chain `point` (it checkpoints and goes on)
    kPreempt,  // stop running `job_id` (it checkpoints and goes back to the queue)
  };
  Kind kind = Kind::kAdmit;
  std::string job_id;
  std::string device;
  int point = 0;                  // kPreempt: the point it runs at now
  std::string reason;             // a sentence for the job's event log
};

// Why a queued job still waits, and where it stands.
struct WaitInfo {
  std::string job_id;
  int queue_position = 0;         // 1 = next; counts only jobs that can start (0 when never_fits)
  std::string reason;             // "waits for cpu: needs 1.20 GiB at its floor, 0.40 GiB free (0.80 GiB missing); ..."
  bool never_fits = false;        // it can never start as configured (too large, pinned to a missing or
                                  // too small device, malformed demand): the scheduler should fail it
};

struct PlacementResult {
  std::vector<Decision> decisions;
  std::vector<WaitInfo> waiting;  // every queued job not admitted, in queue order
};

// One scheduling pass: which queued jobs start where, which running jobs shrink or stop to make room.
// Pure: no I/O, no clocks (the caller passes waited_seconds). The policy (DESIGN.md §3):
// - Queue order: priority (higher first); a starving job (waited > starvation_seconds) first in its
//   priority; between tenants of one priority, the tenant with fewer bytes running goes first (fair
//   share); FIFO (order) within a tenant.
// - A job starts on a device only when its budget fits that device's free bytes and a free slot: its
//   requested point if it fits (best fit: the device with the least free bytes that holds it), else
//   the largest point at or above its floor that fits.
// - If nothing fits, the job at the head of the queue gets room by shrinking running jobs of no higher
//   priority towards their floors (least important first); only if that is not enough, lower-priority
//   running jobs are preempted. Bytes freed this way count only once the job confirms (busy).
// - A starving job reserves the device it fits best: later jobs may start there only in what remains
//   beside its floor, so smaller jobs run ahead of it only where they do not delay it.
// Readings of the points above where they leave a choice:
// - Fair share: the order is built once per pass; each job placed in it charges its tenant its
//   requested budget, as if the jobs ahead ran, so a tenant that floods the queue alternates with
//   the others. Ties: the tenant whose next job has the smaller order, then id. Starving jobs of one
//   priority go by order, then id. Priority still comes first: a steady stream of higher-priority
//   jobs can hold back a lower-priority one, starving or not.
// - The head is the first job in queue order that waits and could ever start; it alone may make room
//   in a pass (one room-making per pass). Shrinking aims at its requested point, else the largest
//   point shrinking can make room for; preempting (only when shrinking every candidate to its floor
//   is not enough, or a slot is needed) aims at its floor. Among devices: shrinking that touches the
//   lowest priorities, then the fewest jobs and bytes; preempting that stops the fewest jobs.
// - While a device the head could use has a busy job of no higher priority (room being made, or a
//   job stopping), the head makes no more room: it waits for that device and holds it.
// - A held device (a reservation) keeps its holder's bytes and one slot from every later job: a
//   starving job holds its floor on the device it is closest to fitting (fewest bytes missing, then
//   a free slot, then the smallest, then configuration order); the head making room holds its
//   requested point (or the largest the device can hold), so backfill does not take the room made.
// - A job that can never start (see WaitInfo::never_fits) makes no room and holds nothing. Running
//   jobs on devices not in `devices` are ignored (their bytes still count for their tenant).
PlacementResult Place(const std::vector<DeviceState>& devices, const std::vector<RunningJob>& running,
                      const std::vector<JobDemand>& queued, const PlacementOptions& options = {});

}  // namespace xtrain::server
