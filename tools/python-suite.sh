#!/usr/bin/env bash
# Runs the file-system parts of CPython's own test suite with their working and temporary
# directories on a fresh kmsfs mount: os, posix, shutil, tempfile, io/fileio (large files too),
# mmap, pathlib, glob, stat, fcntl locks, zipfile/tarfile/gzip/bz2/lzma archives, sqlite3 (where
# the test package has it) and dbm
# databases, import and py_compile (bytecode caches), mailbox, logging's file
# handlers: 31 modules of Debian's test package, extended attributes included (test_os sets
# 100 per file).
#
# The tests are Debian's (`libpython3.X-testsuite`, installed when missing and removed again at
# the end) run by the system's /usr/bin/python3.
#
# Run as root: tools/python-suite.sh [TEST ...]    (default: the list below)
# Env: KMSFS (binary; default: release build), JOBS (default: the number of CPUs), WORK_IN
#      (where the volume goes; default /var/tmp; test_largefile makes a 2.5 GB file there,
#      sparse on volumes with holes), KEEP_TESTSUITE=1 (keep the test package it installed).
# Exit status: 0 when every test passed, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=python-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}
PY=/usr/bin/python3
# Not test_compileall: two of its hard-link dedup cases fail on plain ext4 here too (as root).
# Not test_selectors: epoll accepts a regular file on every FUSE mount (the kernel's FUSE file
# operations have a poll method), where test_register_file expects EPERM.
TESTS="test_os test_posix test_shutil test_tempfile test_fileio test_io test_largefile test_mmap
test_pathlib test_glob test_stat test_fcntl test_file test_filecmp test_fileinput
test_genericpath test_posixpath test_zipfile test_tarfile test_gzip test_bz2 test_lzma
test_sqlite3 test_dbm test_dbm_dumb test_shelve test_import test_zipimport test_py_compile
test_linecache test_mailbox test_logging"

need_root "apt-get, mounting"
need_command fusermount3 fuse3
[[ -x $PY ]] || install_pkg python3
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$PY does not run"
# Installed for the run and removed again afterwards (KEEP_TESTSUITE=1 keeps it): it adds ~2,400
# files under /usr/lib/python3.X, the tree tools/bench-peers.sh times its small-file rows on.
installed=
if ! "$PY" -c 'import test.test_os' 2>/dev/null; then
  install_pkg "libpython$ver-testsuite"
  [[ -n ${KEEP_TESTSUITE:-} ]] || installed=libpython$ver-testsuite
fi

kmsfs_binary
fresh_mount
if [[ -n $installed ]]; then
  # fresh_mount's clean-up, then the package.
  trap 'cd /; unmount -z; rm -rf "$WORK"; apt-get remove -y -qq "$installed" >/dev/null 2>&1' EXIT
fi
mkdir "$MNT/tmp" "$MNT/cwd"

if (($# == 0)); then
  # Debian leaves some modules' tests out of its test package (test_sqlite3 in 3.11).
  for t in $TESTS; do
    if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("test." + sys.argv[1]) is None)' "$t" 2>/dev/null; then
      set -- "$@" "$t"
    else
      echo "(no $t in this Python's test package)"
    fi
  done
fi
echo "== $# test modules of Python $ver on a kmsfs mount ($JOBS at once)"
cd "$MNT/cwd" || die "cannot enter the mount"
# Each test in a fresh worker process, whose temporary files and working directory are on the
# mount; a test that hangs is stopped after 20 minutes.
TMPDIR=$MNT/tmp "$PY" -m test -j"$JOBS" --timeout 1200 "$@" >"$WORK/test.log" 2>&1
verdict=$?
grep -E '^(== Tests result|Tests result|Total tests|Total test files)|tests? (OK|failed)|failed \(|crashed' "$WORK/test.log" |
  sed 's/^/  /'
if ((verdict != 0)); then
  grep -E '^(FAIL|ERROR):|Error:|Traceback' -A3 "$WORK/test.log" | head -60
fi
cd /
"$KMSFS" audit "$MNT" verify | tail -1
exit $((verdict == 0 ? 0 : 1))
