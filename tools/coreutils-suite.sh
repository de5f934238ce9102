#!/usr/bin/env bash
# Builds GNU coreutils on a fresh kmsfs mount and runs its test suite there (`make check`):
# ~630 scripts that exercise cp/mv/rm/ln/touch/truncate/du/ls/dd/install/… on the file system
# under test — sparse files, hard links, permissions and ownership as other users, sticky
# directories, times, special bits, long names, rename corner cases — and the build itself
# (configure's probes, compiling and linking a few hundred files) runs on the mount too.
#
# The source is Debian's (`apt-get source coreutils`, with a deb-src entry added for the
# download and removed again), kept in $SUITES_DIR. The mount has --allow-other and a key policy
# letting every user use the default key, as the suite switches to other users.
#
# Scripts that fail on every FUSE mount or on plain ext4 here too are reported
# separately and do not count (KNOWN below, with why).
#
# Run as root: tools/coreutils-suite.sh [TEST ...]    (default: all; e.g. tests/cp/sparse.sh)
# Env: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release build),
#      JOBS (default: the number of CPUs), WORK_IN (where the volume goes; default /var/tmp),
#      MOUNT_OPTS (see tools/lib/suite.sh; with --acl and libacl1-dev installed the build has
#      ACL support and the suite's ACL scripts run instead of skipping), DAEMON_NO_DAC (see
#      tools/lib/suite.sh).
# Exit status: 0 when every other script passed or skipped, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=coreutils-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}
# Failing on any FUSE mount (checked with the same scripts on gocryptfs): tail uses polling,
# not inotify, on FUSE (coreutils counts it as a remote file system), so the two inotify
# scripts find no inotify; df-symlink wants the mount's source to be a device; chroot-credentials
# wants group names this machine may not have (it fails on plain ext4 here too).
KNOWN="tests/tail-2/inotify-dir-recreate.sh
tests/tail-2/inotify-rotate-resources.sh
tests/df/df-symlink.sh
tests/misc/chroot-credentials.sh"

need_root "apt-get, --allow-other, and the suite's tests as other users"
need_command fusermount3 fuse3
need_command gcc
need_command make
need_command perl
need_command xz xz-utils
kmsfs_binary
debian_source coreutils
fresh_mount --allow-other

build_on_mount coreutils env FORCE_UNSAFE_CONFIGURE=1 ./configure --quiet --disable-nls

echo "== make check ($JOBS at once)"
if (($# > 0)); then
  make -j"$JOBS" check SUBDIRS=. TESTS="$*" >"$WORK/check.log" 2>&1
else
  make -j"$JOBS" check >"$WORK/check.log" 2>&1
fi
failed=$(grep -E '^(FAIL|ERROR): ' "$WORK/check.log" | awk '{print $2}' | sed 's/\.sh$//; s/$/.sh/' | sort -u)
grep -E '^# (TOTAL|PASS|SKIP|XFAIL|FAIL|XPASS|ERROR):' "$WORK/check.log" | head -7
status=0
for t in $failed; do
  if grep -qxF "$t" <<<"$KNOWN"; then
    echo "failed, known (not kmsfs: see KNOWN in this script): $t"
  else
    echo "FAILED: $t"
    tail -15 "${t%.sh}.log" 2>/dev/null | sed 's/^/    /'
    status=1
  fi
done
grep -qE '^# TOTAL:' "$WORK/check.log" || { tail -20 "$WORK/check.log"; status=1; }
"$KMSFS" audit "$MNT" verify | tail -1
exit $status
