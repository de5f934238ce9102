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
SUITE=git-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}

need_root "apt-get, and the suite's trash directories on a mount"
need_command fusermount3 fuse3
need_command gcc
need_command make
need_command prove perl
[[ -e /usr/include/zlib.h ]] || install_pkg zlib1g-dev
kmsfs_binary

# git's source and build, once.
GIT_DIR_SRC=$(find "$SUITES_DIR/git" -maxdepth 1 -type d -name 'git-*' 2>/dev/null | head -1)
if [[ -z $GIT_DIR_SRC || ! -x $GIT_DIR_SRC/git ]]; then
  if [[ -z $GIT_DIR_SRC ]]; then
    debian_source git
    tar -xf "$ORIG" -C "$SUITES_DIR/git" || die "cannot unpack $ORIG"
    GIT_DIR_SRC=$(find "$SUITES_DIR/git" -maxdepth 1 -type d -name 'git-*' | head -1)
    [[ -n $GIT_DIR_SRC ]] || die "no git-* directory in $ORIG"
  fi
  echo "== building $(basename "$GIT_DIR_SRC")"
  make -C "$GIT_DIR_SRC" -j"$JOBS" NO_CURL=1 NO_EXPAT=1 NO_GETTEXT=1 NO_TCLTK=1 NO_PYTHON=1 \
    >"$SUITES_DIR/git/build.log" 2>&1 || die "git build failed (see $SUITES_DIR/git/build.log)"
fi

fresh_mount
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
