#!/usr/bin/env bash
# A/B of two kmsfs binaries on the same disk, alternating, N runs: untar of a real tree
# (/usr/lib/python3.*), sequential write of 256 MiB with fsync, rm -rf. For checking that a change
# does not cost speed; the side-by-side against peers is tools/bench-peers.sh.
#   tools/ab-bench.sh OLD_BINARY NEW_BINARY [RUNS]
set -euo pipefail
A=$1; B=$2; RUNS=${3:-3}
TAR=$(mktemp /var/tmp/ab-tree.XXXX.tar)
trap 'rm -f "$TAR"' EXIT
py=$(ls -d /usr/lib/python3.* | head -1)
tar cf "$TAR" -C "$(dirname "$py")" "$(basename "$py")" 2>/dev/null
echo "tree: $(tar tf "$TAR" | wc -l) entries from $py"
for run in $(seq 1 "$RUNS"); do
  for name in A B; do
    K=$A; [ $name = B ] && K=$B
    d=$(mktemp -d /var/tmp/ab.XXXX); mkdir "$d/m"; echo pw > "$d/p"
    KMSFS_INSECURE_FAST_KDF=1 "$K" init --passfile "$d/p" --no-recovery-key "$d/c" >/dev/null
    "$K" mount --passfile "$d/p" "$d/c" "$d/m"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N); tar xf "$TAR" -C "$d/m"; sync; t1=$(date +%s.%N)
    dd if=/dev/zero of="$d/m/big" bs=1M count=256 conv=fsync status=none; t2=$(date +%s.%N)
    rm -rf "$d/m/$(basename "$py")"; t3=$(date +%s.%N)
    "$K" unmount "$d/m"; rm -rf "$d"
    awk -v n=$name -v r="$run" -v a="$t0" -v b="$t1" -v c="$t2" -v e="$t3" \
      'BEGIN { printf "%s run%d  untar %.2fs  write256M %.2fs  rm %.2fs\n", n, r, b-a, c-b, e-c }'
  done
done
