#!/usr/bin/env bash
# Self-test of faultfs's power-loss mode: Tests/FaultFileSystem/selftest-powerloss.sh
# Needs root, /dev/fuse and libfuse3 (scripts/install-deps test). Mounts in a temporary
# directory, runs every case with and without --writeback-cache, exits non-zero on a failure.
# Syncs come from coreutils: `sync FILE` is fsync(2), `sync -d FILE` fdatasync(2), and
# `sync DIR` fsync(2) of the directory (FUSE fsyncdir).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/faultfs-selftest.XXXXXX)
daemon= mnt= backing= images=0 failures=0

unmount() {
  if [ -n "$daemon" ]; then
    fusermount3 -u -z "$mnt" 2>/dev/null || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    daemon=
  fi
}
trap 'unmount; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

"$here/build.sh" "$work/bin"

fail() { echo "FAIL [$mode]: $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok   [$mode]: $*"; }

# mount NAME [daemon options]: a fresh backing directory, mounted; $1 picks the directories.
mount_fs() {
  backing=$work/$1-backing mnt=$work/$1-mnt
  shift
  mkdir -p "$backing" "$mnt"
  "$work/bin/faultfs" "$backing" "$mnt" -f -o auto_unmount "$@" &
  daemon=$!
  for _ in $(seq 500); do [ -e "$mnt/.faultfs" ] && return 0; sleep 0.01; done
  echo "faultfs did not mount" >&2
  exit 1
}

ctl() { printf '%s\n' "$*" > "$mnt/.faultfs"; }
counter() { tr ' ' '\n' < "$mnt/.faultfs" | sed -n "s/^$1=//p"; }
# crash: a new crash image; its path in $image.
crash() { images=$((images + 1)); image=$work/image$images; ctl "crash=$image"; }

# expect DESCRIPTION COMMAND...: records a failure unless COMMAND succeeds.
expect() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }
has() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }          # file exists with that content
absent() { [ ! -e "$1" ]; }
durable() { [ "$(cat "$mnt/.faultfs-durable/$1")" = "$2" ]; }  # the durable view of a path

run_cases() {
  mode=$1
  shift
  # The mode switched on at mount: what the backing tree holds then is durable.
  mkdir -p "$work/$mode-backing/predir"
  printf 'before' > "$work/$mode-backing/pre"
  printf 'inner' > "$work/$mode-backing/predir/inner"
  mount_fs "$mode" --power-loss "$@"
  expect "status line shows the mode" [ "$(counter power_loss)" = 1 ]
  crash
  expect "baseline: the tree at switch-on is the crash image" diff -r "$backing" "$image"

  # File data: durable only through fsync/fdatasync of that file.
  printf 'v1' > "$mnt/pre"
  crash
  expect "data written without fsync is lost" has "$image/pre" before
  expect "durable view before the sync" durable pre before
  sync "$mnt/pre"
  crash
  expect "fsynced data survives" has "$image/pre" v1
  expect "durable view after the sync" durable pre v1
  expect "snapshots counts it" [ "$(counter snapshots)" = 1 ]
  # stat(2) of the view gives the durable size without copying the content; with
  # --writeback-cache the kernel keeps its own cached size for regular files, so only here.
  if [ "$mode" = plain ]; then
    expect "durable view: stat gives the durable size" [ "$(stat -c %s "$mnt/.faultfs-durable/pre")" = 2 ]
  fi

  # A delayed fsync covers only what reached the file system before it started. A write(2)
  # through the mount waits for the sync of that inode (the kernel holds its lock); data that
  # reaches the backing file meanwhile shows that the snapshot is taken at the start.
  printf 'v2' > "$mnt/pre"
  ctl delay_ms=600
  local before_syncs
  before_syncs=$(counter fsync)
  sync "$mnt/pre" & local syncer=$!
  while [ "$(counter fsync)" = "$before_syncs" ]; do sleep 0.01; done
  printf '+late' >> "$backing/pre"        # reaches the file system during the handler's delay
  printf '+later' >> "$mnt/pre"           # issued during the sync, lands after it
  expect "the delayed fsync succeeds" wait "$syncer"
  ctl delay_ms=0
  crash
  expect "a write during a delayed fsync is not in its snapshot" has "$image/pre" v2
  expect "durable view excludes it too" durable pre v2
  sync -d "$mnt/pre"
  crash
  local now
  now=$(cat "$backing/pre")  # both writes (with --writeback-cache the kernel's append overwrote +late)
  expect "the next fdatasync covers it ($now)" has "$image/pre" "$now"

  # An injected errno: no snapshot.
  local snapshots
  snapshots=$(counter snapshots)
  printf 'v3' > "$mnt/pre"
  ctl errno=EIO count=1
  expect "the injected fsync fails" bash -c '! sync "$1" 2>/dev/null' _ "$mnt/pre"
  expect "no snapshot for a failed sync" [ "$(counter snapshots)" = "$snapshots" ]
  crash
  expect "data of a failed fsync is lost" has "$image/pre" "$now"
  ctl errno=EIO count=1 op=fsync
  expect "fdatasync not matched by op=fsync succeeds" sync -d "$mnt/pre"
  expect "... and takes a snapshot" durable pre v3
  ctl errno=0 op=both count=-1

  # Directory entries: durable only through fsync of the directory.
  printf 'new' > "$mnt/new"
  sync "$mnt/new"
  crash
  expect "created + fsynced, directory not fsynced: absent" absent "$image/new"
  expect "durable view shows the file's synced data anyway" durable new new
  local dir_snapshots
  dir_snapshots=$(counter dir_snapshots)
  sync "$mnt"
  expect "dir_snapshots counts the fsyncdir" [ "$(counter dir_snapshots)" = $((dir_snapshots + 1)) ]
  crash
  expect "create + fsyncdir survives" has "$image/new" new
  printf 'unsynced' > "$mnt/nodata"
  sync "$mnt"
  crash
  expect "created, never synced, directory fsynced: present and empty" has "$image/nodata" ''
  mkdir "$mnt/sub"
  printf 'deep' > "$mnt/sub/f"
  sync "$mnt/sub/f"
  sync "$mnt/sub"
  crash
  expect "mkdir whose parent was not fsynced: the subtree is absent" absent "$image/sub"
  sync "$mnt"
  crash
  expect "after the parent's fsync: the subtree is there" has "$image/sub/f" deep

  # Rename.
  mv "$mnt/new" "$mnt/renamed"
  crash
  expect "rename without fsyncdir is undone (old name)" has "$image/new" new
  expect "rename without fsyncdir is undone (no new name)" absent "$image/renamed"
  sync "$mnt"
  crash
  expect "rename + fsyncdir is kept" has "$image/renamed" new
  expect "... and the old name is gone" absent "$image/new"
  mv "$mnt/renamed" "$mnt/sub/moved"
  sync "$mnt/sub"
  sync "$mnt"
  crash
  expect "rename across directories with both fsynced" has "$image/sub/moved" new
  expect "... the source name is gone" absent "$image/renamed"
  printf 'replacement' > "$mnt/tmp"
  sync "$mnt/tmp"
  mv "$mnt/tmp" "$mnt/pre"
  crash
  expect "rename over a file, no fsyncdir: the old file is back" has "$image/pre" v3
  sync "$mnt"
  crash
  expect "rename over a file + fsyncdir: the new file" has "$image/pre" replacement

  # Unlink.
  rm "$mnt/pre"
  crash
  expect "unlink without fsyncdir is undone" has "$image/pre" replacement
  sync "$mnt"
  crash
  expect "unlink + fsyncdir removes it" absent "$image/pre"
  printf 'held' > "$mnt/held"
  sync "$mnt/held"
  sync "$mnt"
  exec {held}<"$mnt/held"
  rm "$mnt/held"           # still open: libfuse hides it as .fuse_hidden*
  sync "$mnt"
  crash
  exec {held}<&-
  expect "unlink of an open file + fsyncdir removes it" absent "$image/held"
  expect "... and no .fuse_hidden file shows" [ -z "$(find "$image" -name '.fuse_hidden*')" ]

  # Inode numbers reused after an unlink do not inherit the dead inode's history.
  printf 'A' > "$mnt/a"
  sync "$mnt/a"
  sync "$mnt"
  local ino_a ino_b
  ino_a=$(stat -c %i "$backing/a")
  rm "$mnt/a"
  printf 'B' > "$mnt/b"
  ino_b=$(stat -c %i "$backing/b")
  sync "$mnt/b"
  crash
  expect "unlinked a (no fsyncdir) keeps its content, inode reused: $([ "$ino_a" = "$ino_b" ] && echo yes || echo no)" \
    has "$image/a" A
  expect "b (no fsyncdir) is absent" absent "$image/b"
  expect "durable view of b is b's" durable b B

  # The mount keeps working; crash images can be repeated; bad targets are refused.
  local previous=$image
  crash
  expect "a second image of the same state is the same" diff -r "$previous" "$image"
  mkdir -p "$work/full" && touch "$work/full/x"
  expect "crash= into a non-empty directory is refused" bash -c '! printf "crash=%s\n" "$1" > "$2" 2>/dev/null' _ "$work/full" "$mnt/.faultfs"
  expect "crash= with a relative path is refused" bash -c '! printf "crash=rel\n" > "$1" 2>/dev/null' _ "$mnt/.faultfs"
  expect "crash= inside the mount is refused" bash -c '! printf "crash=%s/x\n" "$2" > "$1" 2>/dev/null' _ "$mnt/.faultfs" "$mnt"
  expect "the durable view is read-only" bash -c '! { printf x > "$1/.faultfs-durable/b"; } 2>/dev/null' _ "$mnt"

  # reset: fault switches and counters only; the mode and the durable state stay.
  ctl reset
  expect "reset keeps the mode" [ "$(counter power_loss)" = 1 ]
  expect "reset zeroes snapshots and dir_snapshots" [ "$(counter snapshots) $(counter dir_snapshots)" = "0 0" ]
  previous=$image
  crash
  expect "reset keeps the durable state" diff -r "$previous" "$image"

  # Off and on again at run time: everything now in the backing tree becomes durable.
  ctl power_loss=0
  expect "power_loss=0 switches it off" [ "$(counter power_loss)" = 0 ]
  expect "crash= refused when off" bash -c '! printf "crash=%s\n" "$1" > "$2" 2>/dev/null' _ "$work/off-image" "$mnt/.faultfs"
  expect "durable view gone when off" absent "$mnt/.faultfs-durable/b"
  ctl power_loss=1
  crash
  expect "power_loss=1: the current tree is the durable state" diff -r "$backing" "$image"

  # Many handlers in parallel: 16 files synced at once under a delay, each snapshot its own.
  for i in $(seq 16); do printf "p$i" > "$mnt/p$i"; done
  ctl delay_ms=200
  local syncers=()
  for i in $(seq 16); do sync "$mnt/p$i" & syncers+=($!); done
  for pid in "${syncers[@]}"; do wait "$pid"; done
  expect "they ran at once" [ "$(counter max_inflight)" -ge 8 ]
  ctl delay_ms=0
  sync "$mnt"
  crash
  local all=1
  for i in $(seq 16); do has "$image/p$i" "p$i" || all=0; done
  expect "16 concurrent delayed syncs each installed their own snapshot" [ $all = 1 ]

  # A write carrying O_DSYNC (dd oflag=dsync opens the file O_DSYNC) is durable when it returns,
  # with no fsync of its own; the fsync fault fails its sync part: not durable.
  printf 'd0' > "$mnt/dsync" && sync "$mnt/dsync" && sync "$mnt"
  ctl reset
  printf 'd1' | dd of="$mnt/dsync" oflag=dsync conv=notrunc status=none
  crash
  expect "an O_DSYNC write survives without a sync" has "$image/dsync" d1
  # With --writeback-cache the kernel caches it and sends a writeback (without the flag) and an
  # fsync instead.
  if [ "$mode" = plain ]; then
    expect "dsync_writes counts it" [ "$(counter dsync_writes)" -ge 1 ]
  fi
  ctl errno=EIO op=fdatasync count=1
  expect "its sync part gets the fsync fault" bash -c '! printf d2 | dd of="$1" oflag=dsync conv=notrunc status=none 2>/dev/null' _ "$mnt/dsync"
  ctl reset
  crash
  expect "a failed O_DSYNC write is not durable" has "$image/dsync" d1

  unmount
}

run_cases plain
run_cases writeback --writeback-cache

if [ $failures -ne 0 ]; then echo "power-loss self-test: $failures failure(s)"; exit 1; fi
echo "power-loss self-test: all passed"
