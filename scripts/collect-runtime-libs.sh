#!/usr/bin/env bash
# For the container image's runtime stage (Dockerfile): lists the Debian packages that hold the shared
# libraries the given binaries load (OUT/runtime-packages, one a line), and copies the libraries no
# package holds (a LibTorch unpacked under /opt, say) into OUT/lib. The runtime stage installs the one
# and copies the other, so it carries the binaries' runtime and no compiler, headers or build tree.
set -euo pipefail
# Usage: collect-runtime-libs.sh OUT BINARY...
out=$1
shift
mkdir -p "$out/lib"
: > "$out/runtime-packages"
for lib in $(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
  real=$(readlink -f "$lib")
  pkg=""
  # Merged /usr: dpkg may know a library by its /lib or its /usr/lib path, or only by its real path.
  for path in "$lib" "$real" "${lib#/usr}" "/usr$lib"; do
    pkg=$(dpkg-query -S "$path" 2>/dev/null | head -1 | cut -d: -f1) && [[ -n $pkg ]] && break
  done
  if [[ -n $pkg ]]; then
    echo "$pkg" >> "$out/runtime-packages"
  else
    cp -L "$lib" "$out/lib/"
  fi
done
sort -u -o "$out/runtime-packages" "$out/runtime-packages"
echo "collect-runtime-libs: $(wc -l < "$out/runtime-packages") packages, $(ls "$out/lib" | wc -l) unpackaged libraries"
