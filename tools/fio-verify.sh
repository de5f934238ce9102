#!/usr/bin/env bash
# Data integrity under fio: every job writes with a checksum in each block (fio's `verify`) and
# reads it all back, with `verify_fatal` (the first bad block fails the job). On a fresh kmsfs
# mount, once with the writeback cache (the default) and once with --no-writeback-cache:
#   seq        sequential 1 MiB writes, 256 MiB (psync)
#   unaligned  random writes of 512 B-128 KiB at any byte size, read back while writing
#              (verify_backlog), 64 MiB
#   overwrite  random 8 KiB writes over 32 MiB, four times over (no random map: blocks are
#              written again and again; the last write must win)
#   mmap       random 4 KiB writes through a shared mapping, 64 MiB
#   direct     O_DIRECT random writes of 4-64 KiB, 16 in flight (libaio)
#   uring      buffered random 16 KiB writes, 32 in flight (io_uring)
#   shared     four processes writing one file, each its own range, the ranges meeting inside
#              encryption blocks (1,000,000-byte ranges, 500-byte writes)
#   fsync      random 4 KiB writes with fsync after each; the same with fdatasync; O_SYNC
#   append     3 KiB appends (O_APPEND), 8 MiB
#   sparse     random 64 KiB writes scattered over an 8 GiB sparse file (offsets past 4 GiB)
#   persist    random writes, then unmount, drop the caches, mount again, and verify only
# After each mode the volume is unmounted and `kmsfs fsck` must find no problem, and
# `kmsfs audit verify` must pass. A job that fails on kmsfs is run again on the backing
# directory: if it fails there too the fault is fio's or the kernel's (SAME-ON-BACKING, not
# counted).
#
# Run as root: tools/fio-verify.sh
# Env: KMSFS (binary; default: release build), MODES ("wb nowb"), JOBS (names, default all),
#      WORK_IN (where the volume goes; default /var/tmp), LOGS (default /tmp/kmsfs-fio-logs),
#      DAEMON_NO_DAC (1 or nofowner: see tools/lib/suite.sh).
# Exit status: 0 when every job passed, 1 otherwise, 2 on a setup error.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=fio-verify
. tools/lib/suite.sh

MODES=${MODES:-wb nowb}
ALL_JOBS="seq unaligned overwrite mmap direct uring shared fsync append sparse persist"
JOBS=${JOBS:-$ALL_JOBS}
LOGS=${LOGS:-/tmp/kmsfs-fio-logs}

need_root "mounting, dropping caches"
need_command fusermount3 fuse3
need_command fio
kmsfs_binary
mkdir -p "$LOGS" || die "cannot make $LOGS"

# One job file per name, written to $WORK/jobs/NAME.fio ("persist" has a write and a verify
# half). Every job: verify_fatal, the data checked block by block with the header fio puts in
# each block (offset, length, a sequence number: a block written at the wrong place or a stale
# block fails too, not only a corrupt one).
write_jobs() {
  local d=$WORK/jobs
  mkdir -p "$d"
  local common='[global]
verify_fatal=1
verify_dump=0
fallocate=none
group_reporting=1
'
  printf '%s' "$common" >"$d/seq.fio"
  cat >>"$d/seq.fio" <<'EOF'
[seq]
ioengine=psync
rw=write
bs=1M
size=256M
verify=crc32c
EOF
  printf '%s' "$common" >"$d/unaligned.fio"
  cat >>"$d/unaligned.fio" <<'EOF'
[unaligned]
ioengine=psync
rw=randwrite
bsrange=512-128k
bs_unaligned=1
size=64M
verify=md5
verify_backlog=256
EOF
  printf '%s' "$common" >"$d/overwrite.fio"
  cat >>"$d/overwrite.fio" <<'EOF'
[overwrite]
ioengine=psync
rw=randwrite
bs=8k
size=32M
io_size=128M
norandommap=1
verify=crc32c
EOF
  printf '%s' "$common" >"$d/mmap.fio"
  cat >>"$d/mmap.fio" <<'EOF'
[mmap]
ioengine=mmap
rw=randwrite
bs=4k
size=64M
verify=sha256
EOF
  printf '%s' "$common" >"$d/direct.fio"
  cat >>"$d/direct.fio" <<'EOF'
[direct]
ioengine=libaio
direct=1
iodepth=16
rw=randwrite
bsrange=4k-64k
size=64M
verify=crc32c
EOF
  printf '%s' "$common" >"$d/uring.fio"
  cat >>"$d/uring.fio" <<'EOF'
[uring]
ioengine=io_uring
iodepth=32
rw=randwrite
bs=16k
size=64M
verify=xxhash
EOF
  printf '%s' "$common" >"$d/shared.fio"
  cat >>"$d/shared.fio" <<'EOF'
[shared]
ioengine=psync
filename=shared.dat
rw=randwrite
bs=500
size=1000000
offset_increment=1000000
numjobs=4
verify=crc32c
EOF
  printf '%s' "$common" >"$d/fsync.fio"
  cat >>"$d/fsync.fio" <<'EOF'
[fsync]
ioengine=psync
rw=randwrite
bs=4k
size=8M
fsync=1
verify=md5

[fdatasync]
stonewall
ioengine=psync
rw=randwrite
bs=4k
size=8M
fdatasync=1
verify=md5

[osync]
stonewall
ioengine=psync
rw=randwrite
bs=4k
size=8M
sync=1
verify=md5
EOF
  printf '%s' "$common" >"$d/append.fio"
  cat >>"$d/append.fio" <<'EOF'
[append]
ioengine=psync
rw=write
file_append=1
bs=3k
size=8M
verify=crc32c
EOF
  printf '%s' "$common" >"$d/sparse.fio"
  cat >>"$d/sparse.fio" <<'EOF'
[sparse]
ioengine=psync
rw=randwrite
bs=64k
size=8G
io_size=16M
verify=crc32c
EOF
  local persist='[persist]
ioengine=psync
rw=randwrite
bsrange=1k-64k
size=48M
randseed=20261207
verify=crc32c
'
  { printf '%s' "$common$persist"; echo 'do_verify=0'; } >"$d/persist-write.fio"
  { printf '%s' "$common$persist"; echo 'verify_only=1'; } >"$d/persist-verify.fio"
}

run_fio() { # DIR JOBFILE LOG
  (cd "$1" && timeout 900 fio --output="$3" "$2") >>"$3.stderr" 2>&1
}

mount_opts=()
mount_volume() {
  daemon timeout 30 "$KMSFS" mount --passfile "$WORK/pass" "${mount_opts[@]}" "$WORK/cipher" "$MNT" ||
    die "mount failed"
}

unmount_volume() {
  timeout 60 "$KMSFS" unmount "$MNT" || { unmount -z; die "unmount failed"; }
}

report_failure() { # NAME LOG
  echo "FAIL  $1  (log: $2)"
  grep -m5 -iE 'verify|bad|error|fail' "$2" "$2.stderr" 2>/dev/null | sed 's/^/      /'
}

# Runs job NAME in directory $T on the mount; on a failure, again in a directory beside the
# cipher directory on the same backing file system.
one_job() { # MODE NAME
  local mode=$1 name=$2 log=$LOGS/$1-$2.log rc
  rm -f "$log" "$log.stderr"
  if [[ $name == persist ]]; then
    run_fio "$T" "$WORK/jobs/persist-write.fio" "$log"
    rc=$?
    if ((rc == 0)); then
      unmount_volume
      sync
      echo 3 >/proc/sys/vm/drop_caches
      mount_volume
      run_fio "$T" "$WORK/jobs/persist-verify.fio" "$log.verify"
      rc=$?
      cat "$log.verify" "$log.verify.stderr" >>"$log" 2>/dev/null
    fi
  else
    run_fio "$T" "$WORK/jobs/$name.fio" "$log"
    rc=$?
  fi
  if ((rc == 0)); then
    echo "PASS  $name"
    return 0
  fi
  local plain=$WORK/plain rc_plain
  mkdir -p "$plain"
  if [[ $name == persist ]]; then
    run_fio "$plain" "$WORK/jobs/persist-write.fio" "$log.backing" &&
      run_fio "$plain" "$WORK/jobs/persist-verify.fio" "$log.backing"
  else
    run_fio "$plain" "$WORK/jobs/$name.fio" "$log.backing"
  fi
  rc_plain=$?
  rm -rf "$plain"
  if ((rc_plain != 0)); then
    echo "SAME-ON-BACKING  $name  (exit $rc on kmsfs, $rc_plain on the backing directory; logs: $log, $log.backing)"
    return 0
  fi
  report_failure "$name" "$log"
  return 1
}

WORK=$(mktemp -d "$WORK_IN/kmsfs-$SUITE.XXXXXX") || die "mktemp in $WORK_IN failed"
MNT=$WORK/mnt
trap 'cd /; unmount -z; rm -rf "$WORK"' EXIT
mkdir "$MNT"
printf 'fio\n' >"$WORK/pass"
write_jobs

status=0
for mode in $MODES; do
  case $mode in
    wb) mount_opts=() ;;
    nowb) mount_opts=(--no-writeback-cache) ;;
    *) die "unknown mode $mode" ;;
  esac
  rm -rf "$WORK/cipher"
  mkdir "$WORK/cipher"
  KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$WORK/pass" --no-recovery-key "$WORK/cipher" \
    >/dev/null || die "kmsfs init failed"
  mount_volume
  echo "== fio verify on kmsfs ($mode)"
  for name in $JOBS; do
    [[ " $ALL_JOBS " == *" $name "* ]] || die "unknown job $name"
    T=$MNT/$name
    mkdir "$T" || die "cannot make $T on the mount"
    one_job "$mode" "$name" || status=1
    # kept: fsck checks every block of it after the unmount
  done
  unmount_volume
  if "$KMSFS" fsck --passfile "$WORK/pass" "$WORK/cipher" >"$LOGS/$mode-fsck.log" 2>&1; then
    echo "PASS  fsck  ($(tail -1 "$LOGS/$mode-fsck.log"))"
  else
    echo "FAIL  fsck  (log: $LOGS/$mode-fsck.log)"
    tail -5 "$LOGS/$mode-fsck.log" | sed 's/^/      /'
    status=1
  fi
  if "$KMSFS" audit --passfile "$WORK/pass" "$WORK/cipher" verify >"$LOGS/$mode-audit.log" 2>&1; then
    echo "PASS  audit verify"
  else
    echo "FAIL  audit verify  (log: $LOGS/$mode-audit.log)"
    tail -3 "$LOGS/$mode-audit.log" | sed 's/^/      /'
    status=1
  fi
done
exit $status
