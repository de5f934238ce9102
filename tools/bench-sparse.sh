#!/usr/bin/env bash
# Sparse files, side by side: time to make a 4 GiB file with `truncate -s 4G` and write 1 MiB at
# its end (fsync'd), and what the cipher directory then takes on disk, for kmsfs on a volume
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
  local t0 t1
  t0=$(date +%s.%N)
  truncate -s 4G "$2/f" &&
    dd if=/dev/urandom of="$2/f" bs=1M count=1 seek=4096 conv=notrunc,fsync status=none
  t1=$(date +%s.%N)
  awk -v n="$1" -v a="$t0" -v b="$t1" -v k="$(du -sk "$3" | cut -f1)" \
    'BEGIN{printf "| %s | %.3f | %d |\n", n, b-a, k}'
}
echo "| system | truncate -s 4G + 1 MiB at the end, s | cipher directory on disk, KiB |"
echo "|---|---:|---:|"
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
