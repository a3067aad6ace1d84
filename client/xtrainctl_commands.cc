#include "client/xtrainctl_commands.h"

#include <cstdlib>
#include <memory>
#include <optional>
#include <set>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/output.h"
#include "client/spec_file.h"

namespace xtrain::client {
namespace v1 = ::xtrain::v1;

namespace {

struct FlagInfo {
  const char* name;
  bool takes_value;
};

// Flags every subcommand takes.
const FlagInfo kGlobalFlags[] = {{"server", true},  {"token", true},        {"output", true},
                                 {"timeout", true}, {"reconnect-timeout", true}, {"help", false},
                                 {"tls-ca", true},  {"tls-cert", true},     {"tls-key", true}};
// The spec's common fields (plan, submit), applied in this order.
const FlagInfo kSpecFlags[] = {{"file", true},         {"name", true},      {"model", true},    {"dataset-kind", true},
                               {"dataset-path", true}, {"batch-size", true}, {"epochs", true},   {"max-steps", true},
                               {"budget", true},       {"probes", true},    {"priority", true}, {"label", true},
                               {"set", true}};

struct CommandInfo {
  const char* name;
  int min_positional;
  int max_positional;
  std::vector<FlagInfo> flags;  // besides the global ones
  bool spec_flags;
};

const std::vector<CommandInfo>& Commands() {
  static const std::vector<CommandInfo> commands = {
      {"plan", 0, 1, {}, true},
      {"submit", 0, 1, {{"watch", false}, {"client-request-id", true}}, true},
      {"get", 1, 1, {}, false},
      {"list", 0, 0, {{"state", true}, {"label", true}, {"page-size", true}, {"page-token", true}, {"all", false}}, false},
      {"cancel", 1, 1, {}, false},
      {"watch", 1, 1, {{"from", true}}, false},
      {"download", 0, 1, {{"job", true}, {"to", true}}, false},
      {"upload", 1, 1, {{"name", true}}, false},
      {"help", 0, 1, {}, false},
  };
  return commands;
}

const CommandInfo* FindCommand(const std::string& name) {
  for (const CommandInfo& command : Commands()) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

std::optional<FlagInfo> FindFlag(const CommandInfo& command, const std::string& name) {
  for (const FlagInfo& flag : kGlobalFlags) {
    if (name == flag.name) return flag;
  }
  for (const FlagInfo& flag : command.flags) {
    if (name == flag.name) return flag;
  }
  if (command.spec_flags) {
    for (const FlagInfo& flag : kSpecFlags) {
      if (name == flag.name) return flag;
    }
  }
  return std::nullopt;
}

absl::Status Usage(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(what, "; see xtrainctl help"));
}

absl::StatusOr<double> Seconds(const CommandLine& line, const std::string& flag) {
  double value = 0;
  if (!absl::SimpleAtod(line.Get(flag), &value) || !(value > 0)) {
    return Usage(absl::StrCat("--", flag, " '", line.Get(flag), "' is not a positive number of seconds"));
  }
  return value;
}

std::string NewRequestId() {
  absl::BitGen random;
  return absl::StrFormat("xtrainctl-%016x", absl::Uniform<uint64_t>(random));
}

// One run of a subcommand: the parsed line, the connection and where output goes.
class Session {
 public:
  Session(const CommandLine& line, std::ostream& out, std::ostream& err, Terminal terminal)
      : line_(line), out_(out), err_(err), terminal_(terminal), json_(line.Get("output", "text") == "json") {}

  int Run() {
    if (absl::Status s = Connect(); !s.ok()) {
      err_ << "xtrainctl: " << s.message() << "\n";
      return kExitUsage;
    }
    const std::string& command = line_.command;
    if (command == "plan") return Plan();
    if (command == "submit") return Submit();
    if (command == "get") return Get();
    if (command == "list") return List();
    if (command == "cancel") return Cancel();
    if (command == "watch") {
      int64_t from = 0;
      if (line_.Has("from") && (!absl::SimpleAtoi(line_.Get("from"), &from) || from < 0)) {
        return UsageFail(absl::StrCat("--from '", line_.Get("from"), "' is not a sequence number"));
      }
      return Watch(line_.positional[0], from);
    }
    if (command == "download") return Download();
    if (command == "upload") return Upload();
    return UsageFail(absl::StrCat("unknown command '", command, "'"));
  }

 private:
  absl::Status Connect() {
    ClientOptions options;
    options.token = line_.Get("token");
    options.tls_ca_file = line_.Get("tls-ca");
    options.tls_cert_file = line_.Get("tls-cert");
    options.tls_key_file = line_.Get("tls-key");
    if (line_.Has("timeout")) {
      absl::StatusOr<double> seconds = Seconds(line_, "timeout");
      if (!seconds.ok()) return seconds.status();
      options.timeout = options.plan_timeout = absl::Seconds(*seconds);
    }
    if (line_.Has("reconnect-timeout")) {
      absl::StatusOr<double> seconds = Seconds(line_, "reconnect-timeout");
      if (!seconds.ok()) return seconds.status();
      options.reconnect_timeout = absl::Seconds(*seconds);
    }
    server_ = line_.Get("server");
    if (server_.empty()) {
      const char* env = std::getenv("XTRAIN_SERVER");
      server_ = env != nullptr && *env != '\0' ? env : "localhost:50051";
    }
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(server_, options);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    return absl::OkStatus();
  }

  int Fail(const absl::Status& status) {
    err_ << "xtrainctl: ";
    if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) err_ << "server " << server_ << ": ";
    err_ << status.message() << "\n";
    return ExitCodeFor(status);
  }
  int UsageFail(absl::string_view what) {
    err_ << "xtrainctl: " << what << "; see xtrainctl help\n";
    return kExitUsage;
  }

  // The spec of plan and submit: the file's, then the flags over it.
  int Spec(v1::JobSpec& spec) {
    std::string file = line_.Get("file");
    if (!line_.positional.empty()) {
      if (!file.empty()) return UsageFail("give the spec file once (as an argument or with --file)");
      file = line_.positional[0];
    }
    if (!file.empty()) {
      absl::StatusOr<v1::JobSpec> loaded = LoadJobSpecFile(file);
      if (!loaded.ok()) return Fail(loaded.status());
      spec = *std::move(loaded);
    }
    if (absl::Status s = ApplySpecFlags(line_, spec); !s.ok()) {
      err_ << "xtrainctl: " << s.message() << "\n";
      return kExitUsage;
    }
    return kExitOk;
  }

  int Plan() {
    v1::JobSpec spec;
    if (int code = Spec(spec); code != kExitOk) return code;
    absl::StatusOr<v1::PlanJobResponse> response = client_->PlanJob(spec);
    if (!response.ok()) return Fail(response.status());
    out_ << (json_ ? ToJson(*response, true) + "\n" : FormatPlan(*response));
    return kExitOk;
  }

  int Submit() {
    v1::JobSpec spec;
    if (int code = Spec(spec); code != kExitOk) return code;
    const std::string request_id = line_.Has("client-request-id") ? line_.Get("client-request-id") : NewRequestId();
    absl::StatusOr<v1::SubmitJobResponse> response = client_->SubmitJob(spec, request_id);
    if (!response.ok()) return Fail(response.status());
    const v1::Job& job = response->job();
    if (json_) {
      out_ << ToJson(*response, !line_.Has("watch")) << "\n";
    } else {
      out_ << job.id() << (response->existing() ? " already submitted with request id " : " submitted as request id ")
           << request_id << " (" << StateName(job.state());
      if (job.state() == v1::QUEUED && job.queue_position() > 0) out_ << ", queue position " << job.queue_position();
      out_ << ")\n";
    }
    out_.flush();
    if (!line_.Has("watch")) return kExitOk;
    return Watch(job.id(), 0);
  }

  int Get() {
    absl::StatusOr<v1::Job> job = client_->GetJob(line_.positional[0]);
    if (!job.ok()) return Fail(job.status());
    out_ << (json_ ? ToJson(*job, true) + "\n" : FormatJob(*job));
    return kExitOk;
  }

  int List() {
    v1::ListJobsRequest request;
    for (const std::string& value : line_.flags.count("state") ? line_.flags.at("state") : std::vector<std::string>{}) {
      for (absl::string_view name : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        absl::StatusOr<int> state = ParseEnum(v1::JobState_descriptor(), name);
        if (!state.ok()) return UsageFail(absl::StrCat("--state ", state.status().message()));
        request.add_states(static_cast<v1::JobState>(*state));
      }
    }
    for (const std::string& value : line_.flags.count("label") ? line_.flags.at("label") : std::vector<std::string>{}) {
      std::pair<std::string, std::string> kv = absl::StrSplit(value, absl::MaxSplits('=', 1));
      if (kv.first.empty() || value.find('=') == std::string::npos) {
        return UsageFail(absl::StrCat("--label '", value, "' is not KEY=VALUE"));
      }
      (*request.mutable_labels())[kv.first] = kv.second;
    }
    if (line_.Has("page-size")) {
      int size = 0;
      if (!absl::SimpleAtoi(line_.Get("page-size"), &size) || size < 1) {
        return UsageFail(absl::StrCat("--page-size '", line_.Get("page-size"), "' is not a positive count"));
      }
      request.set_page_size(size);
    }
    request.set_page_token(line_.Get("page-token"));
    v1::ListJobsResponse all;
    while (true) {
      absl::StatusOr<v1::ListJobsResponse> page = client_->ListJobs(request);
      if (!page.ok()) return Fail(page.status());
      for (v1::Job& job : *page->mutable_jobs()) *all.add_jobs() = std::move(job);
      all.set_next_page_token(page->next_page_token());
      if (!line_.Has("all") || page->next_page_token().empty()) break;
      request.set_page_token(page->next_page_token());
    }
    if (json_) {
      out_ << ToJson(all, true) << "\n";
      return kExitOk;
    }
    out_ << FormatJobTable({all.jobs().begin(), all.jobs().end()});
    if (!all.next_page_token().empty()) {
      out_ << "(more: xtrainctl list --page-token " << all.next_page_token() << ", or --all)\n";
    }
    return kExitOk;
  }

  int Cancel() {
    absl::StatusOr<v1::Job> job = client_->CancelJob(line_.positional[0]);
    if (!job.ok()) return Fail(job.status());
    if (json_) {
      out_ << ToJson(*job, true) << "\n";
    } else if (job->state() == v1::CANCELLED) {
      out_ << job->id() << " CANCELLED\n";
    } else {
      out_ << job->id() << " cancel requested: it stops within one training step (" << StateName(job->state()) << ")\n";
    }
    return kExitOk;
  }

  int Watch(const std::string& job_id, int64_t from) {
    WatchProgress progress;
    bool bar_drawn = false;
    absl::Status status = client_->Watch(job_id, from, [&](const v1::WatchJobResponse& response) {
      progress.Update(response);
      if (json_) {
        out_ << ToJson(response, false) << "\n" << std::flush;
      } else if (!terminal_.is_tty) {
        out_ << FormatEvent(response) << "\n" << std::flush;
      } else {
        // Events other than steps scroll above the bar; the bar is redrawn in place.
        if (!response.event().has_step()) out_ << "\r\x1b[K" << FormatEvent(response) << "\n";
        out_ << "\r\x1b[K" << FormatProgressBar(progress, terminal_.width - 1) << std::flush;
        bar_drawn = true;
      }
      return true;
    });
    if (bar_drawn) out_ << "\n";
    if (!status.ok()) return Fail(status);
    absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
    if (!job.ok()) return Fail(job.status());
    if (!json_) out_ << FormatOutcome(*job);
    switch (job->state()) {
      case v1::SUCCEEDED:
        return kExitOk;
      case v1::FAILED:
      case v1::CANCELLED:
        return kExitJobFailed;
      default:
        err_ << "xtrainctl: the watch ended while " << job_id << " is " << StateName(job->state()) << "\n";
        return kExitOther;
    }
  }

  int Download() {
    std::string artifact = line_.positional.empty() ? "" : line_.positional[0];
    if (artifact.empty() == line_.Get("job").empty()) {
      return UsageFail("download takes an artifact id or --job JOB_ID (its trained weights), one of them");
    }
    if (artifact.empty()) {
      absl::StatusOr<v1::Job> job = client_->GetJob(line_.Get("job"));
      if (!job.ok()) return Fail(job.status());
      if (job->weights_artifact_id().empty()) {
        return Fail(absl::NotFoundError(absl::StrCat("job ", job->id(), " has no trained weights (it is ",
                                                     StateName(job->state()), ")")));
      }
      artifact = job->weights_artifact_id();
    }
    const std::string path = line_.Get("to", absl::StrCat(artifact, ".pt"));
    absl::StatusOr<v1::ArtifactInfo> info = client_->Download(artifact, path);
    if (!info.ok()) return Fail(info.status());
    if (json_) {
      out_ << ToJson(*info, true) << "\n";
    } else {
      out_ << "downloaded " << info->id() << " (" << info->name() << ", " << HumanBytes(info->size_bytes())
           << ", sha256 " << info->sha256() << ") to " << path << "\n";
    }
    return kExitOk;
  }

  int Upload() {
    absl::StatusOr<v1::ArtifactInfo> info = client_->Upload(line_.positional[0], line_.Get("name"));
    if (!info.ok()) return Fail(info.status());
    if (json_) {
      out_ << ToJson(*info, true) << "\n";
    } else {
      out_ << "uploaded " << line_.positional[0] << " as " << info->id() << " (" << HumanBytes(info->size_bytes())
           << ", sha256 " << info->sha256() << ")\n"
           << "finetune from it with --set model.init_artifact_id=" << info->id() << "\n";
    }
    return kExitOk;
  }

  const CommandLine& line_;
  std::ostream& out_;
  std::ostream& err_;
  const Terminal terminal_;
  const bool json_;
  std::string server_;
  std::unique_ptr<Client> client_;
};

}  // namespace

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return kExitInvalidArgument;
    case absl::StatusCode::kResourceExhausted:
      return kExitResourceExhausted;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitOther;
  }
}

std::string CommandLine::Get(const std::string& name, const std::string& fallback) const {
  auto it = flags.find(name);
  if (it == flags.end() || it->second.empty()) return fallback;
  return it->second.back();
}

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine line;
  // Global flags may come before the command (xtrainctl --server HOST:PORT get JOB): they go after it.
  std::vector<std::string> leading;
  size_t i = 0;
  while (i < args.size() && absl::StartsWith(args[i], "-") && args[i] != "--help" && args[i] != "-h") {
    const size_t start = args[i].find_first_not_of('-');
    if (start == std::string::npos) return Usage(absl::StrCat("'", args[i], "' is not a flag"));
    std::string name = args[i] == "-o" ? "output" : args[i].substr(start);
    const bool inline_value = name.find('=') != std::string::npos;
    name = name.substr(0, name.find('='));
    const FlagInfo* flag = nullptr;
    for (const FlagInfo& global : kGlobalFlags) {
      if (name == global.name) flag = &global;
    }
    if (flag == nullptr) return Usage(absl::StrCat("'", args[i], "' before the command is not a flag of every command"));
    leading.push_back(args[i++]);
    if (flag->takes_value && !inline_value) {
      if (i >= args.size()) return Usage(absl::StrCat("--", name, " needs a value"));
      leading.push_back(args[i++]);
    }
  }
  if (i >= args.size()) return Usage("no command given");
  if (args[i] == "--help" || args[i] == "-h") {
    line.command = "help";
    return line;
  }
  line.command = args[i++];
  const CommandInfo* command = FindCommand(line.command);
  if (command == nullptr) return Usage(absl::StrCat("unknown command '", line.command, "'"));
  std::vector<std::string> rest(args.begin() + static_cast<long>(i), args.end());
  rest.insert(rest.begin(), leading.begin(), leading.end());
  for (i = 0; i < rest.size(); ++i) {
    std::string arg = rest[i];
    if (arg == "-o") arg = "--output";
    if (arg == "-f") arg = "--file";
    if (arg == "-h") arg = "--help";
    if (arg == "--") {
      line.positional.insert(line.positional.end(), rest.begin() + static_cast<long>(i) + 1, rest.end());
      break;
    }
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      line.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const std::optional<FlagInfo> flag = FindFlag(*command, name);
    if (!flag) return Usage(absl::StrCat(line.command, " has no flag --", name));
    if (!flag->takes_value) {
      if (value) return Usage(absl::StrCat("--", name, " takes no value"));
      line.flags[name].push_back("");
      continue;
    }
    if (!value) {
      if (i + 1 >= rest.size()) return Usage(absl::StrCat("--", name, " needs a value"));
      value = rest[++i];
    }
    line.flags[name].push_back(*value);
  }
  if (line.Has("help")) {
    line.command = "help";
    line.positional.clear();
    return line;
  }
  const int count = static_cast<int>(line.positional.size());
  if (count < command->min_positional || count > command->max_positional) {
    if (command->max_positional == 0) {
      return Usage(absl::StrCat(line.command, " takes no arguments but was given '", line.positional[0], "'"));
    }
    return Usage(absl::StrCat(line.command, " takes ",
                              command->min_positional == command->max_positional
                                  ? absl::StrCat(command->min_positional)
                                  : absl::StrCat(command->min_positional, " or ", command->max_positional),
                              " argument(s), not ", count));
  }
  const std::string output = line.Get("output", "text");
  if (output != "text" && output != "json") return Usage(absl::StrCat("--output '", output, "' is not text or json"));
  return line;
}

absl::Status ApplySpecFlags(const CommandLine& line, v1::JobSpec& spec) {
  // Flags that name one field, and that field's path.
  const std::pair<const char*, const char*> fields[] = {
      {"name", "display_name"},         {"model", "model.name"},         {"dataset-kind", "dataset.kind"},
      {"dataset-path", "dataset.path"}, {"batch-size", "training.batch_size"}, {"epochs", "training.epochs"},
      {"max-steps", "training.max_steps"}};
  for (const auto& [flag, path] : fields) {
    if (!line.Has(flag)) continue;
    if (absl::Status s = SetSpecField(path, line.Get(flag), spec); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", s.message()));
    }
  }
  if (line.Has("budget")) {
    if (absl::Status s = SetBudget(line.Get("budget"), spec); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--budget: ", s.message()));
    }
  }
  if (line.Has("probes")) {
    if (absl::Status s = SetProbes(line.Get("probes"), spec); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--probes: ", s.message()));
    }
  }
  if (line.Has("priority")) {
    if (absl::Status s = SetSpecField("priority", line.Get("priority"), spec); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--priority: ", s.message()));
    }
  }
  if (line.Has("label")) {
    for (const std::string& value : line.flags.at("label")) {
      std::pair<std::string, std::string> kv = absl::StrSplit(value, absl::MaxSplits('=', 1));
      if (kv.first.empty() || value.find('=') == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("--label '", value, "' is not KEY=VALUE"));
      }
      (*spec.mutable_labels())[kv.first] = kv.second;
    }
  }
  if (line.Has("set")) {
    for (const std::string& value : line.flags.at("set")) {
      const size_t eq = value.find('=');
      if (eq == std::string::npos || eq == 0) {
        return absl::InvalidArgumentError(absl::StrCat("--set '", value, "' is not FIELD=VALUE (such as training.lr=0.1)"));
      }
      if (absl::Status s = SetSpecField(value.substr(0, eq), value.substr(eq + 1), spec); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--set: ", s.message()));
      }
    }
  }
  return absl::OkStatus();
}

int RunXtrainctl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, Terminal terminal) {
  absl::StatusOr<CommandLine> line = ParseCommandLine(args);
  if (!line.ok()) {
    err << "xtrainctl: " << line.status().message() << "\n";
    if (args.empty()) err << "\n" << XtrainctlUsage();
    return kExitUsage;
  }
  if (line->command == "help") {
    out << XtrainctlUsage();
    return kExitOk;
  }
  return Session(*line, out, err, terminal).Run();
}

std::string XtrainctlUsage() {
  return R"(xtrainctl: submit and follow training jobs on an xtrain-server.

Usage: xtrainctl COMMAND [ARGS] [FLAGS]

Commands:
  plan [SPEC]              a dry run: the plan the job would get, its peaks, the devices it fits
  submit [SPEC] [--watch]  queue a job (then follow it with --watch)
  get JOB                  one job: state, progress, memory, plan, metrics
  list                     jobs, newest first (--state S, --label K=V, --page-size N, --page-token T, --all)
  cancel JOB               stop a job: a queued one at once, a running one within a step
  watch JOB [--from N]     follow a job's events to its end (a progress bar on a terminal, else a
                           line per event); reconnects on its own; prints the outcome
  download ARTIFACT|--job JOB [--to PATH]
                           an artifact (a job's trained weights with --job); resumes a partial download
                           (PATH.part) and checks its SHA-256; PATH defaults to ARTIFACT.pt
  upload FILE [--name N]   store initial weights for finetuning (model.init_artifact_id)
  help                     this text

SPEC is a job spec file: YAML, or JSON in the proto's JSON mapping (*.json), with the fields of
xtrain.v1.JobSpec (examples/jobs/*.yaml). Flags set the common fields over the file's:
  -f, --file SPEC          the spec file (or give it as the argument)
  --name NAME              display_name
  --model NAME             model.name (small_cnn, resnet18, squeezenet1_1, unet, ..., or torchscript)
  --dataset-kind KIND      dataset.kind: mnist, cifar10, image_folder, npy, synthetic
  --dataset-path PATH      dataset.path, under one of the server's data roots
  --batch-size N           training.batch_size
  --epochs N               training.epochs
  --max-steps N            training.max_steps
  --budget SIZE            memory.budget_bytes with units (64MiB, 1.5GB, 1000000) or a share (50%)
  --probes auto|exact|N    memory.probes (N: fixed probes per XConv layer)
  --priority N             -100..100, higher first
  --label KEY=VALUE        labels (repeatable)
  --set FIELD=VALUE        any field by its path: --set model.width=8 --set training.lr=0.1 (repeatable)
  --client-request-id ID   submit: makes retries idempotent (default: a fresh random id per command)

Every command:
  --server HOST:PORT       the server (default: XTRAIN_SERVER, else localhost:50051)
  --token TOKEN            sent as a bearer token (default: XTRAIN_TOKEN)
  --tls-ca FILE            speak TLS, trusting this CA's certificates (PEM; default: XTRAIN_TLS_CA)
  --tls-cert, --tls-key F  a client certificate and its key (PEM) for a server that requires one
                           (default: XTRAIN_TLS_CERT, XTRAIN_TLS_KEY)
  -o, --output text|json   human text (default) or the proto's JSON mapping (watch: one object per event)
  --timeout SECONDS        deadline of each call (default 60; plan and submit 600)
  --reconnect-timeout S    watch and download give up after S seconds without the server (default 120)

Exit codes:
  0  ok
  1  the job failed or was cancelled (watch, submit --watch)
  2  usage error
  3  not found (job, artifact, file)
  4  invalid argument (the server or the spec file refused a value)
  5  resource exhausted (no plan fits the budget; the message says the smallest budget that does)
  6  server unavailable (or no answer in time)
  7  other errors
)";
}

}  // namespace xtrain::client
