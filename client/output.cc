#include "client/output.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace xtrain::client {
namespace v1 = ::xtrain::v1;

namespace {

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(t.seconds()), absl::LocalTimeZone());
}

double Seconds(const google::protobuf::Timestamp& t) { return static_cast<double>(t.seconds()) + t.nanos() * 1e-9; }

std::string Number(double value) { return absl::StrFormat("%.4g", value); }

std::string Rate(double samples_per_second) {
  // Two literal formats: clang checks a format string only when it is a constant.
  if (samples_per_second >= 100) return absl::StrFormat("%.0f samples/s", samples_per_second);
  return absl::StrFormat("%.1f samples/s", samples_per_second);
}

std::string Percent(int64_t step, int64_t total) {
  if (total <= 0) return "";
  return absl::StrFormat("%d%%", static_cast<int>(100.0 * static_cast<double>(std::min(step, total)) / total));
}

std::string KindName(v1::DatasetSpec::Kind kind) { return v1::DatasetSpec::Kind_Name(kind); }

std::string LayerKindName(v1::LayerPlan::Kind kind) {
  switch (kind) {
    case v1::LayerPlan::EXACT:
      return "exact";
    case v1::LayerPlan::LEAN:
      return "lean";
    case v1::LayerPlan::XCONV:
      return "xconv";
    default:
      return "-";
  }
}

std::string Metrics(const google::protobuf::Map<std::string, double>& metrics) {
  const std::map<std::string, double> sorted(metrics.begin(), metrics.end());
  std::vector<std::string> parts;
  for (const auto& [name, value] : sorted) parts.push_back(absl::StrCat(name, " ", Number(value)));
  return absl::StrJoin(parts, ", ");
}

// "  label     text\n" lines of a summary.
void Line(std::string& out, absl::string_view label, absl::string_view text) {
  if (text.empty()) return;
  absl::StrAppendFormat(&out, "  %-10s %s\n", label, text);
}

}  // namespace

std::string ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);  // fails only on Any without a type
  if (pretty && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string HumanBytes(int64_t bytes) {
  const char* const units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (std::llabs(bytes) < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (std::fabs(value) >= 1024 && unit < 3) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", value, units[unit]);
}

std::string HumanDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "-";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string StateName(v1::JobState state) { return v1::JobState_Name(state); }

std::string FormatTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                        const std::vector<bool>& right) {
  std::vector<size_t> widths(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c) widths[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t c = 0; c < widths.size(); ++c) {
      const std::string cell = c < cells.size() ? cells[c] : "";
      const bool align_right = c < right.size() && right[c];
      const std::string pad(widths[c] - std::min(widths[c], cell.size()), ' ');
      if (c > 0) line += "  ";
      line += align_right ? pad + cell : cell + pad;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  };
  emit(header);
  for (const auto& row : rows) emit(row);
  return out;
}

std::string FormatPlan(const v1::PlanJobResponse& response) {
  const v1::Plan& plan = response.plan();
  std::string out = absl::StrCat("Plan for batch ", plan.batch_size(), " under a budget of ", HumanBytes(plan.budget_bytes()),
                                 response.cached() ? " (from the cache)" : "", "\n");
  const double share = plan.exact_peak_bytes() > 0
                           ? 100.0 * static_cast<double>(plan.predicted_peak_bytes()) / plan.exact_peak_bytes()
                           : 0;
  Line(out, "peak", absl::StrFormat("%s predicted%s; the exact job needs %s (%.1f%%)", HumanBytes(plan.predicted_peak_bytes()),
                                    plan.peak_at().empty() ? "" : absl::StrCat(" at ", plan.peak_at()),
                                    HumanBytes(plan.exact_peak_bytes()), share));
  Line(out, "usable", absl::StrCat(HumanBytes(plan.usable_bytes()), " (the budget less the planner's margin); loader ",
                                   HumanBytes(plan.loader_bytes())));
  Line(out, "fidelity", absl::StrFormat("%.3f%s", plan.fidelity(), plan.lean_layers() ? "; lean layers on" : ""));
  Line(out, "budgets", absl::StrCat("smallest for this batch ", HumanBytes(plan.minimum_budget_bytes()), "; floor ",
                                    HumanBytes(plan.floor_budget_bytes()), "; largest batch at this budget ",
                                    plan.largest_batch()));
  if (plan.calibration_error() > 0) {
    Line(out, "model", absl::StrFormat("the memory model's calibration error is %.1f%%", 100 * plan.calibration_error()));
  }
  for (const std::string& note : plan.notes()) Line(out, "note", note);
  if (response.devices_size() > 0) {
    std::vector<std::vector<std::string>> rows;
    for (const v1::DeviceFit& device : response.devices()) {
      rows.push_back({device.device(), HumanBytes(device.capacity_bytes()), HumanBytes(device.free_bytes()),
                      device.fits_now() ? "yes" : "no", device.fits() ? "yes" : "no"});
    }
    absl::StrAppend(&out, "\nDevices\n", FormatTable({"DEVICE", "CAPACITY", "FREE", "FITS NOW", "FITS"}, rows,
                                                     {false, true, true, false, false}));
  }
  if (plan.layers_size() > 0) {
    std::vector<std::vector<std::string>> rows;
    for (const v1::LayerPlan& layer : plan.layers()) {
      rows.push_back({layer.path(), LayerKindName(layer.kind()),
                      layer.kind() == v1::LayerPlan::XCONV ? absl::StrCat(layer.probes()) : "-",
                      layer.mode().empty() ? "-" : layer.mode(), HumanBytes(layer.kept_bytes()),
                      HumanBytes(layer.exact_kept_bytes()), absl::StrFormat("%.3f", layer.fidelity()), layer.note()});
    }
    absl::StrAppend(&out, "\nLayers\n",
                    FormatTable({"LAYER", "KIND", "PROBES", "MODE", "KEPT", "EXACT KEPT", "FIDELITY", "NOTE"}, rows,
                                {false, false, true, false, true, true, true, false}));
  }
  return out;
}

std::string FormatJob(const v1::Job& job) {
  const v1::JobSpec& spec = job.spec();
  const v1::Progress& p = job.progress();
  std::string out = absl::StrCat(job.id(), spec.display_name().empty() ? "" : absl::StrCat("  ", spec.display_name()), "\n");
  std::string state = StateName(job.state());
  if (!job.device().empty()) absl::StrAppend(&state, " on ", job.device());
  // Several servers share the store: which one runs it (or ran it).
  if (!job.replica().empty()) absl::StrAppend(&state, job.device().empty() ? " on" : " of", " replica ", job.replica());
  if (job.cancel_requested() && job.state() == v1::RUNNING) absl::StrAppend(&state, " (cancel requested)");
  if (job.attempts() > 0) absl::StrAppend(&state, "; ", job.attempts(), " failed attempt(s) retried");
  Line(out, "state", state);
  if (job.state() == v1::QUEUED) {
    Line(out, "queue", absl::StrCat("position ", job.queue_position(),
                                    job.waiting_reason().empty() ? "" : absl::StrCat(": ", job.waiting_reason())));
  }
  Line(out, "failure", job.failure_reason());
  std::string model = spec.model().name();
  if (spec.model().width() > 0) absl::StrAppend(&model, " width ", spec.model().width());
  if (spec.model().depth() > 0) absl::StrAppend(&model, " depth ", spec.model().depth());
  absl::StrAppend(&model, "; dataset ", KindName(spec.dataset().kind()));
  if (!spec.dataset().path().empty()) absl::StrAppend(&model, " ", spec.dataset().path());
  absl::StrAppend(&model, "; task ", spec.task().kind().empty() ? "classification" : spec.task().kind());
  Line(out, "model", model);
  if (job.state() == v1::RUNNING || p.step() > 0) {
    std::string progress = absl::StrCat("step ", p.step());
    if (p.total_steps() > 0) absl::StrAppend(&progress, "/", p.total_steps(), " (", Percent(p.step(), p.total_steps()), ")");
    if (p.epochs() > 0) absl::StrAppend(&progress, ", epoch ", p.epoch(), "/", p.epochs());
    absl::StrAppend(&progress, ", loss ", Number(p.loss()));
    if (p.samples_per_second() > 0) absl::StrAppend(&progress, ", ", Rate(p.samples_per_second()));
    if (job.state() == v1::RUNNING && p.eta_seconds() > 0) absl::StrAppend(&progress, ", ETA ", HumanDuration(p.eta_seconds()));
    Line(out, "progress", progress);
    if (!p.metric_name().empty()) Line(out, "metric", absl::StrCat(p.metric_name(), " ", Number(p.metric_value())));
    if (p.last_checkpoint_step() > 0) Line(out, "checkpoint", absl::StrCat("at step ", p.last_checkpoint_step()));
  }
  // The budget the job runs under (what the scheduler reserves: its plan's, after any shrink) and, where
  // it differs, the one the spec asked for.
  std::string memory = absl::StrCat("budget ", HumanBytes(job.budget_bytes() > 0 ? job.budget_bytes() : job.plan().budget_bytes()));
  const int64_t requested = spec.memory().budget_bytes();
  if (requested > 0 && job.budget_bytes() > 0 && requested != job.budget_bytes()) {
    absl::StrAppend(&memory, " reserved (", HumanBytes(requested), " requested)");
  } else if (spec.memory().device_share() > 0) {
    absl::StrAppend(&memory, absl::StrFormat(" (%.4g%% of the device requested)", 100 * spec.memory().device_share()));
  }
  if (job.plan().predicted_peak_bytes() > 0 || p.predicted_peak_bytes() > 0) {
    absl::StrAppend(&memory, "; peak predicted ",
                    HumanBytes(p.predicted_peak_bytes() > 0 ? p.predicted_peak_bytes() : job.plan().predicted_peak_bytes()));
  }
  if (p.measured_peak_bytes() > 0) absl::StrAppend(&memory, ", measured ", HumanBytes(p.measured_peak_bytes()));
  if (job.plan().exact_peak_bytes() > 0) absl::StrAppend(&memory, "; exact job ", HumanBytes(job.plan().exact_peak_bytes()));
  Line(out, "memory", memory);
  if (job.plan().batch_size() > 0) {
    int xconv = 0;
    for (const v1::LayerPlan& layer : job.plan().layers()) xconv += layer.kind() == v1::LayerPlan::XCONV ? 1 : 0;
    Line(out, "plan", absl::StrFormat("batch %d, fidelity %.3f, %d of %d convolutions XConv", job.plan().batch_size(),
                                      job.plan().fidelity(), xconv, job.plan().layers_size()));
  }
  Line(out, "metrics", Metrics(job.final_metrics()));
  Line(out, "weights", job.weights_artifact_id());
  if (!job.spec().labels().empty()) {
    const std::map<std::string, std::string> labels(spec.labels().begin(), spec.labels().end());
    Line(out, "labels", absl::StrJoin(labels, ", ", absl::PairFormatter("=")));
  }
  std::string times = absl::StrCat("created ", Time(job.create_time()));
  if (job.has_start_time()) absl::StrAppend(&times, ", started ", Time(job.start_time()));
  if (job.has_end_time()) absl::StrAppend(&times, ", ended ", Time(job.end_time()));
  Line(out, "times", times);
  Line(out, "events", absl::StrCat(job.last_sequence()));
  return out;
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs) {
  std::vector<std::vector<std::string>> rows;
  for (const v1::Job& job : jobs) {
    const v1::Progress& p = job.progress();
    std::string progress = "-";
    if (p.total_steps() > 0) {
      progress = absl::StrCat(p.step(), "/", p.total_steps());
    } else if (p.step() > 0) {
      progress = absl::StrCat(p.step());
    }
    std::string state = StateName(job.state());
    if (job.state() == v1::QUEUED && job.queue_position() > 0) absl::StrAppend(&state, " #", job.queue_position());
    rows.push_back({job.id(), job.spec().display_name().empty() ? "-" : job.spec().display_name(), state, progress,
                    job.device().empty() ? "-" : job.device(),
                    HumanBytes(job.budget_bytes() > 0 ? job.budget_bytes() : job.plan().budget_bytes()),
                    p.measured_peak_bytes() > 0 ? HumanBytes(p.measured_peak_bytes()) : "-", Time(job.create_time())});
  }
  return FormatTable({"ID", "NAME", "STATE", "STEP", "DEVICE", "BUDGET", "PEAK", "CREATED"}, rows,
                     {false, false, false, true, false, true, true, false});
}

std::string FormatEvent(const v1::WatchJobResponse& response) {
  const v1::JobEvent& e = response.event();
  std::string out = absl::StrCat("#", e.sequence(), " ");
  if (e.has_time()) {
    absl::StrAppend(&out, absl::FormatTime("%H:%M:%S", absl::FromUnixSeconds(e.time().seconds()), absl::LocalTimeZone()), " ");
  }
  switch (e.kind_case()) {
    case v1::JobEvent::kState:
      absl::StrAppend(&out, "state ", StateName(e.state().from_state()), " -> ", StateName(e.state().to_state()),
                      e.state().reason().empty() ? "" : absl::StrCat(": ", e.state().reason()));
      break;
    case v1::JobEvent::kPlan: {
      const v1::Plan& plan = e.plan();
      int xconv = 0;
      for (const v1::LayerPlan& layer : plan.layers()) xconv += layer.kind() == v1::LayerPlan::XCONV ? 1 : 0;
      absl::StrAppendFormat(&out, "plan batch %d, predicted peak %s under %s (exact %s), fidelity %.3f, %d of %d XConv",
                            plan.batch_size(), HumanBytes(plan.predicted_peak_bytes()), HumanBytes(plan.budget_bytes()),
                            HumanBytes(plan.exact_peak_bytes()), plan.fidelity(), xconv, plan.layers_size());
      break;
    }
    case v1::JobEvent::kStep: {
      const v1::StepMetrics& s = e.step();
      absl::StrAppend(&out, "step ", s.step());
      if (s.total_steps() > 0) absl::StrAppend(&out, "/", s.total_steps());
      absl::StrAppend(&out, " epoch ", s.epoch(), " loss ", Number(s.loss()), " lr ", Number(s.lr()), " ",
                      Rate(s.samples_per_second()), absl::StrFormat(" %.3f s/step", s.step_seconds()), " peak ",
                      HumanBytes(s.measured_peak_bytes()), " (predicted ", HumanBytes(s.predicted_peak_bytes()), ")");
      if (s.fidelity_ratio() > 0) absl::StrAppend(&out, " fidelity ratio ", Number(s.fidelity_ratio()));
      break;
    }
    case v1::JobEvent::kValidation: {
      const v1::ValidationMetrics& v = e.validation();
      absl::StrAppend(&out, "validation epoch ", v.epoch(), " step ", v.step(), ": ", v.metric_name(), " ",
                      Number(v.metric_value()), ", train loss ", Number(v.train_loss()));
      break;
    }
    case v1::JobEvent::kCheckpoint:
      absl::StrAppend(&out, "checkpoint at step ", e.checkpoint().step(), " (", e.checkpoint().reason(), ")");
      break;
    case v1::JobEvent::kReplanned: {
      const v1::Replanned& r = e.replanned();
      absl::StrAppend(&out, "replanned: ", r.reason(), "; budget ", HumanBytes(r.old_budget_bytes()), " -> ",
                      HumanBytes(r.new_budget_bytes()), ", predicted peak ", HumanBytes(r.old_predicted_peak_bytes()),
                      " -> ", HumanBytes(r.new_predicted_peak_bytes()));
      break;
    }
    case v1::JobEvent::kAttemptFailed:
      absl::StrAppend(&out, "attempt ", e.attempt_failed().attempt(), " failed: ", e.attempt_failed().reason(),
                      e.attempt_failed().will_retry() ? " (retrying)" : " (no retry left)");
      break;
    default:
      absl::StrAppend(&out, "event");
      break;
  }
  if (response.coalesced() > 0) absl::StrAppend(&out, " [", response.coalesced(), " step events skipped]");
  return out;
}

std::string FormatOutcome(const v1::Job& job) {
  const v1::Progress& p = job.progress();
  std::string out = absl::StrCat(job.id(), " ", StateName(job.state()));
  if (p.step() > 0) absl::StrAppend(&out, " after ", p.step(), " steps");
  if (job.has_start_time() && job.has_end_time()) {
    absl::StrAppend(&out, " in ", HumanDuration(Seconds(job.end_time()) - Seconds(job.start_time())));
  }
  absl::StrAppend(&out, "\n");
  Line(out, "failure", job.failure_reason());
  Line(out, "metrics", Metrics(job.final_metrics()));
  if (p.measured_peak_bytes() > 0 || p.predicted_peak_bytes() > 0) {
    Line(out, "peak", absl::StrCat("measured ", HumanBytes(p.measured_peak_bytes()), ", predicted ",
                                   HumanBytes(p.predicted_peak_bytes()), ", budget ", HumanBytes(job.budget_bytes())));
  }
  if (!job.weights_artifact_id().empty()) {
    Line(out, "weights", absl::StrCat(job.weights_artifact_id(), " (xtrainctl download ", job.weights_artifact_id(), ")"));
  }
  return out;
}

void WatchProgress::Update(const v1::WatchJobResponse& response) {
  const v1::JobEvent& e = response.event();
  last_sequence = std::max(last_sequence, e.sequence());
  switch (e.kind_case()) {
    case v1::JobEvent::kState:
      state = e.state().to_state();
      reason = e.state().reason();
      break;
    case v1::JobEvent::kPlan:
      if (e.plan().predicted_peak_bytes() > 0) predicted_peak_bytes = e.plan().predicted_peak_bytes();
      break;
    case v1::JobEvent::kStep: {
      const v1::StepMetrics& s = e.step();
      step = s.step();
      epoch = s.epoch();
      if (s.total_steps() > 0) total_steps = s.total_steps();
      has_loss = true;
      loss = s.loss();
      samples_per_second = s.samples_per_second();
      if (s.step_seconds() > 0) step_seconds = step_seconds > 0 ? 0.7 * step_seconds + 0.3 * s.step_seconds() : s.step_seconds();
      measured_peak_bytes = std::max(measured_peak_bytes, s.measured_peak_bytes());
      if (s.predicted_peak_bytes() > 0) predicted_peak_bytes = s.predicted_peak_bytes();
      break;
    }
    case v1::JobEvent::kValidation:
      metric_name = e.validation().metric_name();
      metric_value = e.validation().metric_value();
      break;
    case v1::JobEvent::kReplanned:
      if (e.replanned().new_predicted_peak_bytes() > 0) predicted_peak_bytes = e.replanned().new_predicted_peak_bytes();
      break;
    default:
      break;
  }
}

double WatchProgress::EtaSeconds() const {
  if (total_steps <= 0 || step_seconds <= 0) return -1;
  return static_cast<double>(std::max<int64_t>(total_steps - step, 0)) * step_seconds;
}

std::string FormatProgressBar(const WatchProgress& progress, int width) {
  width = std::max(width, 20);
  std::string line;
  if (progress.step == 0) {
    line = StateName(progress.state);
    if (!progress.reason.empty()) absl::StrAppend(&line, ": ", progress.reason);
  } else {
    std::vector<std::string> parts;
    parts.push_back(progress.total_steps > 0 ? absl::StrCat(progress.step, "/", progress.total_steps)
                                             : absl::StrCat("step ", progress.step));
    if (progress.total_steps > 0) parts.push_back(Percent(progress.step, progress.total_steps));
    if (progress.EtaSeconds() >= 0) parts.push_back(absl::StrCat("ETA ", HumanDuration(progress.EtaSeconds())));
    if (progress.has_loss) parts.push_back(absl::StrCat("loss ", Number(progress.loss)));
    if (progress.samples_per_second > 0) parts.push_back(Rate(progress.samples_per_second));
    if (progress.measured_peak_bytes > 0) {
      parts.push_back(absl::StrCat("peak ", HumanBytes(progress.measured_peak_bytes), " / ",
                                   HumanBytes(progress.predicted_peak_bytes), " predicted"));
    }
    if (!progress.metric_name.empty()) parts.push_back(absl::StrCat(progress.metric_name, " ", Number(progress.metric_value)));
    if (progress.total_steps > 0) {
      const int bar = std::clamp(width / 4, 10, 30);
      if (width >= bar + 2 + 2 + static_cast<int>(parts[0].size())) {
        const double fraction = std::clamp(static_cast<double>(progress.step) / progress.total_steps, 0.0, 1.0);
        const int filled = static_cast<int>(std::lround(fraction * bar));
        std::string cells(static_cast<size_t>(filled), '=');
        if (filled < bar) cells += '>';
        cells.resize(static_cast<size_t>(bar), ' ');
        line = absl::StrCat("[", cells, "]");
      }
    }
    // Parts in order of importance, as many as the width holds.
    for (const std::string& part : parts) {
      const std::string next = line.empty() ? part : absl::StrCat(line, "  ", part);
      if (static_cast<int>(next.size()) > width) break;
      line = next;
    }
  }
  if (static_cast<int>(line.size()) > width) line.resize(static_cast<size_t>(width));
  return line;
}

}  // namespace xtrain::client
