#!/usr/bin/env bash
# Builds rsync on a fresh kmsfs mount and runs its test suite there (`make check`): ~45 scripts
# copying trees with hard links, symlinks, devices, permissions, times, extended attributes
# (xattrs, xattrs-hlink), deletions, backups, --inplace/--append, checksums and fuzzy matching,
# from and to directories on the mount.
#
# The source is Debian's (`apt-get source rsync`, with a deb-src entry added for the download
# and removed again), kept in $SUITES_DIR; built without the optional compression and hash
# libraries (the scripts that need ACL or crtime support skip themselves).
#
# Run as root: tools/rsync-suite.sh
# Env: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release build),
#      JOBS (build jobs; default: the number of CPUs), WORK_IN (where the volume goes; default
#      /var/tmp).
# Exit status: 0 when every script passed or skipped, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."

SUITES_DIR=${SUITES_DIR:-$HOME/.cache/kmsfs-suites}
JOBS=${JOBS:-$(nproc)}
WORK_IN=${WORK_IN:-/var/tmp}

die() { echo "rsync-suite: $*" >&2; exit 2; }
((EUID == 0)) || die "run as root (apt-get, mounting)"
install_pkg() { # PACKAGE
  apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq "$1" >/dev/null; } || die "$1 is needed"
}
command -v fusermount3 >/dev/null || install_pkg fuse3
command -v gcc >/dev/null || install_pkg gcc
command -v make >/dev/null || install_pkg make
command -v perl >/dev/null || install_pkg perl

if [[ -z ${KMSFS:-} ]]; then
  cargo build --release --locked -q || die "build failed"
  KMSFS=$PWD/target/release/kmsfs
fi
KMSFS=$(realpath "$KMSFS") || die "no kmsfs binary"

# The source, once.
ORIG=$(find "$SUITES_DIR/rsync" -maxdepth 1 -name 'rsync_*.orig.tar.*' 2>/dev/null | head -1)
if [[ -z $ORIG ]]; then
  mkdir -p "$SUITES_DIR/rsync" || die "cannot make $SUITES_DIR/rsync"
  echo "== downloading rsync's source (apt-get source rsync)"
  # shellcheck disable=SC1091 # the system's own file
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
  src_list=/etc/apt/sources.list.d/kmsfs-rsync-suite-src.sources
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$codename" >"$src_list"
  (apt-get update -qq && cd "$SUITES_DIR/rsync" && apt-get source -qq --download-only rsync) >/dev/null 2>&1
  got=$?
  rm -f "$src_list"
  apt-get update -qq >/dev/null 2>&1
  ((got == 0)) || die "apt-get source rsync failed"
  ORIG=$(find "$SUITES_DIR/rsync" -maxdepth 1 -name 'rsync_*.orig.tar.*' | head -1)
  [[ -n $ORIG ]] || die "no rsync_*.orig.tar.* downloaded"
fi

WORK=$(mktemp -d "$WORK_IN/kmsfs-rsync-suite.XXXXXX") || die "mktemp in $WORK_IN failed"
chmod 755 "$WORK"
MNT=$WORK/mnt
unmount() {
  mountpoint -q "$MNT" || return 0
  fusermount3 -u -z "$MNT"
  local i
  for i in $(seq 100); do
    pgrep -f -- " $MNT\$" >/dev/null || return 0
    sleep 0.1
  done
}
cleanup() { cd /; unmount; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir "$MNT" "$WORK/cipher"
printf 'suite\n' >"$WORK/pass"
KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$WORK/pass" --no-recovery-key "$WORK/cipher" \
  >/dev/null || die "kmsfs init failed"
"$KMSFS" audit --passfile "$WORK/pass" "$WORK/cipher" retention --max-size 1G >/dev/null ||
  die "setting the audit size limit failed"
timeout 30 "$KMSFS" mount --passfile "$WORK/pass" "$WORK/cipher" "$MNT" || die "mount failed"

echo "== building $(basename "$ORIG") on a kmsfs mount"
tar -xf "$ORIG" -C "$MNT" || die "cannot unpack $ORIG onto the mount"
SRC=$(find "$MNT" -maxdepth 1 -type d -name 'rsync-*' | head -1)
[[ -n $SRC ]] || die "no rsync-* directory in $ORIG"
cd "$SRC" || die "cannot enter $SRC"
./configure --disable-xxhash --disable-zstd --disable-lz4 --disable-openssl --disable-md2man \
  >"$WORK/configure.log" 2>&1 || { tail -20 "$WORK/configure.log"; die "configure failed on the mount"; }
make -j"$JOBS" >"$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; die "build failed on the mount"; }

echo "== make check"
make check >"$WORK/check.log" 2>&1
verdict=$?
grep -E '^(PASS|FAIL|SKIP|ERROR)|passed|failed|skipped' "$WORK/check.log" | grep -v '^PASS' | sed 's/^/  /'
cd /
"$KMSFS" audit "$MNT" verify | tail -1
exit $((verdict == 0 ? 0 : 1))
