#!/usr/bin/env bash
# Installs kmsfs system-wide: the binary, the mount(8) helpers (so `mount -t fuse.kmsfs` and
# /etc/fstab lines work), shell completions and man pages. Needs root (or sudo).
# PREFIX (default /usr/local) chooses where the binary, completions and man pages go.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo

cargo build --release --locked
K="$PWD/target/release/kmsfs"
$sudo install -D -m 0755 "$K" "$PREFIX/bin/kmsfs"
# mount(8) looks for helpers in /sbin only.
for h in mount.fuse.kmsfs mount.kmsfs; do
  $sudo ln -sf "$PREFIX/bin/kmsfs" "/sbin/$h"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$K" completions bash > "$tmp/kmsfs.bash"
"$K" completions zsh > "$tmp/_kmsfs"
"$K" completions fish > "$tmp/kmsfs.fish"
$sudo install -D -m 0644 "$tmp/kmsfs.bash" "$PREFIX/share/bash-completion/completions/kmsfs"
$sudo install -D -m 0644 "$tmp/_kmsfs" "$PREFIX/share/zsh/site-functions/_kmsfs"
$sudo install -D -m 0644 "$tmp/kmsfs.fish" "$PREFIX/share/fish/vendor_completions.d/kmsfs.fish"
"$K" man "$tmp/man"
$sudo install -d "$PREFIX/share/man/man1"
$sudo install -m 0644 "$tmp"/man/*.1 "$PREFIX/share/man/man1/"
echo "installed: $PREFIX/bin/kmsfs, /sbin/mount.fuse.kmsfs, completions (bash, zsh, fish), $(ls "$tmp/man" | wc -l) man pages"
