#!/usr/bin/env python3
"""Checks that the Dockerfile builds the way CI builds and serves what the server serves.

- The build stage runs the Makefile's `deps` recipe (scripts/install-deps.sh) and a Makefile target that,
  like `build` (which CI's `make test` runs), goes through `configure`, and builds with `cmake --build
  $(BUILD_DIR) ... --target` executables that CMake defines (add_executable).
- The runtime stage copies exactly those executables, from where CMake puts them (build/<source folder>/).
- EXPOSE names the ports of the server's defaults (server/api/server_config.cc: --listen, --metrics-port);
  XTRAIN_LISTEN and the HEALTHCHECK use the same gRPC port; every XTRAIN_ variable is one the server reads.
- The final stage runs as a non-root USER, has a HEALTHCHECK through scripts/grpc_health_check.py (copied
  into the image) and starts xtrain-server.
Each problem is printed and the script exits 1.

Usage: check_dockerfile.py SOURCE_DIR              checks SOURCE_DIR/Dockerfile
       check_dockerfile.py --self-test SOURCE_DIR  checks mutated copies: each must fail
"""

import os
import re
import shlex
import shutil
import sys
import tempfile

BUILD_DIR = "build"  # the Makefile's default BUILD_DIR, which the Dockerfile's `make` uses


def ReadText(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def DockerInstructions(text):
    """[(stage index, INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    out, stage = [], -1
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    return out


def MakeRules(makefile):
    """{target: (prerequisites, [recipe lines])} of the Makefile's explicit rules."""
    rules, target = {}, None
    for line in makefile.splitlines():
        if line.startswith("\t") and target:
            rules[target][1].append(line.strip())
            continue
        target = None
        match = re.match(r"^([A-Za-z0-9_.$()/-][^:=]*?)\s*:(?!=)\s*(.*)$", line)
        if match and not line.startswith((".PHONY", "export")):
            for name in match.group(1).split():
                rules[name] = (match.group(2).split(), [])
                target = name
    return rules


def Reaches(rules, start, goal, seen=None):
    """Whether make's target `start` depends on `goal`, directly or through other targets."""
    seen = seen or set()
    if start == goal:
        return True
    seen.add(start)
    return any(Reaches(rules, p, goal, seen) for p in rules.get(start, ([], []))[0] if p not in seen)


def Executables(root):
    """{executable name: source folder relative to root} from every CMakeLists.txt's add_executable."""
    found = {}
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith((".", "build")) and f != "node_modules")
        if "CMakeLists.txt" in files:
            text = ReadText(os.path.join(directory, "CMakeLists.txt"))
            for name in re.findall(r"add_executable\(\s*([A-Za-z0-9_.-]+)", text):
                found[name] = os.path.relpath(directory, root)
    return found


def ServerDefaults(config_text):
    """The gRPC port of --listen's default, the default --metrics-port, and the XTRAIN_ names read."""
    listen = re.search(r"--listen HOST:PORT.*default [^:)]+:(\d+)", config_text)
    metrics = re.search(r"--metrics-port N.*\(default (\d+)", config_text)
    keys = re.search(r"kKeys\[\]\s*=\s*\{(.*?)\};", config_text, re.S)
    names = {"XTRAIN_CONFIG", "XTRAIN_DATA_ROOTS", "XTRAIN_DEVICES"}
    if keys:
        for key in re.findall(r'"([a-z-]+)"', keys.group(1)):
            names.add("XTRAIN_" + key.upper().replace("-", "_"))
    return (listen and int(listen.group(1)), metrics and int(metrics.group(1)), names)


def Problems(root):
    problems = []
    docker = DockerInstructions(ReadText(os.path.join(root, "Dockerfile")))
    rules = MakeRules(ReadText(os.path.join(root, "Makefile")))
    ci = ReadText(os.path.join(root, ".ci", "run"))
    executables = Executables(root)
    grpc_port, metrics_port, env_names = ServerDefaults(
        ReadText(os.path.join(root, "server", "api", "server_config.cc")))
    if grpc_port is None or metrics_port is None:
        problems.append("server_config.cc: the usage text no longer names --listen's or --metrics-port's default")
        return problems
    final = max(stage for stage, _, _ in docker)
    runs = [args for _, word, args in docker if word == "RUN"]

    # CI: make test -> build -> configure -> deps (install-deps.sh).
    if not re.search(r"^\s*make test\b", ci, re.M):
        problems.append(".ci/run no longer runs `make test`: update check_dockerfile.py to what CI runs")
    if not Reaches(rules, "test", "build") or not Reaches(rules, "build", "configure"):
        problems.append("Makefile: `test` no longer reaches `build` and `configure`")
    deps = rules.get("deps", ([], []))[1]
    if not deps or not Reaches(rules, "configure", "deps"):
        problems.append("Makefile: no `deps` recipe that `configure` runs")
    elif not any(args.strip() == deps[0] for args in runs):
        problems.append(f"Dockerfile: no RUN line is the Makefile's deps recipe `{deps[0]}` (what CI installs with)")

    # The make target the image builds with.
    make_runs = [shlex.split(args) for args in runs if re.match(r"make\b", args)]
    built = set()
    if len(make_runs) != 1:
        problems.append(f"Dockerfile: expected one RUN make line, found {len(make_runs)}")
    else:
        words = make_runs[0]
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if any("=" in w for w in words[1:]):
            problems.append("Dockerfile: `make` with variable overrides (BUILD_DIR=...) builds differently from CI")
        for target in targets:
            if target not in rules:
                problems.append(f"Dockerfile: make target `{target}` is not in the Makefile")
                continue
            if not Reaches(rules, target, "configure"):
                problems.append(f"Makefile: `{target}` does not go through `configure` as `build` does")
            for recipe in rules[target][1]:
                match = re.match(r"cmake --build \$\(BUILD_DIR\)\s.*--target\s+(.+)$", recipe)
                if match:
                    built.update(match.group(1).split())
            if not built:
                problems.append(f"Makefile: `{target}` has no `cmake --build $(BUILD_DIR) ... --target ...` recipe")
        for name in sorted(built):
            if name not in executables:
                problems.append(f"Makefile: `{name}` is not an add_executable of any CMakeLists.txt")

    # What the runtime stage copies from the build stage.
    copied = {}
    for stage, word, args in docker:
        if word != "COPY" or "--from=build" not in args:
            continue
        paths = [w for w in shlex.split(args) if not w.startswith("--")]
        for source in paths[:-1]:
            relative = source.split("/src/", 1)[1] if source.startswith("/src/") else None
            if relative and relative.startswith(BUILD_DIR + "/"):
                copied[os.path.basename(relative)] = relative
    for name, relative in sorted(copied.items()):
        if name not in built:
            problems.append(f"Dockerfile: copies {relative}, which the make target does not build")
        elif name in executables and relative != os.path.normpath(f"{BUILD_DIR}/{executables[name]}/{name}"):
            problems.append(f"Dockerfile: copies {relative}, but CMake puts {name} in "
                            f"{BUILD_DIR}/{executables[name]}/")
    for name in sorted(built - set(copied)):
        problems.append(f"Dockerfile: builds {name} but does not copy it into the runtime stage")

    # The final stage: ports, user, health check, entry point, variables.
    last = [(word, args) for stage, word, args in docker if stage == final]
    exposed = {int(p.split("/")[0]) for word, args in last if word == "EXPOSE" for p in args.split()}
    if exposed != {grpc_port, metrics_port}:
        problems.append(f"Dockerfile: EXPOSE {sorted(exposed)}, the server's defaults are gRPC {grpc_port} "
                        f"and metrics {metrics_port}")
    users = [args for word, args in last if word == "USER"]
    if not users:
        problems.append("Dockerfile: the runtime stage has no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0") or (user.isdigit() and int(user) == 0) or not user.isdigit():
            problems.append(f"Dockerfile: USER {users[-1]}: give a fixed non-root uid (volumes are prepared for it)")
    env = {}
    for word, args in last:
        if word == "ENV":
            for item in shlex.split(args):
                if "=" in item:
                    key, value = item.split("=", 1)
                    env[key] = value
    for key in sorted(env):
        if key.startswith("XTRAIN_") and key not in env_names:
            problems.append(f"Dockerfile: ENV {key} is not a variable the server reads (server_config.cc)")
    if not env.get("XTRAIN_LISTEN", "").endswith(f":{grpc_port}"):
        problems.append(f"Dockerfile: XTRAIN_LISTEN must serve on port {grpc_port} on every interface")
    checks = [args for word, args in last if word == "HEALTHCHECK"]
    if not checks or "grpc_health_check.py" not in checks[-1] or f":{grpc_port}" not in checks[-1]:
        problems.append(f"Dockerfile: no HEALTHCHECK asking grpc.health.v1 (grpc_health_check.py) on port {grpc_port}")
    elif not any(word == "COPY" and "scripts/grpc_health_check.py" in args for word, args in last):
        problems.append("Dockerfile: the HEALTHCHECK's scripts/grpc_health_check.py is not copied into the image")
    if not os.path.exists(os.path.join(root, "scripts", "grpc_health_check.py")):
        problems.append("scripts/grpc_health_check.py is missing")
    entry = [args for word, args in last if word == "ENTRYPOINT"]
    if not entry or "xtrain-server" not in entry[-1]:
        problems.append("Dockerfile: the runtime stage's ENTRYPOINT is not xtrain-server")
    return problems


# Each mutation: (what it does, file, old text, new text); the checker must report at least one problem.
MUTATIONS = [
    ("renamed make target in the Dockerfile", "Dockerfile", "RUN make build-service-bins", "RUN make build-service-binz"),
    ("make target removed from the Makefile", "Makefile", "build-service-bins: configure", "build-service-binz: configure"),
    ("make target skips configure", "Makefile", "build-service-bins: configure", "build-service-bins:"),
    ("root user", "Dockerfile", "USER 10001:10001", "USER root"),
    ("uid 0", "Dockerfile", "USER 10001:10001", "USER 0"),
    ("no USER", "Dockerfile", "USER 10001:10001", ""),
    ("install-deps.sh not run", "Dockerfile", "RUN bash scripts/install-deps.sh", "RUN apt-get install -y cmake"),
    ("make with a different build dir", "Dockerfile", "RUN make build-service-bins", "RUN make build-service-bins BUILD_DIR=out"),
    ("wrong gRPC port exposed", "Dockerfile", "EXPOSE 50051 9464", "EXPOSE 50052 9464"),
    ("metrics port not exposed", "Dockerfile", "EXPOSE 50051 9464", "EXPOSE 50051"),
    ("server's default port changed", os.path.join("server", "api", "server_config.cc"),
     "default 127.0.0.1:50051", "default 127.0.0.1:50061"),
    ("binary the target does not build", "Dockerfile", "/src/build/client/xtrainctl ", "/src/build/bench/xtrain-bench "),
    ("binary built but not copied", "Makefile", "--target xtrain-server xtrain-worker xtrainctl",
     "--target xtrain-server xtrain-worker xtrainctl xtrain-service-bench"),
    ("binary copied from the wrong folder", "Dockerfile", "/src/build/server/worker/xtrain-worker", "/src/build/server/xtrain-worker"),
    ("target that is no executable", "Makefile", "--target xtrain-server xtrain-worker xtrainctl",
     "--target xtrain-server xtrain-worker xtrainctl xtrain-nothing"),
    ("no health check", "Dockerfile", "HEALTHCHECK ", "# HEALTHCHECK "),
    ("unknown XTRAIN_ variable", "Dockerfile", "XTRAIN_DATA_DIR=", "XTRAIN_DATADIR="),
    ("listen on another port", "Dockerfile", "XTRAIN_LISTEN=0.0.0.0:50051", "XTRAIN_LISTEN=0.0.0.0:50052"),
    ("another entry point", "Dockerfile", 'ENTRYPOINT ["/usr/local/bin/xtrain-server"]', 'ENTRYPOINT ["/bin/sh"]'),
]


def CopyInputs(root, into):
    """The files the checker reads: Dockerfile, Makefile, .ci/run, server_config.cc, scripts/, CMakeLists.txt."""
    for relative in ["Dockerfile", "Makefile", os.path.join(".ci", "run"),
                     os.path.join("server", "api", "server_config.cc"),
                     os.path.join("scripts", "grpc_health_check.py"), os.path.join("scripts", "install-deps.sh")]:
        os.makedirs(os.path.join(into, os.path.dirname(relative)), exist_ok=True)
        shutil.copy(os.path.join(root, relative), os.path.join(into, relative))
    for directory, folders, files in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith((".", "build")) and f != "node_modules"]
        if "CMakeLists.txt" in files:
            target = os.path.join(into, os.path.relpath(directory, root))
            os.makedirs(target, exist_ok=True)
            shutil.copy(os.path.join(directory, "CMakeLists.txt"), target)


def SelfTest(root):
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, "clean")
        CopyInputs(root, clean)
        if Problems(clean):
            print("self-test: the checker fails on the unmutated copy:", *Problems(clean), sep="\n  ")
            return 1
        for number, (what, relative, old, new) in enumerate(MUTATIONS):
            copy = os.path.join(tmp, f"m{number}")
            shutil.copytree(clean, copy)
            path = os.path.join(copy, relative)
            text = ReadText(path)
            if old not in text:
                print(f"self-test: mutation '{what}': `{old}` is not in {relative}; update MUTATIONS")
                failures += 1
                continue
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(old, new))
            found = Problems(copy)
            if found:
                print(f"self-test: {what}: caught ({found[0]})")
            else:
                print(f"self-test: {what}: NOT caught")
                failures += 1
    if failures:
        print(f"self-test: {failures} of {len(MUTATIONS)} mutations not caught")
        return 1
    print(f"self-test: all {len(MUTATIONS)} mutated Dockerfiles/Makefiles were rejected, the clean copy passed")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--self-test":
        return SelfTest(argv[2])
    if len(argv) != 2:
        print(__doc__)
        return 2
    problems = Problems(argv[1])
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s): the Dockerfile has drifted from CI's build or the server's defaults")
        return 1
    print("the Dockerfile builds with CI's commands, copies what its make target builds, serves the server's "
          "ports as a non-root user with a gRPC health check")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
