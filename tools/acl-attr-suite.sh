#!/usr/bin/env bash
# Builds Debian's acl (2.3.x) and attr (2.5.x) on fresh kmsfs mounts and runs their own test
# suites there: acl's test/*.test, test/root/*.test and test/nfs/*.test (setfacl/getfacl/chacl
# output for access and default ACLs, mask recalculation, inheritance, --restore of malformed
# and setuid/setgid dumps, recursive and symlink walks, long and UTF-8 names, and, as root,
# the kernel's enforcement of ACL entries as users bin and daemon, on files, directories,
# devices and FIFOs), and attr's test/attr.test and test/root/getfattr.test (setfattr/getfattr
# name and value limits, user./trusted. namespaces, symlinks with and without -h, recursive
# walks). Each suite's scripts compare every command's output with the expected text, one
# "[LINE] $ command -- ok|failed" per command.
#
# Both suites run three times: on a plain directory in $WORK_IN (ext4 on the machines this
# project uses: the baseline), on a kmsfs mount in the default cache mode, and on one with
# --no-writeback-cache. Each time as root (`make check`: every test; the test/root/ ones switch
# to bin and daemon, looked up in the suite's own passwd file through its LD_PRELOAD library)
# and again as nobody (the tests not under test/root/, which do not need root). A command
# counts as failed on kmsfs only when the same command (test file and line) did not fail in
# the baseline too: some fail everywhere for reasons of the machine (test/root/permissions.test
# reads the real /etc/group for su's supplementary groups, and runs `shopt` in /bin/sh, dash
# on Debian), and acl's test/nfs/*.test are expected failures upstream.
#
# The mounts have --acl, --allow-other and a key policy letting every user use the default key
# (the suite acts as bin, daemon and nobody), and -o dev: test/root/permissions.test opens
# device nodes that an ACL entry lets user bin open, expecting ENXIO from the device (the
# access check passed); fusermount3's default nodev would give EACCES instead, on any FUSE
# file system. The builds (configure, compiling, linking) run on the mounts too.
#
# The sources are Debian's (`apt-get source acl attr`, with a deb-src entry added for the
# download and removed again), kept in $SUITES_DIR; acl's build needs libattr1-dev (installed
# when missing).
#
# Run as root: tools/acl-attr-suite.sh [TEST ...]   (default: all; e.g. test/misc.test
#              test/root/permissions.test test/attr.test: each goes to the package having it)
# Env: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release build),
#      JOBS (default: the number of CPUs), WORK_IN (where the volumes and the baseline go;
#      default /var/tmp), MOUNT_OPTS (see tools/lib/suite.sh), DAEMON_NO_DAC (see
#      tools/lib/suite.sh), KEEP_RESULTS=DIR (copies every log there).
# Exit status: 0 when no command failed on kmsfs that passed on the baseline, 1 otherwise,
# 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SUITE=acl-attr-suite
. tools/lib/suite.sh

JOBS=${JOBS:-$(nproc)}
start=$SECONDS

need_root "mounting with --allow-other and -o dev, and the suites' tests as bin, daemon and nobody"
need_command fusermount3 fuse3
need_command gcc
need_command make
need_command perl
need_command xz xz-utils
need_command setpriv util-linux
[[ -e /usr/include/attr/error_context.h ]] || install_pkg libattr1-dev
kmsfs_binary
debian_source acl
ACL_ORIG=$ORIG
debian_source attr
ATTR_ORIG=$ORIG

TOP=$(mktemp -d "$WORK_IN/kmsfs-$SUITE.XXXXXX") || die "mktemp in $WORK_IN failed"
chmod 755 "$TOP"
trap 'cd /; rm -rf "$TOP"' EXIT
RES=$TOP/results

# The TESTS of the package built in the current directory, or those of the arguments it has.
tests_of() {
  local all t
  # shellcheck disable=SC2016 # a make variable, for make
  all=$(printf 'print-tests:\n\t@echo $(TESTS)\n' | make -s -f Makefile -f - print-tests) ||
    die "cannot list the tests of $PWD"
  (($# == 0)) && { echo "$all"; return; }
  for t in "$@"; do
    [[ " $all " == *" $t "* ]] && printf '%s ' "$t"
  done
  echo
}

# Builds ORIG (NAME-*) in DIR, runs its tests there as root and as nobody, and leaves each
# test's output in OUT/NAME/{root,nobody}/TEST.log (TEST's slashes as '_').
run_package() { # ORIG NAME DIR OUT [TEST ...]
  local orig=$1 name=$2 dir=$3 out=$4 src tests t log
  shift 4
  mkdir -p "$out/$name/root" "$out/$name/nobody"
  # Root's, not the tarball's uid 1000: a DAEMON_NO_DAC daemon could not write in that uid's
  # directories.
  tar --no-same-owner -xf "$orig" -C "$dir" || die "cannot unpack $orig in $dir"
  src=$(find "$dir" -maxdepth 1 -type d -name "$name-*" | head -1)
  [[ -n $src ]] || die "no $name-* directory in $orig"
  cd "$src" || die "cannot enter $src"
  { ./configure --quiet --disable-nls && make -j"$JOBS"; } >"$out/$name/build.log" 2>&1 ||
    { tail -20 "$out/$name/build.log"; die "building $name in $dir failed"; }
  tests=$(tests_of "$@")
  [[ -n ${tests// /} ]] || return 0
  # shellcheck disable=SC2086 # a list of test files
  make -j"$JOBS" check TESTS="$tests" >"$out/$name/check.log" 2>&1
  for t in $tests; do
    log=${t%.test}.log
    if [[ -e $log ]]; then cp "$log" "$out/$name/root/${t//\//_}.log"; fi
  done
  chmod o+w test test/nfs 2>/dev/null
  for t in $tests; do
    [[ $t == test/root/* ]] && continue
    local wrapper=test/run
    [[ -x test/runwrapper ]] && wrapper=test/runwrapper
    setpriv --reuid=nobody --regid=nogroup --clear-groups \
      env srcdir=. PATH="$PWD:$PATH" "$wrapper" "$t" >"$out/$name/nobody/${t//\//_}.log" 2>&1
  done
  cd / || die "cannot leave $src"
}

run_both() { # DIR OUT [TEST ...]
  local dir=$1 out=$2
  shift 2
  run_package "$ACL_ORIG" acl "$dir" "$out" "$@"
  run_package "$ATTR_ORIG" attr "$dir" "$out" "$@"
}

echo "== baseline: $WORK_IN ($(findmnt -no FSTYPE -T "$TOP" 2>/dev/null || echo '?'))"
mkdir "$TOP/base" || die "cannot make $TOP/base"
chmod 755 "$TOP/base"
run_both "$TOP/base" "$RES/base" "$@"
rm -rf "$TOP/base"

MODES=(default no-writeback-cache)
for mode in "${MODES[@]}"; do
  echo "== kmsfs, cache mode: $mode"
  opts=(--allow-other --acl -o dev)
  [[ $mode == no-writeback-cache ]] && opts+=(--no-writeback-cache)
  # A subshell per mount: fresh_mount's EXIT trap unmounts it and removes its volume.
  (
    fresh_mount "${opts[@]}"
    run_both "$MNT" "$RES/$mode" "$@"
    "$KMSFS" audit "$MNT" verify | tail -1
  ) || die "the $mode run failed"
done

# "PKG WHO TEST:LINE" for each failed command of a run, and "PKG WHO TEST:unfinished" for a
# test whose log has no "N commands (...)" summary (it died, or never ran).
failures() { # RUNDIR
  local log rel
  while IFS= read -r log; do
    rel=${log#"$1"/}
    awk -v id="$(cut -d/ -f1,2 <<<"$rel" | tr / ' ') $(basename "$log" .log | tr _ /)" '
      /^\[[0-9]+\] \$ .* -- failed$/ { l = $1; gsub(/[][]/, "", l); print id ":" l }
      /^[0-9]+ commands \([0-9]+ passed, [0-9]+ failed\)$/ { done = 1 }
      END { if (!done) print id ":unfinished" }' "$log"
  done < <(find "$1" -path '*/root/*.log' -o -path '*/nobody/*.log' | sort)
}

# "PKG WHO: T tests, C commands, F failed" for a run.
counts() { # RUNDIR
  local pkg who
  for pkg in acl attr; do
    for who in root nobody; do
      cat "$1/$pkg/$who"/*.log 2>/dev/null | awk -v id="$pkg $who" '
        /^[0-9]+ commands \(/ { t++; c += $1; f += $5 }
        END { printf "%s: %d tests, %d commands, %d failed\n", id, t, c, f }'
    done
    # automake's own summary of the root run (a test fails when any of its commands does).
    grep -E '^# (PASS|SKIP|XFAIL|FAIL|XPASS|ERROR):' "$1/$pkg/check.log" 2>/dev/null |
      tr -d '#' | awk -v id="$pkg" '{ s = s (s ? ", " : "") $1 " " $2 }
        END { if (s) print id " make check (tests, as root): " s }'
  done
}

# The output of a failed command (PKG WHO TEST:LINE) in RUNDIR, as the suite printed it.
show() { # RUNDIR KEY
  local pkg who test line log
  read -r pkg who test <<<"$2"
  line=${test##*:}
  test=${test%:*}
  log=$1/$pkg/$who/${test//\//_}.log
  [[ $line == unfinished ]] && { tail -5 "$log" 2>/dev/null | sed 's/^/      /'; return; }
  awk -v l="[$line]" '$1 == l { p = 1; print; next } p && /^\[[0-9]+\] \$ / { exit } p' "$log" |
    sed 's/^/      /'
}

echo "== results (commands failing on kmsfs count only where the baseline passed them)"
echo "baseline:"
counts "$RES/base" | sed 's/^/  /'
failures "$RES/base" | sort >"$TOP/fail.base"
status=0
for mode in "${MODES[@]}"; do
  echo "kmsfs, $mode:"
  counts "$RES/$mode" | sed 's/^/  /'
  failures "$RES/$mode" | sort >"$TOP/fail.$mode"
  shared=$(comm -12 "$TOP/fail.$mode" "$TOP/fail.base" | grep -c .)
  echo "  failed on the baseline too (not counted): $shared"
  comm -12 "$TOP/fail.$mode" "$TOP/fail.base" |
    awk '{ n = split($3, a, ":"); k = $1 " " $2 " " a[1]; l[k] = l[k] " " a[2] }
      END { for (k in l) print "    " k ":" l[k] }' | sort
  while IFS= read -r key; do
    [[ -n $key ]] || continue
    echo "  FAILED (passed on the baseline): $key"
    show "$RES/$mode" "$key"
    status=1
  done < <(comm -23 "$TOP/fail.$mode" "$TOP/fail.base")
  while IFS= read -r key; do
    [[ -n $key ]] && echo "  passed here, failed on the baseline: $key"
  done < <(comm -13 "$TOP/fail.$mode" "$TOP/fail.base")
done
if [[ -n ${KEEP_RESULTS:-} ]]; then
  mkdir -p "$KEEP_RESULTS" && cp -r "$RES/." "$KEEP_RESULTS/" && echo "logs kept in $KEEP_RESULTS"
fi
echo "== $((SECONDS - start)) s"
exit $status
