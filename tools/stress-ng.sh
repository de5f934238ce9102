#!/usr/bin/env bash
# Runs stress-ng's file-system and I/O stressors, each with --verify, on a fresh kmsfs mount,
# once with the writeback cache (the default) and once with --no-writeback-cache, and prints a
# verdict per stressor. A stressor that fails on kmsfs is run again on the backing ext4 itself:
# if it fails there too, the fault is stress-ng's or the kernel's, and it is reported as
# SAME-ON-EXT4 (not counted). The volume lives on its own 2 GiB ext4 (a loop device), so
# stressors that grow files until the disk is full (fsize, hdd) meet ENOSPC soon and cannot fill
# the machine's disk (holes take no room on a sparse volume, but what is written does).
#
# Run as root: tools/stress-ng.sh
# Env: KMSFS (binary; default: release build), SECS (seconds per stressor, default 6),
#      WORKERS (default 2), STRESSORS (space-separated; default: the list below),
#      MODES ("wb nowb" by default), DAEMON_NO_DAC (1 or nofowner: the daemon as root without
#      the capabilities that override file modes; see tools/lib/suite.sh).
# Exit status: 0 when no stressor failed on kmsfs alone, 1 otherwise, 2 on a setup error.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=stress-ng
. tools/lib/suite.sh # daemon (its own die below)

SECS=${SECS:-6}
WORKERS=${WORKERS:-2}
MODES=${MODES:-wb nowb}
STRESSORS=${STRESSORS:-access aio aiol chattr chdir chmod chown close copy-file dentry dir dirdeep
  dirmany dnotify dup fallocate fcntl fiemap file-ioctl filename flock fpunch fsize fstat getdent
  handle hdd inode-flags inotify io iomix lease link locka lockf lockofd madvise mknod mmap mremap
  msync open readahead rename revio seek sendfile splice symlink sync-file tee touch utime xattr}

die() { echo "stress-ng.sh: $*" >&2; exit 2; }
((EUID == 0)) || die "run as root (it makes a loop device)"
missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v stress-ng >/dev/null || missing+=(stress-ng)
if ((${#missing[@]})); then
  { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >/dev/null || die "could not install ${missing[*]}"
fi
if [[ -z ${KMSFS:-} ]]; then
  cargo build --release --locked -q || die "build failed"
  KMSFS=$PWD/target/release/kmsfs
fi

WORK=$(mktemp -d /tmp/kmsfs-stress.XXXXXX)
LOWER=$WORK/lower MNT=$WORK/mnt LOGS=/tmp/kmsfs-stress-logs
dev=""
cleanup() {
  mountpoint -q "$MNT" && fusermount3 -u -z "$MNT"
  # The daemon lets go of the backing file system a moment after the unmount.
  for _ in 1 2 3 4 5 6 7 8 9 10; do mountpoint -q "$LOWER" || break; umount "$LOWER" 2>/dev/null || sleep 0.5; done
  [[ -n $dev ]] && losetup -d "$dev" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$LOWER" "$MNT" "$LOGS"
truncate -s 2G "$WORK/img"
dev=$(losetup -f --show "$WORK/img") || die "losetup failed"
mkfs.ext4 -q "$dev" && mount "$dev" "$LOWER" || die "could not make the backing ext4"
printf 'stress\n' >"$WORK/pass"

volume=0
mount_fresh() { # ARGS...: a new volume mounted at $MNT, its scratch directory in $T
  # kmsfs unmount returns once the daemon has let go of the volume (its closing audit records
  # written): the rm below cannot race it.
  mountpoint -q "$MNT" && "$KMSFS" unmount "$MNT"
  volume=$((volume + 1))
  rm -rf "$LOWER"/c* "$LOWER/raw"
  KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$WORK/pass" --no-recovery-key "$LOWER/c$volume" >/dev/null ||
    die "init failed"
  daemon "$KMSFS" mount --passfile "$WORK/pass" "$@" "$LOWER/c$volume" "$MNT" || die "mount failed"
  T=$MNT/t
  mkdir "$T"
}

stress() { # DIR STRESSOR LOG: runs one stressor in DIR, returns its exit status
  (cd "$1" && timeout $((SECS * 10 + 60)) stress-ng --"$2" "$WORKERS" --timeout "${SECS}s" --verify \
    --temp-path "$1" --metrics-brief) >"$3" 2>&1
}

status=0
for mode in $MODES; do
  case $mode in
    wb) mount_fresh ;;
    nowb) mount_fresh --no-writeback-cache ;;
    *) die "unknown mode $mode" ;;
  esac
  echo "== stress-ng on kmsfs ($mode), $WORKERS workers, ${SECS} s each, --verify"
  for s in $STRESSORS; do
    log=$LOGS/$mode-$s.log
    stress "$T" "$s" "$log"
    rc=$?
    if grep -q 'skipping stressor\|not implemented\|no stressors' "$log" && ((rc == 0 || rc == 4)); then
      echo "SKIP  $s  ($(grep -m1 -o 'skipping stressor.*\|not implemented.*' "$log"))"
    elif ((rc == 0)); then
      echo "PASS  $s"
    else
      mkdir -p "$LOWER/raw"
      stress "$LOWER/raw" "$s" "$log.ext4"
      rc_ext4=$?
      rm -rf "$LOWER/raw"
      if ((rc_ext4 != 0)); then
        echo "SAME-ON-EXT4  $s  (exit $rc on kmsfs, $rc_ext4 on ext4; logs: $log, $log.ext4)"
      else
        echo "FAIL  $s  (exit $rc; log: $log)"
        grep -m5 -iE 'fail|error' "$log" | sed 's/^/      /'
        status=1
      fi
    fi
    find "$T" -mindepth 1 -delete 2>/dev/null
  done
done
exit $status
