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
#      /var/tmp), MOUNT_OPTS and DAEMON_NO_DAC (see tools/lib/suite.sh).
# Exit status: 0 when every script passed or skipped, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=rsync-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}

need_root "apt-get, mounting"
need_command fusermount3 fuse3
need_command gcc
need_command make
need_command perl
kmsfs_binary
debian_source rsync
fresh_mount

build_on_mount rsync ./configure --disable-xxhash --disable-zstd --disable-lz4 --disable-openssl \
  --disable-md2man

echo "== make check"
make check >"$WORK/check.log" 2>&1
verdict=$?
grep -E '^(PASS|FAIL|SKIP|ERROR)|passed|failed|skipped' "$WORK/check.log" | grep -v '^PASS' | sed 's/^/  /'
cd /
"$KMSFS" audit "$MNT" verify | tail -1
exit $((verdict == 0 ? 0 : 1))
