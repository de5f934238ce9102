#!/usr/bin/env bash
# Runs git's own test suite with its trash directories on a fresh kmsfs mount and prints prove's
# verdict. ~1,000 scripts and ~31,000 tests of a program that leans on every corner of POSIX
# file systems: lock files renamed over their targets, hard links, symlinks, mmap, fsync, files
# removed while open, directories replaced by files, case and mode changes, many processes at once.
#
# Git's source is Debian's (`apt-get source`, with a deb-src entry added for the download and
# removed again), built once without curl, expat, gettext, Tcl and Python (the tests that need
# them skip themselves) and kept in $SUITES_DIR.
#
# Run as root: tools/git-suite.sh [SCRIPT_GLOB ...]    (default: 't[0-9]*.sh', everything)
#   e.g. tools/git-suite.sh 't0*.sh' 't7*.sh'
# Env: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release build),
#      JOBS (scripts at once; default: the number of CPUs), WORK_IN (where the volume goes;
#      default /var/tmp).
# The volume gets an audit size limit of 1 GiB: the whole suite writes several GB of records.
# Exit status: 0 when every script passed, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."

SUITES_DIR=${SUITES_DIR:-$HOME/.cache/kmsfs-suites}
JOBS=${JOBS:-$(nproc)}
WORK_IN=${WORK_IN:-/var/tmp}

die() { echo "git-suite: $*" >&2; exit 2; }
((EUID == 0)) || die "run as root (apt-get, and the suite's trash directories on a mount)"
install_pkg() { # PACKAGE
  apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq "$1" >/dev/null; } || die "$1 is needed"
}
command -v fusermount3 >/dev/null || install_pkg fuse3
command -v gcc >/dev/null || install_pkg gcc
command -v make >/dev/null || install_pkg make
command -v prove >/dev/null || install_pkg perl
[[ -e /usr/include/zlib.h ]] || install_pkg zlib1g-dev

if [[ -z ${KMSFS:-} ]]; then
  cargo build --release --locked -q || die "build failed"
  KMSFS=$PWD/target/release/kmsfs
fi
KMSFS=$(realpath "$KMSFS") || die "no kmsfs binary"

# git's source and build, once.
GIT_DIR_SRC=$(find "$SUITES_DIR/git" -maxdepth 1 -type d -name 'git-*' 2>/dev/null | head -1)
if [[ -z $GIT_DIR_SRC || ! -x $GIT_DIR_SRC/git ]]; then
  mkdir -p "$SUITES_DIR/git" || die "cannot make $SUITES_DIR/git"
  if [[ -z $GIT_DIR_SRC ]]; then
    echo "== downloading git's source (apt-get source git)"
    # shellcheck disable=SC1091 # the system's own file
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
    src_list=/etc/apt/sources.list.d/kmsfs-git-suite-src.sources
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$codename" >"$src_list"
    (apt-get update -qq && cd "$SUITES_DIR/git" && apt-get source -qq --download-only git) >/dev/null 2>&1
    got=$?
    rm -f "$src_list"
    apt-get update -qq >/dev/null 2>&1
    ((got == 0)) || die "apt-get source git failed"
    orig=$(find "$SUITES_DIR/git" -maxdepth 1 -name 'git_*.orig.tar.*' | head -1)
    [[ -n $orig ]] || die "no git_*.orig.tar.* downloaded"
    tar -xf "$orig" -C "$SUITES_DIR/git" || die "cannot unpack $orig"
    GIT_DIR_SRC=$(find "$SUITES_DIR/git" -maxdepth 1 -type d -name 'git-*' | head -1)
    [[ -n $GIT_DIR_SRC ]] || die "no git-* directory in $orig"
  fi
  echo "== building $(basename "$GIT_DIR_SRC")"
  make -C "$GIT_DIR_SRC" -j"$JOBS" NO_CURL=1 NO_EXPAT=1 NO_GETTEXT=1 NO_TCLTK=1 NO_PYTHON=1 \
    >"$SUITES_DIR/git/build.log" 2>&1 || die "git build failed (see $SUITES_DIR/git/build.log)"
fi

WORK=$(mktemp -d "$WORK_IN/kmsfs-git-suite.XXXXXX") || die "mktemp in $WORK_IN failed"
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
cleanup() { unmount; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir "$MNT" "$WORK/cipher"
printf 'suite\n' >"$WORK/pass"
KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$WORK/pass" --no-recovery-key "$WORK/cipher" \
  >/dev/null || die "kmsfs init failed"
"$KMSFS" audit --passfile "$WORK/pass" "$WORK/cipher" retention --max-size 1G >/dev/null ||
  die "setting the audit size limit failed"
timeout 30 "$KMSFS" mount --passfile "$WORK/pass" "$WORK/cipher" "$MNT" || die "mount failed"
mkdir "$MNT/trash"

(($# > 0)) || set -- 't[0-9]*.sh'
cd "$GIT_DIR_SRC/t" || die "no t/ in $GIT_DIR_SRC"
# shellcheck disable=SC2068 # the globs are meant to expand here
scripts=$(ls $@ 2>/dev/null)
[[ -n $scripts ]] || die "no test script matches $*"
echo "== $(wc -w <<<"$scripts") scripts of $(basename "$GIT_DIR_SRC") with their trash directories on a kmsfs mount ($JOBS at once)"
# shellcheck disable=SC2086 # one word per script
prove -j"$JOBS" $scripts :: --root="$MNT/trash" 2>&1 | tee "$WORK/prove.out" |
  grep -v -E '\.\. ok$|\.\. ok +[0-9]+ ms|\.\. skipped'
verdict=${PIPESTATUS[0]}
"$KMSFS" audit "$MNT" verify | tail -1
exit $((verdict == 0 ? 0 : 1))
