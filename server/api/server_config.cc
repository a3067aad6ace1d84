#include "server/api/server_config.h"

#include <unistd.h>

#include <cstdlib>
#include <map>

#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace xtrain::server {
namespace {

// One setting by its flag name (without dashes), as text; lists join with commas.
using Settings = std::map<std::string, std::vector<std::string>>;

const char* const kKeys[] = {"listen",          "data-dir",         "data-root",           "device",
                             "worker",          "grace-seconds",    "max-attempts",        "max-concurrent-plans",
                             "starvation-seconds", "checkpoint-seconds", "threads-per-job", "max-upload-bytes",
                             "port-file",       "log-level",        "log-format",       "watch-coalesce-events", "watch-coalesce-ms",
                             "watch-step-rate", "tokens", "tls-cert", "tls-key", "tls-client-ca",
                             "quota-queued-jobs", "quota-budget-bytes", "quota-submits-per-minute",
                             "quota-watchers", "quota-artifact-bytes", "metrics-port",
                             "metrics-job-grace-seconds", "store-url", "replica-id", "lease-seconds"};

bool Known(const std::string& key) {
  for (const char* k : kKeys) {
    if (key == k) return true;
  }
  return false;
}

bool Repeatable(const std::string& key) { return key == "data-root" || key == "device"; }

absl::StatusOr<double> ParseDouble(const std::string& where, const std::string& text) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value)) return absl::InvalidArgumentError(absl::StrCat(where, " '", text, "' is not a number"));
  return value;
}

absl::StatusOr<int> ParseInt(const std::string& where, const std::string& text) {
  int value = 0;
  if (!absl::SimpleAtoi(text, &value)) return absl::InvalidArgumentError(absl::StrCat(where, " '", text, "' is not an integer"));
  return value;
}

absl::Status LoadYaml(const std::string& path, Settings& settings) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat("config file ", path, " must hold a mapping of settings"));
  for (const auto& item : root) {
    std::string key = item.first.as<std::string>();
    absl::StrReplaceAll({{"_", "-"}}, &key);
    if (key == "data-roots") key = "data-root";
    if (key == "devices") key = "device";
    if (!Known(key)) return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": unknown setting '", item.first.as<std::string>(), "'"));
    std::vector<std::string> values;
    try {
      if (item.second.IsSequence()) {
        for (const auto& element : item.second) {
          if (element.IsMap()) {
            // A device as a mapping: {name: cpu, capacity: 4GiB, slots: 2}.
            std::string text = element["name"].as<std::string>("cpu");
            if (element["capacity"]) absl::StrAppend(&text, ":capacity=", element["capacity"].as<std::string>());
            if (element["slots"]) absl::StrAppend(&text, ":slots=", element["slots"].as<std::string>());
            values.push_back(text);
          } else {
            values.push_back(element.as<std::string>());
          }
        }
      } else {
        values.push_back(item.second.as<std::string>());
      }
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": setting ", key, ": ", e.what()));
    }
    settings[key] = values;
  }
  return absl::OkStatus();
}

void LoadEnvironment(Settings& settings) {
  for (const char* key : kKeys) {
    std::string name = absl::StrCat("XTRAIN_", key);
    absl::AsciiStrToUpper(&name);
    absl::StrReplaceAll({{"-", "_"}}, &name);
    if (std::string(key) == "data-root") name = "XTRAIN_DATA_ROOTS";
    if (std::string(key) == "device") name = "XTRAIN_DEVICES";
    const char* value = std::getenv(name.c_str());
    if (value == nullptr || *value == '\0') continue;
    if (Repeatable(key)) {
      settings[key] = absl::StrSplit(value, absl::ByAnyChar(Repeatable(key) && std::string(key) == "data-root" ? ":" : ","),
                                     absl::SkipEmpty());
    } else {
      settings[key] = {value};
    }
  }
}

}  // namespace

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  std::string number(absl::StripAsciiWhitespace(text));
  double scale = 1;
  const std::pair<const char*, double> units[] = {{"KiB", 1024.0}, {"MiB", 1024.0 * 1024}, {"GiB", 1024.0 * 1024 * 1024},
                                                 {"TiB", 1024.0 * 1024 * 1024 * 1024}, {"K", 1e3}, {"M", 1e6},
                                                 {"G", 1e9}, {"T", 1e12}, {"B", 1}};
  for (const auto& [suffix, factor] : units) {
    if (absl::EndsWith(number, suffix)) {
      number = number.substr(0, number.size() - std::string(suffix).size());
      scale = factor;
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(number), &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a byte size such as 4GiB, 512MiB or 1000000"));
  }
  return static_cast<int64_t>(value * scale);
}

absl::StatusOr<DeviceState> ParseDevice(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  DeviceState device;
  device.name = parts[0];
  if (device.name.empty()) return absl::InvalidArgumentError(absl::StrCat("device '", text, "' has no name"));
  if (device.name != "cpu" && !absl::StartsWith(device.name, "cuda:")) {
    // "cuda:0:capacity=..." splits the index off: join it back.
  }
  size_t i = 1;
  if (device.name == "cuda" && parts.size() > 1) {
    device.name = absl::StrCat("cuda:", parts[1]);
    i = 2;
  }
  if (device.name != "cpu" && !absl::StartsWith(device.name, "cuda:")) {
    return absl::InvalidArgumentError(absl::StrCat("device '", text, "': the name must be cpu or cuda:N"));
  }
  device.capacity_bytes = 0;
  device.slots = 1;
  for (; i < parts.size(); ++i) {
    std::pair<std::string, std::string> kv = absl::StrSplit(parts[i], absl::MaxSplits('=', 1));
    if (kv.first == "capacity") {
      absl::StatusOr<int64_t> bytes = ParseBytes(kv.second);
      if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat("device '", text, "': capacity ", bytes.status().message()));
      device.capacity_bytes = *bytes;
    } else if (kv.first == "slots") {
      if (!absl::SimpleAtoi(kv.second, &device.slots) || device.slots < 1) {
        return absl::InvalidArgumentError(absl::StrCat("device '", text, "': slots must be a positive integer"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("device '", text, "': unknown field '", kv.first, "' (use capacity=, slots=)"));
    }
  }
  return device;
}

std::string ServerUsage() {
  return R"(xtrain-server: trains and finetunes convolutional networks, each job planned into its memory budget.

Flags (also XTRAIN_<NAME> variables, and keys of a YAML file given with --config):
  --listen HOST:PORT          where to serve gRPC (default 127.0.0.1:50051; port 0 picks a free port)
  --data-dir DIR              the SQLite store, checkpoints, weights, uploads (default ./xtrain-data)
  --data-root DIR             a folder dataset and weight paths may point into (repeatable;
                              XTRAIN_DATA_ROOTS=a:b; default /usr/share/datasets)
  --device SPEC               cpu[:capacity=4GiB][:slots=2] or cuda:N[:capacity=..][:slots=..] (repeatable;
                              XTRAIN_DEVICES=a,b; default cpu with half the memory, cores/2 slots)
  --worker PATH               the xtrain-worker executable (default: next to this one)
  --store-url URL             empty (default): the SQLite file under --data-dir, one server; or
                              postgresql://user:password@host:5432/database, which several servers
                              (replicas) share, with --data-dir on a volume they all mount
  --replica-id ID             this server's name among the replicas (default: the host name)
  --lease-seconds S           a replica silent this long is taken for dead and its jobs go to the
                              others, resumed from their checkpoints (default 10)
  --grace-seconds S           SIGTERM: checkpoint and stop within S seconds (default 25)
  --max-attempts N            worker starts per job before it fails (default 3)
  --max-concurrent-plans N    planning workers at once (default 2)
  --starvation-seconds S      a job queued this long gets a device reserved (default 600)
  --checkpoint-seconds S      default checkpoint interval of running jobs (default 180)
  --threads-per-job N         intra-op threads per training worker (default cores / slots)
  --max-upload-bytes N        largest artifact upload (default 2GiB)
  --port-file FILE            write the bound port here once serving
  --metrics-port N            serve Prometheus metrics at http://<listen host>:N/metrics (default 9464;
                              0 picks a free port, which the log names)
  --metrics-job-grace-seconds S  a stopped job's per-job series (labelled job_id) go S seconds later
                              (default 120)
  --watch-coalesce-events N   a watcher more than N events behind skips to the newest step (default 16)
  --watch-coalesce-ms MS      a watcher whose next step is older than MS skips to the newest step
                              (default 50; 0 turns this rule off). State changes, plans, checkpoints
                              and the final event are never skipped.
  --watch-step-rate N         live step events sent per second over all watchers (default 10000; 0:
                              no limit): with more watchers, each gets the newest step less often
  --tokens FILE               bearer tokens of the tenants, one '<sha256 of the token> <tenant> <user|admin>'
                              a line (reloaded on SIGHUP); without it: one local tenant, no authentication
  --quota-queued-jobs N       per tenant: queued jobs at most (default 0: no limit)
  --quota-budget-bytes SIZE   per tenant: memory budgets of its queued and running jobs together
  --quota-submits-per-minute N  per tenant: SubmitJob calls a minute (bursts up to N)
  --quota-watchers N          per tenant: open WatchJob streams
  --quota-artifact-bytes SIZE per tenant: bytes of uploads, weights and checkpoints held
  --tls-cert FILE             the server's certificate chain (PEM): serve TLS (with --tls-key)
  --tls-key FILE              its private key (PEM)
  --tls-client-ca FILE        require client certificates signed by this CA (PEM)
  --log-level LEVEL           trace, debug, info (default), warn, error, critical, off; workers log at
                              the server's level
  --log-format FORMAT         text (default: lines for people) or json (one JSON object a line: time,
                              level, message, and job_id and tenant on every line about a job)
  --config FILE               a YAML file of the settings above (keys like data_dir, devices: [...])
)";
}

absl::StatusOr<ServerCommand> LoadServerCommand(const std::vector<std::string>& args) {
  Settings flags;
  std::string config_path;
  if (const char* env = std::getenv("XTRAIN_CONFIG"); env != nullptr) config_path = env;
  ServerCommand command;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--help" || arg == "-h") {
      command.help = true;
      return command;
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'; see --help"));
    }
    arg = arg.substr(2);
    std::string value;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
      value = args[++i];
    }
    if (arg == "config") {
      config_path = value;
      continue;
    }
    if (!Known(arg)) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", arg, "; see --help"));
    if (Repeatable(arg)) {
      flags[arg].push_back(value);
    } else {
      flags[arg] = {value};
    }
  }
  Settings settings;
  if (!config_path.empty()) {
    if (absl::Status s = LoadYaml(config_path, settings); !s.ok()) return s;
  }
  LoadEnvironment(settings);
  for (auto& [key, values] : flags) settings[key] = values;

  ServerOptions& o = command.options;
  for (const auto& [key, values] : settings) {
    const std::string& v = values.empty() ? std::string() : values.back();
    const std::string where = absl::StrCat("--", key);
    if (key == "listen") {
      o.listen = v;
    } else if (key == "data-dir") {
      o.data_dir = v;
    } else if (key == "data-root") {
      o.data_roots = values;
    } else if (key == "device") {
      o.devices.clear();
      for (const std::string& text : values) {
        absl::StatusOr<DeviceState> device = ParseDevice(text);
        if (!device.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", device.status().message()));
        o.devices.push_back(*device);
      }
    } else if (key == "worker") {
      o.worker_path = v;
    } else if (key == "grace-seconds" || key == "starvation-seconds" || key == "checkpoint-seconds") {
      absl::StatusOr<double> d = ParseDouble(where, v);
      if (!d.ok()) return d.status();
      if (key == "grace-seconds") o.grace_seconds = *d;
      if (key == "starvation-seconds") o.starvation_seconds = *d;
      if (key == "checkpoint-seconds") o.default_checkpoint_seconds = *d;
    } else if (key == "max-attempts" || key == "max-concurrent-plans" || key == "threads-per-job") {
      absl::StatusOr<int> n = ParseInt(where, v);
      if (!n.ok()) return n.status();
      if (key == "max-attempts") o.max_attempts = *n;
      if (key == "max-concurrent-plans") o.max_concurrent_plans = *n;
      if (key == "threads-per-job") o.threads_per_job = *n;
    } else if (key == "quota-queued-jobs" || key == "quota-watchers") {
      absl::StatusOr<int> n = ParseInt(where, v);
      if (!n.ok()) return n.status();
      if (*n < 0) return absl::InvalidArgumentError(absl::StrCat(where, " is ", *n, "; use 0 (no limit) or more"));
      if (key == "quota-queued-jobs") o.quota_queued_jobs = *n;
      if (key == "quota-watchers") o.quota_watchers = *n;
    } else if (key == "quota-budget-bytes" || key == "quota-artifact-bytes") {
      absl::StatusOr<int64_t> bytes = ParseBytes(v);
      if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", bytes.status().message()));
      if (key == "quota-budget-bytes") o.quota_budget_bytes = *bytes;
      if (key == "quota-artifact-bytes") o.quota_artifact_bytes = *bytes;
    } else if (key == "quota-submits-per-minute") {
      absl::StatusOr<double> rate = ParseDouble(where, v);
      if (!rate.ok()) return rate.status();
      if (*rate < 0) return absl::InvalidArgumentError(absl::StrCat(where, " is ", v, "; use 0 (no limit) or more"));
      o.quota_submits_per_minute = *rate;
    } else if (key == "max-upload-bytes") {
      absl::StatusOr<int64_t> bytes = ParseBytes(v);
      if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", bytes.status().message()));
      o.max_upload_bytes = *bytes;
    } else if (key == "metrics-port") {
      absl::StatusOr<int> n = ParseInt(where, v);
      if (!n.ok()) return n.status();
      if (*n < 0 || *n > 65535) return absl::InvalidArgumentError(absl::StrCat(where, " is ", *n, "; use a port, 0 to 65535 (0 picks a free one)"));
      o.metrics_port = *n;
    } else if (key == "metrics-job-grace-seconds") {
      absl::StatusOr<double> seconds = ParseDouble(where, v);
      if (!seconds.ok()) return seconds.status();
      if (*seconds < 0) return absl::InvalidArgumentError(absl::StrCat(where, " is ", v, "; use 0 or more seconds"));
      o.metrics_job_grace_seconds = *seconds;
    } else if (key == "watch-coalesce-events") {
      absl::StatusOr<int> n = ParseInt(where, v);
      if (!n.ok()) return n.status();
      if (*n < 1) return absl::InvalidArgumentError(absl::StrCat(where, " is ", *n, "; use 1 or more"));
      o.watch_coalesce_events = *n;
    } else if (key == "watch-coalesce-ms") {
      absl::StatusOr<double> ms = ParseDouble(where, v);
      if (!ms.ok()) return ms.status();
      if (*ms < 0) return absl::InvalidArgumentError(absl::StrCat(where, " is ", v, "; use 0 (off) or more"));
      o.watch_coalesce_ms = *ms;
    } else if (key == "watch-step-rate") {
      absl::StatusOr<double> rate = ParseDouble(where, v);
      if (!rate.ok()) return rate.status();
      if (*rate < 0) return absl::InvalidArgumentError(absl::StrCat(where, " is ", v, "; use 0 (no limit) or more"));
      o.watch_step_rate = *rate;
    } else if (key == "store-url") {
      o.store_url = v;
    } else if (key == "replica-id") {
      if (v.empty() || v.size() > 200) {
        return absl::InvalidArgumentError(absl::StrCat(where, " '", v, "' must be 1 to 200 characters"));
      }
      o.replica_id = v;
    } else if (key == "lease-seconds") {
      absl::StatusOr<double> seconds = ParseDouble(where, v);
      if (!seconds.ok()) return seconds.status();
      if (*seconds < 1) return absl::InvalidArgumentError(absl::StrCat(where, " is ", v, "; use 1 second or more"));
      o.lease_seconds = *seconds;
    } else if (key == "tokens") {
      o.tokens_file = v;
    } else if (key == "tls-cert") {
      o.tls_cert_file = v;
    } else if (key == "tls-key") {
      o.tls_key_file = v;
    } else if (key == "tls-client-ca") {
      o.tls_client_ca_file = v;
    } else if (key == "port-file") {
      o.port_file = v;
    } else if (key == "log-level") {
      absl::StatusOr<spdlog::level::level_enum> level = ParseLogLevel(v);
      if (!level.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", level.status().message()));
      command.log_level = v;
    } else if (key == "log-format") {
      absl::StatusOr<LogFormat> format = ParseLogFormat(v);
      if (!format.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", format.status().message()));
      command.log_format = *format;
    }
  }
  // A device given without a capacity gets the default (half the memory).
  for (DeviceState& device : o.devices) {
    if (device.capacity_bytes == 0) {
      const int64_t pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
      device.capacity_bytes = pages * page / 2;
    }
  }
  if (o.max_attempts < 1) return absl::InvalidArgumentError("--max-attempts must be 1 or more");
  if (o.max_concurrent_plans < 1) return absl::InvalidArgumentError("--max-concurrent-plans must be 1 or more");
  if (o.grace_seconds < 0) return absl::InvalidArgumentError("--grace-seconds must be 0 or more");
  return command;
}

}  // namespace xtrain::server
