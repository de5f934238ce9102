#!/usr/bin/env bash
# Runs the file-I/O part of SQLite's own TCL test suite (testfixture) with its databases on a
# fresh kmsfs mount, once with the default writeback cache and once with --no-writeback-cache,
# and the same test files on the plain backing file system (ext4 here) beside it, and counts
# only the failures the backing file system does not share.
#
# The test files (DEFAULT_TESTS below, 134 of test/*.test): WAL (wal*, e_wal*, walcrash4,
# walfault2), locking (lock*, nolock, unixexcl, superlock, sharedlock, exclusive*), mmap
# (mmap*), journal and pager (journal*, pager*, pageropt, rollback*, atomic*, savepoint*,
# filefmt, zerodamage), sync*, shared cache (shared*), multiplex and temporary files
# (multiplex*, tempdb*, temptable*, 8_3_names), truncate and vacuum (vacuum*, e_vacuum,
# incrvacuum*, autovacuum*, fallocate, bigfile*), io*/ioerr*, crash* (crashes simulated inside
# a test VFS over the real files), backup*, delete_db, symlink*, oserror, rdonly, nockpt,
# diskfull, uri*, syscall. Left out for time (10 s to minutes each on ext4 here, about 6 times
# that on a mount): savepoint4/6, savepointfault, backup_ioerr, backup_malloc, pagerfault*,
# tempfault, shared_err, vacuum3/6, vacuummem, temptable2, crash, crash3/4/7, walcrash/2/3,
# walfault, walslow, incrvacuum_ioerr. Pass any of them as arguments to run them.
#
# SQLite's source is Debian's (`apt-get source sqlite3`, with a deb-src entry added for the
# download and removed again); testfixture is built once (./configure && make testfixture,
# out of tree) and kept in $SUITES_DIR. Upstream's Makefile builds testfixture with
# -DSQLITE_NO_SYNC=1: its tests make no fsync calls (sync.test counts them in the VFS); SYNC=1
# runs a second testfixture built without it, so that they do.
#
# Each test file runs in a directory of its own (testfixture's working directory; tester.tcl
# makes ./testdir there and puts test.db and every other file in it; SQLITE_TMPDIR points
# there too, so that SQLite's temporary files, which it unlinks at once, are on the file system
# under test rather than in /var/tmp), JOBS files at once, each under a time limit, as RUN_AS
# (default nobody: as root, tests that make a file or directory read-only and expect SQLite to
# be refused fail on any file system; the mounts have --allow-other and a key policy letting
# every user use the default key). A test case counts as a difference when it fails (or its
# file dies or times out) on kmsfs and not on the backing file system; a file with a difference
# is run again by itself, on the same mount, and the difference is reported as steady or as
# not repeated.
#
# Results (2026-12-07, SQLite 3.40.1 from Debian 12, kmsfs-s32, 2 CPUs, the volumes on this
# VM's root ext4): the 134 default files, 24,317 test cases, pass on ext4 and on kmsfs in both
# cache modes, as nobody, with and without SYNC=1 (13.5 min for the three runs, 20 min with
# SYNC=1). `veryquick` (1,109 files, 253,791 cases; fts5, rtree and session are not built
# into testfixture, so their 134 ext/ files run a few cases each; 6 files skip themselves):
# no failure on ext4 or kmsfs in either cache mode (17 min for ext4 and --no-writeback-cache).
#
# Run as root: tools/sqlite-suite.sh [TEST ...]   (default: DEFAULT_TESTS; names of files in
#   SQLite's test/ directory, with or without .test, globs allowed: e.g. 'wal*' lock2 pager1;
#   `veryquick` or `quick` for every file of that permutation of permutations.test, 1,109 and
#   1,216 files in 3.40.1, each in a testfixture of its own as the others)
# Env: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release build),
#      JOBS (test files at once; default: the number of CPUs), WORK_IN (where the volumes and
#      the baseline directory go; default /var/tmp: the baseline runs on that file system),
#      TEST_TIMEOUT (seconds per test file; default 900), MODES (default
#      "ext4 writeback nowriteback"; "ext4" is the baseline, whatever WORK_IN's file system is),
#      RUN_AS (user running testfixture; default nobody, or root), SYNC (1: a testfixture built
#      without SQLITE_NO_SYNC, whose fsync and fdatasync calls reach the file system, built
#      once beside the other), MOUNT_OPTS (see tools/lib/suite.sh).
# Exit status: 0 when kmsfs failed nothing the baseline passed, 1 otherwise, 2 when the setup
# failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SUITE=sqlite-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
MODES=${MODES:-ext4 writeback nowriteback}
RUN_AS=${RUN_AS:-nobody}
SYNC=${SYNC:-0}
DEFAULT_TESTS='
  wal wal2 wal3 wal4 wal5 wal6 wal64k wal7 wal8 wal9 walbak walbig walblock walcksum walcrash4
  walfault2 walhook walmode walnoshm waloverwrite walpersist walprotocol walprotocol2 walro
  walro2 walrofault walsetlk walshared walthread walvfs e_wal e_walauto e_walckpt e_walhook
  lock lock2 lock3 lock4 lock5 lock6 lock7 nolock unixexcl superlock sharedlock exclusive
  exclusive2
  mmap1 mmap2 mmap3 mmap4 mmapfault mmapwarm
  journal1 journal2 journal3 pager1 pager2 pager3 pager4 pageropt rollback rollback2
  rollbackfault atomic atomic2 savepoint savepoint2 savepoint5 savepoint7 filefmt zerodamage
  sync sync2
  shared shared2 shared3 shared4 shared6 shared7 shared8 shared9 sharedA sharedB
  multiplex multiplex2 multiplex3 multiplex4 tempdb tempdb2 temptable temptable3 8_3_names
  vacuum vacuum2 vacuum4 vacuum5 vacuum-into e_vacuum incrvacuum incrvacuum2 incrvacuum3
  autovacuum autovacuum2 autovacuum_ioerr2 fallocate bigfile bigfile2
  io ioerr ioerr2 ioerr3 ioerr4 ioerr5 ioerr6
  crash2 crash5 crash6 crash8 crashM
  backup backup2 backup4 backup5 delete_db symlink symlink2 oserror rdonly nockpt diskfull
  uri uri2 syscall'

need_root "apt-get, mounting, --allow-other and running the tests as RUN_AS"
need_command setpriv util-linux
need_command fusermount3 fuse3
need_command gcc
need_command make
need_command tclsh tcl
[[ -e /usr/lib/tcl8.6/tclConfig.sh || -e /usr/lib/x86_64-linux-gnu/tcl8.6/tclConfig.sh ]] ||
  install_pkg tcl-dev
[[ -e /usr/include/zlib.h ]] || install_pkg zlib1g-dev
kmsfs_binary

# SQLite's source and testfixture, once.
SQ=$SUITES_DIR/sqlite3
SQ_SRC=$(find "$SQ" -maxdepth 1 -type d -name 'sqlite3-*' 2>/dev/null | head -1)
if [[ -z $SQ_SRC || ! -x $SQ/build/testfixture ]]; then
  if [[ -z $SQ_SRC ]]; then
    debian_source sqlite3
    tar -xf "$ORIG" -C "$SQ" || die "cannot unpack $ORIG"
    SQ_SRC=$(find "$SQ" -maxdepth 1 -type d -name 'sqlite3-*' | head -1)
    [[ -n $SQ_SRC ]] || die "no sqlite3-* directory in $ORIG"
  fi
  echo "== building $(basename "$SQ_SRC")'s testfixture"
  tcl_dir=$(dirname "$(find /usr/lib -maxdepth 3 -name tclConfig.sh | head -1)")
  mkdir -p "$SQ/build"
  (cd "$SQ/build" && "$SQ_SRC/configure" --with-tcl="$tcl_dir" >configure.log 2>&1 &&
    make -j"$JOBS" testfixture >build.log 2>&1) ||
    die "testfixture build failed (see $SQ/build/configure.log and build.log)"
fi
TF=$SQ/build/testfixture
if ((SYNC)); then
  # The same testfixture without -DSQLITE_NO_SYNC=1 (upstream's Makefile adds it to the
  # testfixture rule alone): SQLite's fsync and fdatasync calls then reach the file system.
  TF=$SQ/build/testfixture-sync
  if [[ ! -x $TF ]]; then
    echo "== building testfixture-sync (without SQLITE_NO_SYNC)"
    (cd "$SQ/build" && sed 's/-DSQLITE_NO_SYNC=1 //' Makefile >Makefile.sync &&
      make -f Makefile.sync testfixture-sync TEXE=-sync >build-sync.log 2>&1) ||
      die "testfixture-sync build failed (see $SQ/build/build-sync.log)"
  fi
fi
TESTS_DIR=$SQ_SRC/test
id "$RUN_AS" >/dev/null 2>&1 || die "RUN_AS=$RUN_AS: no such user"

# Runs COMMAND as RUN_AS.
as_user() { # COMMAND...
  if [[ $RUN_AS == root ]]; then
    "$@"
  else
    setpriv --reuid="$RUN_AS" --regid="$(id -g "$RUN_AS")" --clear-groups -- "$@"
  fi
}

BASE=$(mktemp -d "$WORK_IN/kmsfs-$SUITE-base.XXXXXX") || die "mktemp in $WORK_IN failed"
chmod 755 "$BASE"
trap 'cd /; rm -rf "$BASE"' EXIT
# testfixture and the test scripts where RUN_AS reaches them ($SUITES_DIR may be in root's home).
if ! as_user test -x "$TF" -a -r "$TESTS_DIR/tester.tcl"; then
  if ! { mkdir "$BASE/sqlite" && cp "$TF" "$BASE/sqlite/testfixture" &&
    cp -r "$SQ_SRC/test" "$SQ_SRC/ext" "$BASE/sqlite/"; }; then
    die "cannot copy testfixture and the test scripts to $BASE"
  fi
  TF=$BASE/sqlite/testfixture
  TESTS_DIR=$BASE/sqlite/test
fi

# Prints the files of permutations.test's test suite NAME (veryquick, quick), one a line, as
# absolute paths (some are in ext/*/test; a few listed there are not in the tree: left out).
suite_files() { # NAME
  local dir
  dir=$(mktemp -d "$WORK_IN/kmsfs-$SUITE-list.XXXXXX") || die "mktemp in $WORK_IN failed"
  # permutations.test runs its command line unless it is sourced from another script.
  # shellcheck disable=SC2016 # Tcl's variables
  printf '%s\n' "set ::argv0 {$TESTS_DIR/list.tcl}" 'set ::argv {}' \
    "source {$TESTS_DIR/permutations.test}" 'array set O $::testspec($::env(SUITE_NAME))' \
    'foreach f $O(-files) { puts "== [file normalize [file join $::testdir $f]]" }' 'exit 0' \
    >"$dir/list.tcl"
  (cd "$dir" && SUITE_NAME=$1 "$TF" "$dir/list.tcl" </dev/null 2>&1) | sed -n 's/^== //p' |
    while read -r f; do [[ -e $f ]] && echo "$f"; done
  rm -rf "$dir"
}

# The test files, as absolute paths.
# shellcheck disable=SC2086 # one word per test
(($# > 0)) || set -- $DEFAULT_TESTS
files=()
for t in "$@"; do
  if [[ $t == veryquick || $t == quick ]]; then
    mapfile -t -O "${#files[@]}" files < <(suite_files "$t")
    continue
  fi
  t=${t%.test}
  # shellcheck disable=SC2206 # the glob is meant to expand here
  matched=("$TESTS_DIR"/$t.test)
  [[ -e ${matched[0]} ]] || die "no test file $t.test in $TESTS_DIR"
  files+=("${matched[@]}")
done
mapfile -t files < <(printf '%s\n' "${files[@]}" | awk '!seen[$0]++')
echo "== $(basename "$SQ_SRC"): ${#files[@]} test files, $JOBS at once, up to ${TEST_TIMEOUT}s each"

# Runs one test file in RUNDIR/NAME and appends "NAME STATUS SECONDS TESTS FAILED_CASES..." to
# RUNDIR/results: STATUS is ok, failed (with the failing cases), skipped (exit status 0 without
# a summary line: scripts that return early where a feature or the platform is missing), or
# died (no summary line: a crash, a Tcl error or the time limit; "died:RC"); TESTS is the
# number of test cases run.
# shellcheck disable=SC2317 # called through xargs and bash -c
run_one() { # RUNDIR TESTFILE
  local dir=$1 file=$2 name start status rc cases ntests
  name=$(basename "$file" .test)
  mkdir -p "$dir/$name/testdir" && cd "$dir/$name" || return
  start=$SECONDS
  SQLITE_TMPDIR=$PWD/testdir timeout -k 10 "$TEST_TIMEOUT" "$TF" "$file" </dev/null >out.txt 2>&1
  rc=$?
  cases=$(sed -n 's/^!Failures on these tests: //p' out.txt | tail -1)
  ntests=$(sed -nE 's/^[0-9]+ errors out of ([0-9]+) tests.*/\1/p' out.txt | tail -1)
  if [[ -z $ntests ]]; then
    ntests=0
    status=died:$rc
    ((rc == 0)) && status=skipped
  elif [[ -n $cases ]]; then
    status=failed
  else
    status=ok
  fi
  echo "$name $status $((SECONDS - start)) $ntests $cases" >>"$dir/results"
}
export -f run_one
export TF TEST_TIMEOUT

# A directory RUN_AS may write in.
user_dir() { # DIR
  if ! { mkdir -p "$1" && chown "$RUN_AS:$(id -g "$RUN_AS")" "$1"; }; then
    die "cannot make $1 for $RUN_AS"
  fi
  as_user touch "$1/results"
}

run_all() { # RUNDIR
  user_dir "$1"
  # shellcheck disable=SC2016 # expanded by the inner bash
  printf '%s\n' "${files[@]}" | as_user xargs -P "$JOBS" -I{} bash -c 'run_one "$1" "$2"' _ "$1" {}
  sort -o "$1/results" "$1/results"
}

summary() { # RESULTS
  awk '{ n++; s[$2 ~ /^died/ ? "died" : $2]++; t += $3; k += $4; if ($2 == "failed") c += NF - 4 }
    END { printf "%d files (%d test cases), %d ok, %d with failures (%d cases), %d died, %d skipped; %d s of test time\n",
      n, k, s["ok"], s["failed"], c, s["died"], s["skipped"], t }' "$1"
}

# Prints the failing units of RESULTS, one a line: "NAME:CASE" for a failed case, "NAME:died"
# for a file without a summary.
failures() { # RESULTS
  awk '$2 == "failed" { for (i = 5; i <= NF; i++) print $1 ":" $i }
    $2 ~ /^died/ { print $1 ":died" }' "$1" | sort -u
}

status=0
start_all=$SECONDS
declare -A RESULTS
for mode in $MODES; do
  case $mode in
    ext4)
      echo "== baseline: $(findmnt -no FSTYPE -T "$BASE") at $BASE"
      run_all "$BASE/run"
      RESULTS[ext4]=$BASE/ext4.results
      cp "$BASE/run/results" "${RESULTS[ext4]}"
      ;;
    writeback | nowriteback)
      opts=(--allow-other)
      [[ $mode == nowriteback ]] && opts+=(--no-writeback-cache)
      fresh_mount "${opts[@]}"
      # Cleans this mount and the baseline at exit (fresh_mount's trap knows only the former).
      trap 'cd /; unmount -z; rm -rf "$WORK" "$BASE"' EXIT
      echo "== kmsfs ${opts[*]} at $MNT"
      run_all "$MNT/run"
      RESULTS[$mode]=$BASE/$mode.results
      cp "$MNT/run/results" "${RESULTS[$mode]}"
      ;;
    *) die "MODES: ext4, writeback or nowriteback, not $mode" ;;
  esac
  echo "   $(summary "${RESULTS[$mode]}") ($((SECONDS - start_all)) s so far)"
  if [[ $mode != ext4 && -n ${RESULTS[ext4]:-} ]]; then
    new=$(comm -23 <(failures "${RESULTS[$mode]}") <(failures "${RESULTS[ext4]}"))
    shared=$(comm -12 <(failures "${RESULTS[$mode]}") <(failures "${RESULTS[ext4]}"))
    [[ -n $shared ]] && echo "   failing on the baseline too (not counted): $(tr '\n' ' ' <<<"$shared")"
    if [[ -n $new ]]; then
      # Each file with a difference again, alone, on the same mount.
      while read -r name; do
        user_dir "$MNT/rerun"
        # shellcheck disable=SC2016 # expanded by the inner bash
        as_user bash -c 'run_one "$1" "$2"' _ "$MNT/rerun" \
          "$(printf '%s\n' "${files[@]}" | grep -m1 "/$name\.test$")"
        again=$(failures "$MNT/rerun/results" | grep "^$name:")
        while read -r unit; do
          if grep -qxF "$unit" <<<"$again"; then
            echo "   FAILED on kmsfs ($mode), passed on the baseline, again on a rerun: $unit"
          else
            echo "   FAILED on kmsfs ($mode), passed on the baseline, not on a rerun: $unit"
          fi
          case=${unit#*:}
          if [[ $case == died ]]; then
            tail -5 "$MNT/run/$name/out.txt" | sed 's/^/      /'
          else
            grep -F -A4 -- "$case..." "$MNT/run/$name/out.txt" | head -6 | sed 's/^/      /'
          fi
        done < <(grep "^$name:" <<<"$new")
      done < <(cut -d: -f1 <<<"$new" | sort -u)
      status=1
    fi
  fi
  if [[ $mode != ext4 ]]; then
    (cd / && "$KMSFS" audit "$MNT" verify | tail -1)
    # shellcheck disable=SC2119 # no fusermount3 flags
    cd / && unmount && rm -rf "$WORK"
  fi
done
echo "== done in $((SECONDS - start_all)) s"
exit $status
