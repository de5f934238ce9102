#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes in kmsfs with cargo-fuzz (libFuzzer), each target for a
# bounded time, and prints a summary.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]        default 60
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). The fuzz crate is fuzz/ (its own workspace; `cargo test` of kmsfs
# only builds it without instrumentation and runs the seeds, tests/fuzz_seeds.rs); the targets and what each checks are described at the top of
# fuzz/fuzz_targets/*.rs.
#
# For every target: copies fuzz/seeds/<target>/* into fuzz/corpus/<target>/ (the corpus grows
# from run to run), then runs `cargo fuzz run <target> -- -max_total_time=SECONDS` (with
# -dict=fuzz/dicts/<target>.dict when there is one). Logs go to
# fuzz/logs/<target>.log, crash reproducers to fuzz/artifacts/<target>/ (libFuzzer's
# "Test unit written to …" line; the summary repeats the path). Reproduce one with
#   (cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/crash-…)
#
# Environment:
#   FUZZ_TARGETS="a b"   only these targets (default: all, from `cargo fuzz list`)
#   CARGO_BUILD_JOBS     parallel rustc jobs for the build (default 1, to stay light)
#   FUZZ_ARGS            extra libFuzzer flags, e.g. "-max_len=8192" (default: none)
#
# Exit status: 0 if no target crashed (or hit a timeout / out-of-memory), 1 otherwise, 2 if the
# build failed.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

echo "== cargo +nightly fuzz build (CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS)"
if ! cargo +nightly fuzz build; then
  echo "fuzz build failed" >&2
  exit 2
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}

# Scratch space of the targets that go through files (volume dirs, audit logs): tmpfs when
# there is one; removed at the end.
scratch_base=/dev/shm
[ -d "$scratch_base" ] && [ -w "$scratch_base" ] || scratch_base=${TMPDIR:-/tmp}
KMSFS_FUZZ_TMP=$(mktemp -d "$scratch_base/kmsfs-fuzz.XXXXXX")
export KMSFS_FUZZ_TMP
trap 'rm -rf "$KMSFS_FUZZ_TMP"' EXIT

mkdir -p logs
declare -a rows
failed=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true; fi
  dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  log="logs/$t.log"
  echo "== $t: ${secs}s (log: fuzz/$log)"
  # shellcheck disable=SC2086
  cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 "${dict[@]}" ${FUZZ_ARGS:-} \
    >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  if [ -z "$runs" ]; then
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
  if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
    result=ok
  else
    failed=1
    kind=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|deadly signal|panicked at [^ ]*' "$log" | head -1)
    case "$artifact" in /*) ;; ?*) artifact="fuzz/${artifact#./}" ;; esac
    result="CRASH (${kind:-exit $rc})${artifact:+ artifact: $artifact}"
    echo "   $result"
    grep -m1 -A3 'panicked at' "$log" | sed 's/^/   /'
  fi
  rows+=("$(printf '%-20s %12s  %s' "$t" "${runs:-?}" "$result")")
done

echo
echo "== summary (${secs}s per target)"
printf '%-20s %12s  %s\n' target runs result
for r in "${rows[@]}"; do echo "$r"; done
exit $failed
