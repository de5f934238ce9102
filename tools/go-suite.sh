#!/usr/bin/env bash
# Runs the file-system tests of Go's standard library with their temporary directory (TMPDIR)
# and working directory on a fresh kmsfs mount, in both cache modes (the default writeback
# cache and --no-writeback-cache), and the same test binaries with both on the backing file
# system alone (WORK_IN: ext4 here) for comparison: os (files, directories, links, rename,
# RemoveAll, ReadDir, Chtimes, Truncate, large and sparse seeks, copy_file_range/splice in
# ReadFrom, FIFOs, fd inheritance), os/exec, io/fs, io/ioutil, path/filepath (Walk, Glob,
# EvalSymlinks), syscall (Getdents, flock, Faccessat, …), archive/tar, archive/zip (zip64
# files of several GB, sparse on volumes with holes), internal/poll and os/user.
#
# Go is Debian's (`golang-go`, installed when missing); its GOROOT/src has the tests. Each
# package's test binary is built once (`go test -c`, on $WORK_IN) and run as `go test` runs
# it, in its package's directory, here of a copy of GOROOT/src made on the file system under
# test (and given as GOROOT: testdata, the neighbouring packages and GOROOT/test some tests
# read, and sources that tests build with the go command, whose build cache is there too), as
# root, then again as nobody in a copy of its own (tests skip as root where root ignores
# permissions: read-only files, unreadable directories). So the mounts have --allow-other and
# a key policy letting every user use the default key.
#
# A test counts as failed on kmsfs when it fails there (or its binary dies) and the same test,
# as the same user, does not fail on the backing file system. Such failures that any FUSE file
# system shares are reported separately and do not count (KNOWN below, with why); a counted
# one is run again alone, and one that passes then is reported as flaky (not counted either).
#
# Run as root: tools/go-suite.sh [PACKAGE ...]    (default: the list below)
# Env: KMSFS (binary; default: release build), WORK_IN (where the volumes and the comparison
#      run go; default /var/tmp), SUITES_DIR (the build cache of the test binaries is kept in
#      $SUITES_DIR/go-cache; default ~/.cache/kmsfs-suites), MOUNT_OPTS and DAEMON_NO_DAC (see
#      tools/lib/suite.sh), KEEP_LOGS=DIR (copy every test log there).
# Exit status: 0 when no other test failed, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SUITE=go-suite
. tools/lib/suite.sh
# Output cut short (`| head`) must not end the script before its cleanup has unmounted.
trap '' PIPE

PACKAGES="os os/exec io/fs io/ioutil path/filepath syscall archive/tar archive/zip internal/poll
os/user"
# Failing on every FUSE mount (checked with gocryptfs 2.3 and bindfs 1.14.7), as PACKAGE.TEST:
# os.TestNonpollableDeadline wants SetDeadline on a regular file to fail with ErrNoDeadline,
# which Go decides by epoll_ctl refusing the file (EPERM, as ext4's files are refused); the
# kernel's FUSE file operations have a poll method, so epoll accepts every FUSE file (the same
# as CPython's test_selectors, left out of tools/python-suite.sh).
KNOWN="os.TestNonpollableDeadline"

need_root "apt-get, mounting with --allow-other, and the tests as nobody"
need_command fusermount3 fuse3
need_command setpriv util-linux
need_command go golang-go
id nobody >/dev/null 2>&1 || die "no user nobody"
kmsfs_binary
# shellcheck disable=SC2086 # a list, split on purpose
(($# > 0)) || set -- $PACKAGES
GOROOT=$(go env GOROOT) || die "go env GOROOT failed"
[[ -f $GOROOT/src/os/os_test.go ]] || die "no tests in $GOROOT/src"
export GOCACHE=$SUITES_DIR/go-cache
GO_VERSION=$(go env GOVERSION)

# Test binaries, logs and the comparison run's directories, removed at exit (with the mount).
SCRATCH=$(mktemp -d "$WORK_IN/kmsfs-$SUITE-run.XXXXXX") || die "mktemp in $WORK_IN failed"
chmod 755 "$SCRATCH"
cleanup() {
  cd / || return
  [[ -n ${MNT:-} ]] && unmount -z
  rm -rf "${WORK:-}" "$SCRATCH"
}
trap cleanup EXIT
mkdir "$SCRATCH/bin" "$SCRATCH/logs"

started=$SECONDS
echo "== building the test binaries of $# packages ($GO_VERSION)"
for p in "$@"; do
  [[ -d $GOROOT/src/$p ]] || die "no package $p in $GOROOT/src"
  go test -c -o "$SCRATCH/bin/${p//\//_}.test" "$p" >"$SCRATCH/logs/build.log" 2>&1 ||
    { tail -20 "$SCRATCH/logs/build.log"; die "go test -c $p failed"; }
done

# Runs COMMAND as WHO (root or nobody).
as() { # WHO COMMAND...
  if [[ $1 == nobody ]]; then
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- "${@:2}"
  else
    "${@:2}"
  fi
}

# Runs PACKAGE's test binary with ARGS as WHO, as `go test` runs it: in the package's directory
# of the Go tree copied to DIR (DIR/goroot, given as GOROOT, so that tests building programs
# from their own directory may import its internal packages), TMPDIR, HOME and GOCACHE in DIR
# too, and no descriptors but 0-2 inherited (os/exec's TestExtraFiles skips itself otherwise).
run_binary() { # DIR WHO PACKAGE ARGS...
  local dir=$1 who=$2 p=$3 fd
  shift 3
  (
    cd "$dir/goroot/src/$p" || exit 2
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done
    as "$who" env GOROOT="$dir/goroot" HOME="$dir/home" GOCACHE="$dir/home/go-cache" \
      TMPDIR="$dir/tmp" timeout 1200 "$PWD/${p//\//_}.test" -test.timeout=15m "$@"
  )
}

# Runs every package's tests in DIR/WHO as WHO (root or nobody), one line per test or subtest
# ("PACKAGE<tab>WHO<tab>PASS|FAIL|SKIP<tab>NAME") into $SCRATCH/logs/WHERE.results, and a
# line "PACKAGE WHO FAIL (exit N)" when a binary failed without a failed test (a crash, a
# timeout).
run_tests() { # WHERE DIR WHO PACKAGE...
  local where=$1 dir=$2/$3 who=$3 p name log status d
  shift 3
  mkdir -p "$dir/tmp" "$dir/home" "$dir/goroot" || die "cannot make $dir"
  # The Go tree's sources and test/ (path/filepath's TestBug3486 walks it): ~140 MB, ~11,000
  # files; its tools and compiled packages linked.
  for d in src test; do
    cp -r "$(realpath "$GOROOT/$d")" "$dir/goroot/$d" || die "cannot copy $GOROOT/$d to $where"
  done
  for d in bin pkg misc api; do
    [[ -e $GOROOT/$d ]] && ln -s "$(realpath "$GOROOT/$d")" "$dir/goroot/$d"
  done
  cp "$GOROOT/VERSION" "$dir/goroot/" 2>/dev/null
  for p in "$@"; do
    name=${p//\//_}
    log=$SCRATCH/logs/$where-$who-$name.log
    install -m 0755 "$SCRATCH/bin/$name.test" "$dir/goroot/src/$p/$name.test"
  done
  [[ $who == nobody ]] && chown -R nobody:nogroup "$dir"
  for p in "$@"; do
    name=${p//\//_}
    log=$SCRATCH/logs/$where-$who-$name.log
    run_binary "$dir" "$who" "$p" -test.v -test.paniconexit0 >"$log" 2>&1
    status=$?
    sed -nE 's/^ *--- (PASS|FAIL|SKIP): ([^ ]+) .*/\1\t\2/p' "$log" |
      sed "s|^|$p\t$who\t|" >>"$SCRATCH/logs/$where.results"
    if ((status != 0)) && ! grep -q -- '--- FAIL:' "$log"; then
      printf '%s\t%s\tFAIL\t(exit %d)\n' "$p" "$who" "$status" >>"$SCRATCH/logs/$where.results"
    fi
  done
}

# Counts as "pass/fail/skip" (tests and subtests) of PACKAGE run by WHO in WHERE.
counts() { # WHERE PACKAGE WHO
  awk -F'\t' -v p="$2" -v w="$3" '$1 == p && $2 == w {n[$3]++}
    END {printf "%d/%d/%d", n["PASS"], n["FAIL"], n["SKIP"]}' "$SCRATCH/logs/$1.results"
}

run_both() { # WHERE DIR PACKAGE...
  local where=$1 dir=$2 t0=$SECONDS
  shift 2
  : >"$SCRATCH/logs/$where.results"
  run_tests "$where" "$dir" root "$@"
  run_tests "$where" "$dir" nobody "$@"
  echo "   $where: $((SECONDS - t0)) s"
}

fstype=$(findmnt -n -o FSTYPE -T "$WORK_IN") || fstype=$(stat -f -c %T "$WORK_IN")
echo "== the tests on $WORK_IN ($fstype), for comparison"
run_both base "$SCRATCH/base" "$@"

status=0
failures=
for mode in default no-writeback-cache; do
  opts=()
  [[ $mode == no-writeback-cache ]] && opts=(--no-writeback-cache)
  echo "== the tests on a fresh kmsfs mount (--allow-other${opts[*]:+ ${opts[*]}})"
  fresh_mount --allow-other "${opts[@]}"
  trap cleanup EXIT
  run_both "$mode" "$MNT" "$@"
  # Failed here (top-level tests: a failed subtest fails its parent), and not on the backing
  # file system by the same user.
  while IFS=$'\t' read -r p who _ name; do
    if awk -F'\t' -v p="$p" -v w="$who" -v n="$name" \
      '$1 == p && $2 == w && $4 == n && $3 == "FAIL" {f = 1} END {exit !f}' \
      "$SCRATCH/logs/base.results"; then
      echo "   failed, on $fstype too (not counted): $p $name ($who)"
      continue
    fi
    if grep -qxF "$p.$name" <<<"$KNOWN"; then
      echo "   failed, known (any FUSE mount: see KNOWN in this script): $p $name ($who)"
    elif [[ $name != "(exit"* ]] &&
      run_binary "$MNT/$who" "$who" "$p" -test.run "^$name\$" >/dev/null 2>&1; then
      echo "   flaky (failed, then passed alone): $p $name ($who)"
    else
      echo "   FAILED: $p $name ($who)"
      failures+="$mode $p $who $name"$'\n'
      log=$SCRATCH/logs/$mode-$who-${p//\//_}.log
      awk -v n="$name" '$0 == "=== RUN   " n {p = 1} p {print} index($0, "--- FAIL: " n " ") == 1 {exit}' \
        "$log" | head -30 | sed 's/^/      /'
      status=1
    fi
  done < <(awk -F'\t' '$3 == "FAIL" && $4 !~ /\//' "$SCRATCH/logs/$mode.results" | sort -u)
  cd / || exit 2
  "$KMSFS" audit "$MNT" verify | tail -1 | sed 's/^/   /'
  # shellcheck disable=SC2119 # no fusermount3 flags
  unmount
  if out=$("$KMSFS" fsck --passfile "$WORK/pass" "$WORK/cipher" 2>&1); then
    echo "   fsck clean"
  else
    echo "   FAILED: fsck after the $mode run"
    printf '%s\n' "$out" | tail -5 | sed 's/^/      /'
    status=1
  fi
  rm -rf "$WORK"
  WORK='' MNT=''
done

echo "== pass/fail/skip (tests and subtests) as root | as nobody"
printf '  %-14s %-21s %-21s %-21s\n' package "$fstype" kmsfs kmsfs-no-writeback
for p in "$@"; do
  printf '  %-14s' "$p"
  for where in base default no-writeback-cache; do
    printf ' %-21s' "$(counts "$where" "$p" root) | $(counts "$where" "$p" nobody)"
  done
  echo
done
if [[ -n ${KEEP_LOGS:-} ]]; then
  mkdir -p "$KEEP_LOGS" && cp "$SCRATCH"/logs/* "$KEEP_LOGS"/ && echo "(logs in $KEEP_LOGS)"
fi
if ((status == 0)); then
  echo "== no failures that $fstype does not have ($((SECONDS - started)) s)"
else
  echo "== failures that $fstype does not have ($((SECONDS - started)) s):"
  printf '%s' "$failures" | sed 's/^/  /'
fi
exit $status
