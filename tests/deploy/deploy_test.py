#!/usr/bin/env python3
"""The Helm chart's tests (tests/deploy/CMakeLists.txt), run after setup.sh built the renderer.

Usage: deploy_test.py TEST BUILD_DIR, TEST one of
  renders-valid        the chart's main value sets render (helmrender) to objects validate.mjs accepts
  validator-rejects    validate.mjs --self-test: broken objects of a valid render are each rejected
  renderer-rejects     helmrender fails on an unknown function, a missing value key and YAML that does not parse
  refuses-bad-values   sqlite with 2 replicas (and other impossible value sets) fail with a message saying why
  plain-manifests      deploy/k8s/*.yaml equal a fresh render (--write: regenerate them)
  one-source           the chart's alert rules and dashboard are deploy/'s files, and render equal to them
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(SOURCE, "helm", "xtrain")
VALUES = os.path.join(HERE, "values")

# Value sets and the objects they leave to the user (Secrets and claims named in the values).
SCALE_OUT_EXTERNAL = ["secret/xtrain-postgresql", "secret/xtrain-tokens", "secret/xtrain-tls",
                      "secret/xtrain-client-ca", "persistentvolumeclaim/datasets"]
VALUE_SETS = {
    "default (sqlite, 1 replica)": ([], []),
    "postgresql, 3 replicas, GPUs, tokens, TLS, monitoring": ([os.path.join(VALUES, "postgresql-gpu-tls.yaml")],
                                                             SCALE_OUT_EXTERNAL),
}
# The plain manifests: file under deploy/k8s, values files, user-provided objects.
PLAIN = {
    "xtrain-sqlite.yaml": ([], []),
    "xtrain-postgresql.yaml": ([os.path.join(SOURCE, "deploy", "k8s", "postgresql-values.yaml")],
                               ["secret/xtrain-postgresql"]),
}


def Render(build, values, name="xtrain"):
    """(exit status, stdout, stderr) of helmrender on the chart."""
    args = [os.path.join(build, "helmrender"), "--name", name]
    for v in values:
        args += ["-f", v]
    done = subprocess.run(args + [CHART], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def Validate(rendered, external, self_test=False):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(rendered)
    try:
        args = ["node", os.path.join(HERE, "validate.mjs"), "--source-dir", SOURCE]
        args += ["--self-test"] if self_test else []
        for e in external:
            args += ["--external", e]
        return subprocess.run(args + [f.name]).returncode
    finally:
        os.unlink(f.name)


def RendersValid(build):
    failures = 0
    for what, (values, external) in VALUE_SETS.items():
        code, out, err = Render(build, values)
        if code != 0:
            print(f"{what}: rendering failed: {err}")
            failures += 1
            continue
        print(f"{what}:", flush=True)
        failures += Validate(out, external) != 0
    return 1 if failures else 0


def ValidatorRejects(build):
    code, out, err = Render(build, [])
    if code != 0:
        print(err)
        return 1
    return Validate(out, [], self_test=True)


def RendererRejects(build):
    """A tiny chart per case: the good one must render, each broken one must fail with its reason."""
    cases = {
        "good": ('{{ .Values.a | toYaml }}', None),
        "unknown function": ('{{ .Values.a | toYml }}', 'function "toYml" not defined'),
        "missing value key": ('{{ .Values.b }}', 'map has no entry for key "b"'),
        "env (Helm removes it)": ('{{ env "HOME" }}', 'function "env" not defined'),
        "YAML that does not parse": ('a: [1, 2\n', "does not parse"),
        "missing file": ('{{ .Files.Get "nowhere.txt" }}', "nowhere.txt"),
        "required value": ('{{ required "a value c is needed" .Values.c }}', "a value c is needed"),
    }
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, (template, expected) in cases.items():
            chart = os.path.join(tmp, what.replace(" ", "-"))
            os.makedirs(os.path.join(chart, "templates"))
            with open(os.path.join(chart, "Chart.yaml"), "w") as f:
                f.write("apiVersion: v2\nname: t\nversion: 0.0.1\n")
            with open(os.path.join(chart, "values.yaml"), "w") as f:
                f.write("a: {x: 1}\nc: null\n")
            with open(os.path.join(chart, "templates", "t.yaml"), "w") as f:
                f.write(template)
            done = subprocess.run([os.path.join(build, "helmrender"), chart], capture_output=True, text=True)
            if expected is None:
                ok = done.returncode == 0 and "x: 1" in done.stdout
            else:
                ok = done.returncode == 1 and expected in done.stderr
            print(f"renderer: {what}: {'as expected' if ok else 'WRONG'} (exit {done.returncode}"
                  f"{': ' + done.stderr.strip()[-140:] if done.stderr else ''})")
            failures += not ok
    return 1 if failures else 0


def RefusesBadValues(build):
    cases = {
        "sqlite with 2 replicas": (os.path.join(VALUES, "sqlite-2-replicas.yaml"), "replicas must be 1 (got 2)"),
        "postgresql without its Secret": ("replicas: 2\nstore: {kind: postgresql}\n", "store.postgresql.secretName"),
        "ReadWriteOnce checkpoints with 3 replicas": (
            "replicas: 3\nstore: {kind: postgresql, postgresql: {secretName: s}}\n"
            "persistence: {checkpoints: {accessMode: ReadWriteOnce}}\n", "cannot be shared by 3 replicas"),
        "an unknown store": ("store: {kind: mysql}\n", "store.kind must be sqlite or postgresql"),
        "cuda devices not one per GPU": ("gpu: {count: 2}\ndevices: [cuda:0:capacity=80GiB]\n",
                                         "names 1 cuda devices but gpu.count is 2"),
    }
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, (values, expected) in cases.items():
            if not os.path.exists(values):
                path = os.path.join(tmp, what.replace(" ", "-") + ".yaml")
                with open(path, "w") as f:
                    f.write(values)
                values = path
            code, _, err = Render(build, [values])
            ok = code == 1 and expected in err
            print(f"{what}: {'refused' if ok else 'NOT refused as expected'}: {err.strip().split('error calling fail: ')[-1][:200]}")
            failures += not ok
    code, _, err = Render(build, [])
    if code != 0:
        print(f"the default values are refused: {err}")
        failures += 1
    return 1 if failures else 0


def PlainText(build, name):
    values, _ = PLAIN[name]
    code, out, err = Render(build, values)
    if code != 0:
        raise SystemExit(f"{name}: rendering failed: {err}")
    used = " ".join(f"-f {os.path.relpath(v, SOURCE)}" for v in values) or "(default values)"
    header = (f"# Generated from helm/xtrain {used}, release name xtrain, by\n"
              f"# `tests/deploy/deploy_test.py plain-manifests BUILD_DIR --write`: edit the chart, not this file.\n"
              f"# Namespace-agnostic: kubectl apply -n NAMESPACE -f {name}\n")
    return header + out


def PlainManifests(build, write):
    failures = 0
    for name, (_, external) in PLAIN.items():
        path = os.path.join(SOURCE, "deploy", "k8s", name)
        fresh = PlainText(build, name)
        if write:
            with open(path, "w") as f:
                f.write(fresh)
            print(f"wrote {os.path.relpath(path, SOURCE)}")
            continue
        committed = open(path).read() if os.path.exists(path) else None
        if committed != fresh:
            print(f"deploy/k8s/{name} differs from a fresh render of the chart: run "
                  f"tests/deploy/deploy_test.py plain-manifests BUILD_DIR --write and commit it")
            failures += 1
        else:
            print(f"deploy/k8s/{name} equals a fresh render;", flush=True)
            failures += Validate(committed, external) != 0
    return 1 if failures else 0


def OneSource(build):
    failures = 0
    for chart_file, source in [("xtrain-alerts.yaml", "deploy/prometheus/xtrain-alerts.yaml"),
                               ("xtrain-dashboard.json", "deploy/grafana/xtrain-dashboard.json")]:
        link = os.path.join(CHART, "files", chart_file)
        target = os.path.join(SOURCE, source)
        same = os.path.realpath(link) == os.path.realpath(target)
        if not same and open(link, "rb").read() == open(target, "rb").read():
            same = True  # a checkout without symlinks (core.symlinks=false) holds a copy: identical
        print(f"helm/xtrain/files/{chart_file} {'is' if same else 'is NOT'} {source}")
        failures += not same
    # The rendered PrometheusRule's groups and dashboard ConfigMap's JSON equal the files (validate.mjs).
    values, external = VALUE_SETS["postgresql, 3 replicas, GPUs, tokens, TLS, monitoring"]
    code, out, err = Render(build, values)
    if code != 0 or "kind: PrometheusRule" not in out or "xtrain-dashboard.json: |" not in out:
        print(f"the monitoring value set does not render a PrometheusRule and a dashboard: {err}")
        return 1
    failures += Validate(out, external) != 0
    return 1 if failures else 0


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    test, build = argv[1], os.path.abspath(argv[2])
    if test == "renders-valid":
        return RendersValid(build)
    if test == "validator-rejects":
        return ValidatorRejects(build)
    if test == "renderer-rejects":
        return RendererRejects(build)
    if test == "refuses-bad-values":
        return RefusesBadValues(build)
    if test == "plain-manifests":
        return PlainManifests(build, "--write" in argv[3:])
    if test == "one-source":
        return OneSource(build)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
