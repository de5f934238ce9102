#!/usr/bin/env bash
# Sparse files, side by side: time to make a 4 GiB file with `truncate -s 4G` and write 1 MiB at
# its end (fsync'd), and what the cipher directory then takes on disk; then the time to fill a
# 1 GiB file of holes in order (`truncate -s 1G`, then `dd bs=1M conv=notrunc,fsync` over it,
# as a download or a VM image fills its preallocated file), for kmsfs on a volume
# with sparse files (the default since 2026-12-05), kmsfs on a `--no-sparse` volume (every gap
# stored as encrypted zeros, as before), and gocryptfs (holes stored as unauthenticated zero
# blocks). kmsfs's holes are authenticated (docs/FORMAT.md §4a), gocryptfs's are not.
#
# Run as root: tools/bench-sparse.sh    Env: KMSFS (binary; default: release build),
# WORK_IN (the backing file system; default /var/tmp). Installs gocryptfs when missing.
set -uo pipefail
cd "$(dirname "$0")/.."
KMSFS=${KMSFS:-target/release/kmsfs}
[ -x "$KMSFS" ] || cargo build --release --locked --quiet || exit 1
KMSFS=$(realpath "$KMSFS")
command -v gocryptfs >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gocryptfs >/dev/null; }
W=$(mktemp -d "${WORK_IN:-/var/tmp}/kmsfs-bench-sparse.XXXXXX")
cleanup() {
  for m in "$W"/m-*; do mountpoint -q "$m" && fusermount3 -u -z "$m"; done
  rm -rf "$W"
}
trap cleanup EXIT
echo bench > "$W/p"
run() { # NAME MOUNTPOINT CIPHERDIR
  local t0 t t1 t2 k
  t0=$(date +%s.%N)
  truncate -s 4G "$2/f" &&
    dd if=/dev/urandom of="$2/f" bs=1M count=1 seek=4096 conv=notrunc,fsync status=none
  t=$(date +%s.%N)
  k=$(du -sk "$3" | cut -f1)
  rm -f "$2/f"
  t1=$(date +%s.%N)
  truncate -s 1G "$2/g" &&
    dd if=/dev/zero of="$2/g" bs=1M count=1024 conv=notrunc,fsync status=none
  t2=$(date +%s.%N)
  rm -f "$2/g"
  awk -v n="$1" -v a="$t0" -v t="$t" -v b="$t1" -v c="$t2" -v k="$k" \
    'BEGIN{printf "| %s | %.3f | %d | %.2f |\n", n, t-a, k, c-b}'
}
echo "| system | truncate -s 4G + 1 MiB at the end, s | cipher directory on disk, KiB | fill 1 GiB of holes in order, s |"
echo "|---|---:|---:|---:|"
for mode in sparse no-sparse; do
  c=$W/c-$mode m=$W/m-$mode
  mkdir -p "$m"
  KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$W/p" --no-recovery-key \
    $([ $mode = no-sparse ] && echo --no-sparse) "$c" >/dev/null
  "$KMSFS" mount --passfile "$W/p" "$c" "$m" || exit 1
  run "kmsfs ($mode)" "$m" "$c"
  "$KMSFS" unmount "$m"
done
mkdir -p "$W/c-gocryptfs" "$W/m-gocryptfs"
gocryptfs -q -init -extpass "cat $W/p" "$W/c-gocryptfs" >/dev/null 2>&1
gocryptfs -q -extpass "cat $W/p" "$W/c-gocryptfs" "$W/m-gocryptfs" 2>/dev/null
run gocryptfs "$W/m-gocryptfs" "$W/c-gocryptfs"
fusermount3 -u "$W/m-gocryptfs"
