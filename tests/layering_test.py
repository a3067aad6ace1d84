#!/usr/bin/env python3
"""Checks that core's includes point down its layering (core/CMakeLists.txt):

    util < xconv < memory < {models, data} < train

A file in core/<folder>/ may include headers of its own folder and of folders below it. models and
data sit side by side and include neither each other nor anything above them. Core includes no
service header (server/, client/, proto/ and the generated xtrain/). Each violation is printed as
file:line and the script exits 1.

Usage: layering_test.py SOURCE_DIR        checks SOURCE_DIR/core
       layering_test.py --self-test       checks a made-up tree whose violations are known
"""

import os
import re
import sys
import tempfile

# Rank of each folder: a folder may include folders of lower rank (and itself).
RANKS = {"util": 0, "xconv": 1, "memory": 2, "models": 3, "data": 3, "train": 4}
ORDER = "util < xconv < memory < {models, data} < train"
SERVICE_PREFIXES = ("server/", "client/", "proto/", "xtrain/")
SOURCE_SUFFIXES = (".h", ".hpp", ".cc", ".cpp")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def Violations(root):
    """Returns "path:line: message" for every include under root/core that does not point down."""
    core = os.path.join(root, "core")
    found = []
    for directory, folders, files in os.walk(core):
        folders.sort()
        for name in sorted(files):
            if not name.endswith(SOURCE_SUFFIXES):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            parts = relative.split(os.sep)
            folder = parts[1] if len(parts) > 2 else None
            if folder not in RANKS:
                found.append(f"{relative}:1: core/{folder or ''} is not in the layering ({ORDER}); "
                             "give the folder its place in tests/layering_test.py and its library in "
                             "core/CMakeLists.txt")
                continue
            with open(path, encoding="utf-8", errors="replace") as source:
                for number, line in enumerate(source, start=1):
                    match = INCLUDE.match(line)
                    if not match:
                        continue
                    target = match.group(1)
                    if target.startswith(SERVICE_PREFIXES):
                        found.append(f"{relative}:{number}: core/{folder} includes {target}, a service "
                                     "header (core links no gRPC)")
                        continue
                    if not target.startswith("core/"):
                        continue
                    included = target.split("/")[1] if target.count("/") >= 2 else None
                    if included == folder:
                        continue
                    if included not in RANKS:
                        found.append(f"{relative}:{number}: core/{folder} includes {target}, outside the "
                                     f"layering ({ORDER})")
                    elif RANKS[included] >= RANKS[folder]:
                        where = "beside" if RANKS[included] == RANKS[folder] else "above"
                        found.append(f"{relative}:{number}: core/{folder} includes {target}, a folder "
                                     f"{where} it ({ORDER})")
    return found


def SelfTest():
    """The checker on a tree with known violations: it must report exactly those."""
    files = {
        "core/util/a.h": '#include "core/util/b.h"\n#include <torch/torch.h>\n',
        "core/xconv/ok.cc": '#include "core/xconv/ok.h"\n#include "core/util/a.h"\n',
        "core/xconv/up.cc": '#include "core/xconv/up.h"\n\n#include "core/memory/memory_model.h"\n',
        "core/data/side.cc": '// #include "core/train/trainer.h" in a comment is not an include\n'
                             '#include "core/models/network.h"\n',
        "core/memory/svc.cc": '#include "core/xconv/ok.h"\n#include "server/common/util.h"\n',
        "core/train/all.cc": "".join(f'#include "core/{f}/x.h"\n' for f in RANKS),
        "core/extra/new.cc": "\n",
        "core/CMakeLists.txt": '#include "core/train/trainer.h"\n',
    }
    with tempfile.TemporaryDirectory() as root:
        for relative, text in files.items():
            path = os.path.join(root, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as out:
                out.write(text)
        got = [v.split(": ", 1)[0] for v in Violations(root)]
    want = ["core/data/side.cc:2", "core/extra/new.cc:1", "core/memory/svc.cc:2", "core/xconv/up.cc:3"]
    if sorted(got) != want:
        print(f"self-test: the checker reported {got}, expected {want}")
        return 1
    print(f"self-test: the checker reported the {len(want)} planted violations and nothing else")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return SelfTest()
    if len(argv) != 2:
        print(__doc__)
        return 2
    if not os.path.isdir(os.path.join(argv[1], "core")):
        print(f"{argv[1]} has no core/ folder")
        return 2
    violations = Violations(argv[1])
    for violation in violations:
        print(violation)
    if violations:
        print(f"{len(violations)} include(s) point up or sideways; move the code they need down, or "
              "the including file up")
        return 1
    print(f"every #include \"core/...\" under core/ points down ({ORDER})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
