// Validates rendered Kubernetes YAML (helmrender's output) object by object:
// - against Kubernetes' OpenAPI schemas (kubernetes-models) and prometheus-operator's CRD schemas
//   (@kubernetes-models/prometheus-operator); an apiVersion/kind neither knows is an error;
// - the chart's own promises: probe ports among the container's ports, terminationGracePeriodSeconds
//   above --grace-seconds, XTRAIN_ variables the server reads (server_config.cc), every Secret, PVC and
//   ConfigMap a pod mounts or reads rendered here or named with --external, the ServiceMonitor selecting
//   the Service's metrics port with scrape job "xtrain", and the PrometheusRule's groups equal to
//   deploy/prometheus/xtrain-alerts.yaml's and the dashboard ConfigMap's JSON to the dashboard file's.
//
// Usage: node validate.mjs --source-dir DIR [--external secret/NAME]... FILE.yaml
//        node validate.mjs --self-test --source-dir DIR FILE.yaml   (FILE: a valid render to break)
import fs from "node:fs";
import path from "node:path";
import util from "node:util";
import YAML from "yaml";
import * as core from "kubernetes-models/v1";
import * as apps from "kubernetes-models/apps/v1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

// The models of the kinds a chart may render; anything else is refused, not skipped.
const MODELS = {
  "v1/Service": core.Service, "v1/ConfigMap": core.ConfigMap, "v1/Secret": core.Secret,
  "v1/PersistentVolumeClaim": core.PersistentVolumeClaim, "v1/ServiceAccount": core.ServiceAccount,
  "apps/v1/Deployment": apps.Deployment, "apps/v1/StatefulSet": apps.StatefulSet,
  "monitoring.coreos.com/v1/ServiceMonitor": monitoring.ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": monitoring.PrometheusRule,
};

// XTRAIN_ names the server reads: one per kKeys flag (--foo-bar: XTRAIN_FOO_BAR; data-root and device
// are XTRAIN_DATA_ROOTS and XTRAIN_DEVICES), and XTRAIN_CONFIG.
function serverVariables(sourceDir) {
  const text = fs.readFileSync(path.join(sourceDir, "server/api/server_config.cc"), "utf8");
  const keys = text.match(/kKeys\[\]\s*=\s*\{([\s\S]*?)\};/);
  if (!keys) throw new Error("server_config.cc: kKeys not found");
  const names = new Set(["XTRAIN_CONFIG"]);
  for (const [, key] of keys[1].matchAll(/"([a-z-]+)"/g)) {
    const name = key === "data-root" ? "XTRAIN_DATA_ROOTS" : key === "device" ? "XTRAIN_DEVICES"
      : "XTRAIN_" + key.toUpperCase().replaceAll("-", "_");
    names.add(name);
  }
  return names;
}

function graceDefault(sourceDir) {
  const text = fs.readFileSync(path.join(sourceDir, "server/api/server_config.cc"), "utf8");
  return Number(text.match(/--grace-seconds S.*\(default (\d+)\)/)[1]);
}

export function validate(docs, { sourceDir, external = [] }) {
  const errors = [];
  const err = (obj, message) => errors.push(`${obj?.kind ?? "?"}/${obj?.metadata?.name ?? "?"}: ${message}`);
  const variables = serverVariables(sourceDir);
  const rendered = new Set(docs.map((d) => `${d?.kind}/${d?.metadata?.name}`.toLowerCase()));
  const provided = new Set(external.map((e) => e.toLowerCase()));
  const has = (kind, name) => rendered.has(`${kind}/${name}`.toLowerCase()) ||
    provided.has(`${kind}/${name}`.toLowerCase());

  for (const obj of docs) {
    if (!obj || typeof obj !== "object") { errors.push(`a document is not an object: ${obj}`); continue; }
    const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
    if (!Model) { err(obj, `unknown apiVersion/kind ${obj.apiVersion}/${obj.kind}`); continue; }
    if (!obj.metadata?.name) err(obj, "no metadata.name");
    if (obj.metadata?.namespace) err(obj, "sets metadata.namespace: the release's namespace decides");
    try {
      new Model(obj).validate();
    } catch (e) {
      err(obj, `schema: ${e.message}`);
    }
  }

  const services = docs.filter((d) => d?.kind === "Service");
  for (const work of docs.filter((d) => ["Deployment", "StatefulSet"].includes(d?.kind))) {
    const pod = work.spec?.template?.spec ?? {};
    const labels = work.spec?.template?.metadata?.labels ?? {};
    for (const [k, v] of Object.entries(work.spec?.selector?.matchLabels ?? {})) {
      if (labels[k] !== v) err(work, `selector ${k}=${v} does not match the pod template's labels`);
    }
    for (const c of pod.containers ?? []) {
      const ports = new Map((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      for (const need of ["grpc", "metrics"]) if (!ports.has(need)) err(work, `container ${c.name} has no port named ${need}`);
      for (const kind of ["livenessProbe", "readinessProbe", "startupProbe"]) {
        const probe = c[kind];
        if (!probe) { if (kind !== "startupProbe") err(work, `container ${c.name} has no ${kind}`); continue; }
        const port = probe.grpc?.port ?? probe.tcpSocket?.port ?? probe.httpGet?.port;
        const numbers = new Set(ports.values());
        if (typeof port === "string" ? !ports.has(port) : !numbers.has(port)) {
          err(work, `${kind} port ${port} is not among container ${c.name}'s ports`);
        } else if ((typeof port === "string" ? ports.get(port) : port) !== ports.get("grpc")) {
          err(work, `${kind} does not probe the grpc port`);
        }
      }
      const env = new Map((c.env ?? []).map((e) => [e.name, e]));
      for (const name of env.keys()) {
        if (name.startsWith("XTRAIN_") && !variables.has(name)) err(work, `env ${name} is not a variable the server reads`);
      }
      const grace = Number(env.get("XTRAIN_GRACE_SECONDS")?.value ?? graceDefault(sourceDir));
      if (!(pod.terminationGracePeriodSeconds > grace)) {
        err(work, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} is not above --grace-seconds ${grace}`);
      }
      const listen = env.get("XTRAIN_LISTEN")?.value ?? "";
      if (!listen.startsWith("0.0.0.0:") || Number(listen.split(":")[1]) !== ports.get("grpc")) {
        err(work, `XTRAIN_LISTEN ${listen} must serve the grpc port on every interface`);
      }
      if (Number(env.get("XTRAIN_METRICS_PORT")?.value) !== ports.get("metrics")) {
        err(work, "XTRAIN_METRICS_PORT is not the metrics port");
      }
      if (env.get("XTRAIN_REPLICA_ID")?.valueFrom?.fieldRef?.fieldPath !== "metadata.name") {
        err(work, "XTRAIN_REPLICA_ID must come from the pod's name (downward API)");
      }
      const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"] ?? 0);
      const cuda = (env.get("XTRAIN_DEVICES")?.value ?? "").split(",").filter((d) => d.startsWith("cuda:"));
      if (cuda.length !== gpus) err(work, `${cuda.length} cuda --device specs for ${gpus} nvidia.com/gpu`);
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
        const kind = e.valueFrom?.secretKeyRef ? "Secret" : "ConfigMap";
        if (ref && !has(kind, ref.name)) err(work, `env ${e.name} reads ${kind} ${ref.name}, neither rendered nor user-provided`);
      }
      const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
      for (const m of c.volumeMounts ?? []) if (!volumes.has(m.name)) err(work, `mount ${m.name} has no volume`);
    }
    const replicas = work.spec?.replicas ?? 1;
    for (const v of pod.volumes ?? []) {
      const ref = v.secret ? ["Secret", v.secret.secretName] : v.configMap ? ["ConfigMap", v.configMap.name]
        : v.persistentVolumeClaim ? ["PersistentVolumeClaim", v.persistentVolumeClaim.claimName] : null;
      if (ref && !has(...ref)) err(work, `volume ${v.name} uses ${ref[0]} ${ref[1]}, neither rendered nor user-provided`);
      const claim = v.persistentVolumeClaim &&
        docs.find((d) => d?.kind === "PersistentVolumeClaim" && d.metadata?.name === v.persistentVolumeClaim.claimName);
      if (claim && replicas > 1 && !(claim.spec?.accessModes ?? []).some((m) => m.endsWith("Many"))) {
        err(work, `${replicas} replicas share PVC ${claim.metadata.name}, which is not ReadWriteMany/ReadOnlyMany`);
      }
    }
    if (!services.some((s) => Object.entries(s.spec?.selector ?? {}).every(([k, v]) => labels[k] === v))) {
      err(work, "no Service selects its pods");
    }
  }

  for (const sm of docs.filter((d) => d?.kind === "ServiceMonitor")) {
    const service = services.find((s) => Object.entries(sm.spec?.selector?.matchLabels ?? {})
      .every(([k, v]) => s.metadata?.labels?.[k] === v));
    if (!service) { err(sm, "selects no rendered Service"); continue; }
    for (const ep of sm.spec?.endpoints ?? []) {
      if (!(service.spec?.ports ?? []).some((p) => p.name === ep.port)) err(sm, `endpoint port ${ep.port} is not a port of Service ${service.metadata.name}`);
    }
    const job = sm.spec?.jobLabel ? service.metadata?.labels?.[sm.spec.jobLabel] : service.metadata?.name;
    if (job !== "xtrain") err(sm, `scrape job would be "${job}", the alert rules expect job="xtrain"`);
  }

  const alerts = YAML.parse(fs.readFileSync(path.join(sourceDir, "deploy/prometheus/xtrain-alerts.yaml"), "utf8"));
  for (const rule of docs.filter((d) => d?.kind === "PrometheusRule")) {
    if (!util.isDeepStrictEqual(rule.spec?.groups, alerts.groups)) err(rule, "groups differ from deploy/prometheus/xtrain-alerts.yaml");
  }
  const dashboard = JSON.parse(fs.readFileSync(path.join(sourceDir, "deploy/grafana/xtrain-dashboard.json"), "utf8"));
  for (const cm of docs.filter((d) => d?.kind === "ConfigMap" && d.data?.["xtrain-dashboard.json"] !== undefined)) {
    let json;
    try { json = JSON.parse(cm.data["xtrain-dashboard.json"]); } catch (e) { err(cm, `dashboard is not JSON: ${e.message}`); continue; }
    if (!util.isDeepStrictEqual(json, dashboard)) err(cm, "dashboard differs from deploy/grafana/xtrain-dashboard.json");
  }
  return errors;
}

export function parseDocs(text) {
  return YAML.parseAllDocuments(text).map((d) => {
    if (d.errors.length) throw new Error(`YAML: ${d.errors[0].message}`);
    return d.toJS();
  }).filter((d) => d !== null);
}

// Breaks a valid render in known ways; the validator must reject each.
const BREAKAGES = [
  ["a wrong apiVersion", (docs) => { docs.find((d) => d.kind === "Deployment").apiVersion = "apps/v1beta9"; }],
  ["an unknown kind", (docs) => { docs.push({ apiVersion: "v1", kind: "Servise", metadata: { name: "x" } }); }],
  ["a port that is not a number", (docs) => { container(docs).ports[0].containerPort = "fifty"; }],
  ["an image that is not a string", (docs) => { container(docs).image = 42; }],
  ["a Deployment without a selector", (docs) => { delete docs.find((d) => d.kind === "Deployment").spec.selector; }],
  ["a gRPC probe on a port name", (docs) => { container(docs).livenessProbe = { grpc: { port: "grpc" } }; }],
  ["a probe on a port the container lacks", (docs) => { container(docs).readinessProbe = { tcpSocket: { port: "http" } }; }],
  ["a grace period under --grace-seconds", (docs) => { podSpec(docs).terminationGracePeriodSeconds = 10; }],
  ["an XTRAIN_ variable the server does not read", (docs) => { container(docs).env.push({ name: "XTRAIN_STOER_URL", value: "x" }); }],
  ["a Secret volume nobody provides", (docs) => { podSpec(docs).volumes.push({ name: "s", secret: { secretName: "nowhere" } }); }],
  ["a PVC that is not rendered", (docs) => { podSpec(docs).volumes.find((v) => v.persistentVolumeClaim).persistentVolumeClaim.claimName = "gone"; }],
  ["replicas on a ReadWriteOnce PVC", (docs) => { docs.find((d) => d.kind === "Deployment").spec.replicas = 3; }],
  ["GPUs without cuda devices", (docs) => { container(docs).resources.limits["nvidia.com/gpu"] = 4; }],
  ["a metrics port that is not the server's", (docs) => { container(docs).env.find((e) => e.name === "XTRAIN_METRICS_PORT").value = "9999"; }],
  ["a PrometheusRule without its rules' expr", (docs) => { docs.push({ apiVersion: "monitoring.coreos.com/v1", kind: "PrometheusRule", metadata: { name: "r" }, spec: { groups: [{ name: "g", rules: [{ alert: "A" }] }] } }); }],
  ["a PrometheusRule whose rules drifted", (docs) => {
    const alerts = YAML.parse(fs.readFileSync(path.join(selfTestDir, "deploy/prometheus/xtrain-alerts.yaml"), "utf8"));
    alerts.groups[0].rules[0].for = "2m";
    docs.push({ apiVersion: "monitoring.coreos.com/v1", kind: "PrometheusRule", metadata: { name: "r" }, spec: { groups: alerts.groups } });
  }],
  ["a ServiceMonitor of a wrong apiVersion", (docs) => { docs.push({ apiVersion: "monitoring.coreos.com/v2", kind: "ServiceMonitor", metadata: { name: "m" }, spec: { selector: {}, endpoints: [] } }); }],
  ["a ServiceMonitor without a selector", (docs) => { docs.push({ apiVersion: "monitoring.coreos.com/v1", kind: "ServiceMonitor", metadata: { name: "m" }, spec: { endpoints: [{ port: "metrics" }] } }); }],
  ["a ServiceMonitor whose job is not xtrain", (docs) => {
    const labels = docs.find((d) => d.kind === "Service").metadata.labels;
    docs.push({ apiVersion: "monitoring.coreos.com/v1", kind: "ServiceMonitor", metadata: { name: "m" },
      spec: { jobLabel: "helm.sh/chart", selector: { matchLabels: labels }, endpoints: [{ port: "metrics" }] } });
  }],
  ["a dashboard that drifted", (docs) => {
    docs.push({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "d" }, data: { "xtrain-dashboard.json": "{\"title\": \"other\"}" } });
  }],
  ["an object with a namespace", (docs) => { docs.find((d) => d.kind === "Service").metadata.namespace = "prod"; }],
];
let selfTestDir = "";
const podSpec = (docs) => docs.find((d) => d.kind === "Deployment").spec.template.spec;
const container = (docs) => podSpec(docs).containers[0];

function selfTest(text, options) {
  selfTestDir = options.sourceDir;
  const clean = validate(parseDocs(text), options);
  if (clean.length) { console.log("self-test: the unbroken render is rejected:\n  " + clean.join("\n  ")); return 1; }
  let missed = 0;
  for (const [what, breakIt] of BREAKAGES) {
    const docs = parseDocs(text);
    breakIt(docs);
    const found = validate(docs, options);
    console.log(`self-test: ${what}: ${found.length ? `rejected (${found[0].slice(0, 160)})` : "NOT rejected"}`);
    if (!found.length) missed++;
  }
  if (missed) { console.log(`self-test: ${missed} of ${BREAKAGES.length} broken renders passed`); return 1; }
  console.log(`self-test: all ${BREAKAGES.length} broken renders were rejected, the unbroken one passed`);
  return 0;
}

function main(argv) {
  const { values, positionals } = util.parseArgs({
    args: argv, allowPositionals: true,
    options: { "source-dir": { type: "string" }, external: { type: "string", multiple: true }, "self-test": { type: "boolean" } },
  });
  if (positionals.length !== 1 || !values["source-dir"]) {
    console.error("usage: node validate.mjs [--self-test] --source-dir DIR [--external kind/name]... FILE.yaml");
    return 2;
  }
  const options = { sourceDir: values["source-dir"], external: values.external ?? [] };
  const text = fs.readFileSync(positionals[0], "utf8");
  if (values["self-test"]) return selfTest(text, options);
  const docs = parseDocs(text);
  const errors = validate(docs, options);
  for (const e of errors) console.log(e);
  if (errors.length) { console.log(`${positionals[0]}: ${errors.length} problem(s) in ${docs.length} objects`); return 1; }
  console.log(`${positionals[0]}: ${docs.length} objects valid (${docs.map((d) => d.kind).join(", ")})`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
