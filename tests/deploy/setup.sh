#!/usr/bin/env bash
# The deploy tests' tools (CTest fixture deploy.Tools): the validator's npm packages, pinned by
# package-lock.json (npm ci, only when node_modules is missing or older than the lockfile), and the
# Go renderer built against Debian's sprig and yaml.v3 (GOPATH mode: Debian packages Go libraries as
# source under /usr/share/gocode, without modules). Nothing is written into git-tracked paths.
set -euo pipefail
# Usage: setup.sh BUILD_DIR   (the renderer goes to BUILD_DIR/helmrender)
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
stamp=$here/node_modules/.package-lock.json   # npm ci writes it; newer than the lockfile when current
if [[ ! -f $stamp || $here/package-lock.json -nt $stamp ]]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd "$here/helmrender" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE="$out/go-cache" \
  go build -o "$out/helmrender" .)
echo "deploy tools ready: $here/node_modules, $out/helmrender"
