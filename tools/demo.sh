#!/usr/bin/env bash
# Newcomer's first run: install what is needed, build, create a volume, mount it, round-trip a
# file, show that the cipher directory holds no plaintext, unmount; then install kmsfs (binary,
# mount helper for fstab, completions, man pages; KMSFS_DEMO_INSTALL=0 skips that).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "== installing fuse3"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3
fi

echo "== building kmsfs (release)"
cargo build --release --locked
K="$PWD/target/release/kmsfs"

work=$(mktemp -d /tmp/kmsfs-demo.XXXXXX)
cleanup() { fusermount3 -u -z "$work/mnt" 2>/dev/null || true; }
trap cleanup EXIT
mkdir "$work/mnt"
printf 'demo passphrase\n' > "$work/pass"

echo "== kmsfs init $work/cipher"
"$K" init --passfile "$work/pass" --recovery-key-file "$work/recovery-key" "$work/cipher"
"$K" info "$work/cipher"

echo "== kmsfs mount $work/cipher $work/mnt"
"$K" mount --passfile "$work/pass" "$work/cipher" "$work/mnt"

echo "== writing secret.txt through the mount"
echo "It works! The quick brown fox." > "$work/mnt/secret.txt"
mkdir "$work/mnt/reports"
cp /etc/os-release "$work/mnt/reports/os-release"
echo "== reading it back:"
cat "$work/mnt/secret.txt"
echo "== the mount:"
ls -la "$work/mnt" "$work/mnt/reports"
echo "== the cipher directory (what a backup or a thief sees):"
ls -la "$work/cipher"
if grep -rq "quick brown fox" "$work/cipher"; then echo "PLAINTEXT LEAKED" >&2; exit 1; fi
echo "(no plaintext found in the cipher directory)"

echo "== kmsfs unmount"
"$K" unmount "$work/mnt"
trap - EXIT

if [ "${KMSFS_DEMO_INSTALL:-1}" = 1 ]; then
  echo "== installing kmsfs, the mount helper, completions and man pages (tools/install.sh)"
  tools/install.sh
fi
echo "Done. The volume stays in $work (passphrase in $work/pass)."
