#!/usr/bin/env bash
# Builds the fault file system: Tests/FaultFileSystem/build.sh OUTDIR
# Rebuilds whenever the source differs from the one the binary was built from (a checksum kept
# beside it): several checkouts may share OUTDIR, so a modification time is not enough.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
if ! pkg-config --exists fuse3 2>/dev/null; then
  echo "error: libfuse3 not found (run scripts/install-deps test: fuse3 libfuse3-dev pkg-config)" >&2
  exit 1
fi
mkdir -p "$out"
sum=$(sha256sum "$here/faultfs.c" | cut -d' ' -f1)
if [ ! -x "$out/faultfs" ] || [ "$(cat "$out/faultfs.sha256" 2>/dev/null)" != "$sum" ]; then
  tmp=$(mktemp "$out/faultfs.XXXXXX")
  cc -O2 -Wall -Wextra -Werror -o "$tmp" "$here/faultfs.c" $(pkg-config --cflags --libs fuse3) -lpthread
  mv -f "$tmp" "$out/faultfs"
  echo "$sum" > "$out/faultfs.sha256"
fi
