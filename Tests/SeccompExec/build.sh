#!/usr/bin/env bash
# Builds the seccomp test helper: Tests/SeccompExec/build.sh OUTDIR
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
if ! pkg-config --exists libseccomp 2>/dev/null; then
  echo "error: libseccomp not found (run scripts/install-deps test: libseccomp-dev pkg-config)" >&2
  exit 1
fi
mkdir -p "$out"
if [ ! -x "$out/seccomp-exec" ] || [ "$here/seccomp-exec.c" -nt "$out/seccomp-exec" ]; then
  cc -O2 -Wall -Wextra -Werror -o "$out/seccomp-exec" "$here/seccomp-exec.c" $(pkg-config --cflags --libs libseccomp)
fi
