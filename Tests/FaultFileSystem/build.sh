#!/usr/bin/env bash
# Builds the fault file system: Tests/FaultFileSystem/build.sh OUTDIR
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
if ! pkg-config --exists fuse3 2>/dev/null; then
  echo "error: libfuse3 not found (run scripts/install-deps test: fuse3 libfuse3-dev pkg-config)" >&2
  exit 1
fi
mkdir -p "$out"
if [ ! -x "$out/faultfs" ] || [ "$here/faultfs.c" -nt "$out/faultfs" ]; then
  cc -O2 -Wall -Wextra -Werror -o "$out/faultfs" "$here/faultfs.c" $(pkg-config --cflags --libs fuse3) -lpthread
fi
