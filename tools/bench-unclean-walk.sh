#!/usr/bin/env bash
# Times `kmsfs mount` after a read-write session that did not end cleanly: the mount first looks
# at every file of the cipher directory for an interrupted-write marker (src/vfs/unclean.rs).
# Runs on a fresh ext4 image of its own, with the page cache dropped before every mount, each
# build in turn (alternating, so that a busy host weighs on all of them alike).
#
#   sudo tools/bench-unclean-walk.sh                                  # target/release/kmsfs
#   sudo KMSFS="/tmp/old/kmsfs target/release/kmsfs" FILES=300000 tools/bench-unclean-walk.sh
#
# Variables: KMSFS (space-separated builds, default target/release/kmsfs), FILES (default
# 300000), DIRS (directories they are spread over, default 300), REPS (default 3), WORK (default
# /var/tmp/kmsfs-unclean-walk). The files are made directly in the cipher directory, empty: the
# walk reads one extended attribute of each, so its time is the backing file system's lookup of
# the name and read of the inode, as for real files (none carries a marker, as after a crash
# long after the last write). Needs root (loop device, drop_caches), mkfs.ext4, fusermount3.
set -euo pipefail

KMSFS=${KMSFS:-target/release/kmsfs}
FILES=${FILES:-300000}
DIRS=${DIRS:-300}
REPS=${REPS:-3}
WORK=${WORK:-/var/tmp/kmsfs-unclean-walk}

[[ $(id -u) == 0 ]] || { echo "needs root (loop device, drop_caches)" >&2; exit 2; }
for b in $KMSFS; do [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }; done

mkdir -p "$WORK/fs" "$WORK/mnt"
cleanup() {
  fusermount3 -u -z "$WORK/mnt" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mountpoint -q "$WORK/fs" || break
    umount "$WORK/fs" 2>/dev/null || sleep 0.5
  done
  rm -f "$WORK/img" "$WORK/pass"
}
trap cleanup EXIT

truncate -s "$((FILES / 1000 + 2))G" "$WORK/img"
mkfs.ext4 -q -F "$WORK/img"
mount -o loop "$WORK/img" "$WORK/fs"
echo "unclean-walk benchmark" >"$WORK/pass"
first=${KMSFS%% *}
KMSFS_INSECURE_FAST_KDF=1 "$first" init --passfile "$WORK/pass" --no-recovery-key \
  "$WORK/fs/cipher" >/dev/null
python3 - "$WORK/fs/cipher" "$FILES" "$DIRS" <<'EOF'
import os, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = -(-files // dirs)
made = 0
for d in range(dirs):
    sub = f"{root}/d{d:05d}"
    os.mkdir(sub)
    for f in range(min(per, files - made)):
        os.close(os.open(f"{sub}/f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
    made += min(per, files - made)
EOF
sync

echo "# mount after an unclean end: $FILES files in $DIRS directories, cold cache ($(nproc) CPUs)"
for rep in $(seq 1 "$REPS"); do
  for b in $KMSFS; do
    touch "$WORK/fs/cipher/.kmsfs/mounted-rw"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    "$b" mount --passfile "$WORK/pass" "$WORK/fs/cipher" "$WORK/mnt"
    end=$(date +%s.%N)
    fusermount3 -u "$WORK/mnt"
    # The daemon ends after the unmount; the next mount waits for the volume lock otherwise.
    for _ in $(seq 1 50); do
      pgrep -f "mount --passfile $WORK/pass" >/dev/null || break
      sleep 0.1
    done
    printf '%s\trep %s\t%.2f s\n' "$b" "$rep" "$(echo "$end - $start" | bc)"
  done
done
