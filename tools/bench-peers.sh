#!/usr/bin/env bash
# Side-by-side benchmark of kmsfs against its peers, all on the same disk:
#   raw        the plain backing directory (no FUSE)
#   bindfs     a FUSE passthrough (the cost of FUSE alone)
#   gocryptfs  the closest encrypted-FUSE peer
#   securefs   another encrypted-FUSE peer, in its "lite" format (`securefs create --format 4`)
#   kmsfs      this project (target/release/kmsfs, built if needed)
#
# Run as root (it installs missing Debian packages and drops the page cache):
#   tools/bench-peers.sh                                   # full run (1 GiB, 3 repetitions)
#   SIZE_MB=64 RAND_MB=32 REPS=1 FIO_RUNTIME=3 tools/bench-peers.sh    # quick development run
#   ONLY=bindfs,kmsfs SKIP=tree,mount tools/bench-peers.sh              # a subset
#
# Environment knobs:
#   BENCH_DIR     where the volumes live (default /var/tmp/kmsfs-bench); every system uses it
#   SIZE_MB       sequential-I/O file size in MiB (default 1024)
#   RAND_MB       random-I/O (fio) file size in MiB (default 256)
#   FIO_RUNTIME   seconds per fio run (default 10)
#   REPS          repetitions of every figure; the median is reported (default 3)
#   ONLY          comma list of systems to run: raw,bindfs,gocryptfs,securefs,kmsfs (default all)
#   SKIP          comma list of rows or row groups to skip. Groups: seq, rand, tree, mount.
#                 Rows: seq_write seq_read seq_copy rand_read rand_write untar ls_lR du read_all
#                       git_commit git_status_cold git_status_warm rm_rf mount
#   STEP_TIMEOUT  seconds after which one step is killed and recorded as ERR (default 900)
#   KMSFS         kmsfs binary to use (default: `cargo build --release`, target/release/kmsfs)
#   TREE_SRC      directories to tar up for the small-file rows (default /usr/lib/python3*,
#                 or /usr/share when there is no python)
#   OUT_DIR       where the results go (default <repo>/bench-results)
#   VERIFY        1 (default): check, untimed, that data read back is what was written
#   KEEP          1: keep the work directory under BENCH_DIR afterwards (default: delete it)
#   TREE_FS       fresh (default when mkfs.ext4 and loop devices work): each small-file group
#                 (every system, every repetition) runs on a new ext4 made in an image file in
#                 BENCH_DIR (loop device, direct I/O, so no double caching); shared: directly
#                 in BENCH_DIR. Why: on an ext4 without a journal (as these VMs' root), creating
#                 an inode skips every inode deleted in the last minutes one by one, so a
#                 system whose untar follows the others' rm -rf pays for them (measured: up to a
#                 third of a FUSE daemon's CPU time in ext4's recently_deleted()). The inode
#                 tables and journal are written by mkfs (lazy_itable_init=0): with the default
#                 lazy init a kernel thread zeroes them in the background for the first minutes,
#                 writing to the disk the timed steps use (three untars each, by hand: securefs
#                 2.4-5.9 s lazy, 2.7-2.8 s not; in an image file on ext4 mkfs takes ms for it).
#
# Output: a Markdown table on stdout and in OUT_DIR/peers-<date>.md, the same figures as TSV in
# OUT_DIR/peers-<date>.tsv (columns: row measurement unit better raw bindfs gocryptfs securefs
# kmsfs kmsfs/gocryptfs kmsfs/securefs kmsfs/bindfs reps_ok; a system not run has empty cells),
# every sample in OUT_DIR/peers-<date>.samples.tsv and a log in OUT_DIR/peers-<date>.log.
# Progress goes to stderr. A step that fails or times out is recorded as ERR (and explained
# under the table); the run goes on. Everything the script mounts is unmounted on exit, whatever
# the cause.
set -euo pipefail
export LC_ALL=C # '.' decimal point in $EPOCHREALTIME, stable tool output

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMDLINE="$0${*:+ $*}"
BENCH_DIR=${BENCH_DIR:-/var/tmp/kmsfs-bench}
SIZE_MB=${SIZE_MB:-1024}
RAND_MB=${RAND_MB:-256}
FIO_RUNTIME=${FIO_RUNTIME:-10}
REPS=${REPS:-3}
ONLY=${ONLY:-raw,bindfs,gocryptfs,securefs,kmsfs}
SKIP=${SKIP:-}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
TREE_FS=${TREE_FS:-}
KMSFS=${KMSFS:-}
TREE_SRC=${TREE_SRC:-}
OUT_DIR=${OUT_DIR:-$REPO/bench-results}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}

ALL_SYSTEMS=(raw bindfs gocryptfs securefs kmsfs) # also the order of the table's columns
GROUPS_ORDER=(seq rand tree mount)
ROW_IDS=(seq_write seq_read seq_copy rand_read rand_write untar ls_lR du read_all git_commit
  git_status_cold git_status_warm rm_rf mount)
declare -A ROW_GROUP=(
  [seq_write]=seq [seq_read]=seq [seq_copy]=seq [rand_read]=rand [rand_write]=rand
  [untar]=tree [ls_lR]=tree [du]=tree [read_all]=tree [git_commit]=tree
  [git_status_cold]=tree [git_status_warm]=tree [rm_rf]=tree [mount]=mount)

# ---------------------------------------------------------------------------------------------
# Logging and errors

die() { printf 'bench-peers: error: %s\n' "$*" >&2; exit 1; }
log() {
  printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
  if [[ -n ${LOG:-} ]]; then printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >>"$LOG"; fi
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0)); }
in_list() { # in_list WORD "a,b,c"
  local w=$1 list=",$2,"
  [[ $list == *",$w,"* ]]
}

# ---------------------------------------------------------------------------------------------
# Validate the knobs

is_uint "$SIZE_MB" || die "SIZE_MB must be a positive integer (got '$SIZE_MB')"
is_uint "$RAND_MB" || die "RAND_MB must be a positive integer (got '$RAND_MB')"
is_uint "$REPS" || die "REPS must be a positive integer (got '$REPS')"
is_uint "$FIO_RUNTIME" || die "FIO_RUNTIME must be a positive integer (got '$FIO_RUNTIME')"
is_uint "$STEP_TIMEOUT" || die "STEP_TIMEOUT must be a positive integer (got '$STEP_TIMEOUT')"
[[ $BENCH_DIR =~ ^/[A-Za-z0-9._/+-]*$ ]] ||
  die "BENCH_DIR must be an absolute path without spaces or special characters (got '$BENCH_DIR')"
((EUID == 0)) || die "run as root: the benchmark drops the page cache and installs packages"

SYSTEMS=()
IFS=, read -r -a _only <<<"$ONLY"
for s in "${_only[@]}"; do
  in_list "$s" "$(
    IFS=,
    echo "${ALL_SYSTEMS[*]}"
  )" || die "ONLY: unknown system '$s' (known: ${ALL_SYSTEMS[*]})"
done
for s in "${ALL_SYSTEMS[@]}"; do
  if in_list "$s" "$ONLY"; then SYSTEMS+=("$s"); fi
done
((${#SYSTEMS[@]} > 0)) || die "ONLY selects no system"
IFS=, read -r -a _skip <<<"$SKIP"
for r in "${_skip[@]}"; do
  [[ -z $r || -n ${ROW_GROUP[$r]:-} ]] && continue
  in_list "$r" "seq,rand,tree,mount" && continue
  die "SKIP: unknown row or group '$r' (rows: ${ROW_IDS[*]}; groups: ${GROUPS_ORDER[*]})"
done

wanted() { # wanted ROW: is this row measured?
  ! in_list "$1" "$SKIP" && ! in_list "${ROW_GROUP[$1]}" "$SKIP"
}
group_wanted() { # group_wanted GROUP: is any row of this group measured?
  local r
  for r in "${ROW_IDS[@]}"; do
    [[ ${ROW_GROUP[$r]} == "$1" ]] && wanted "$r" && return 0
  done
  return 1
}
has_system() { in_list "$1" "$(
  IFS=,
  echo "${SYSTEMS[*]}"
)"; }

# ---------------------------------------------------------------------------------------------
# Dependencies

need_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); }
need fusermount3 fuse3
need fio fio
need git git
need python3 python3
need timeout coreutils
need findmnt util-linux
need mountpoint util-linux
need lsblk util-linux
if has_system bindfs; then need bindfs bindfs; fi
if has_system gocryptfs; then need gocryptfs gocryptfs; fi
if has_system securefs; then need securefs securefs; fi
if ((${#need_pkgs[@]} > 0)); then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and no apt-get to install them"
  log "installing from Debian: ${need_pkgs[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
    die "apt-get install ${need_pkgs[*]} failed"
fi
[[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable"

if has_system kmsfs; then
  if [[ -z $KMSFS ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: build kmsfs first or set KMSFS=/path/to/kmsfs"
    log "building kmsfs (cargo build --release)"
    (cd "$REPO" && cargo build --release) >"$BENCH_DIR.cargo.log" 2>&1 ||
      { tail -n 30 "$BENCH_DIR.cargo.log" >&2; die "cargo build --release failed (see above)"; }
    rm -f "$BENCH_DIR.cargo.log"
    KMSFS=$REPO/target/release/kmsfs
  fi
  [[ -x $KMSFS ]] || die "KMSFS=$KMSFS is not an executable"
  KMSFS=$(realpath "$KMSFS")
fi

# ---------------------------------------------------------------------------------------------
# Work directory, cleanup trap

mkdir -p "$BENCH_DIR" "$OUT_DIR"
WORK=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
STAMP=$(date +%Y-%m-%d_%H%M%S)
LOG=$OUT_DIR/peers-$STAMP.log
SAMPLES=$WORK/samples.tsv
ERRORS=$WORK/errors.txt
DIAG=$WORK/diagnostics.txt
STEP_ERR=$WORK/step.err
PASSFILE=$WORK/passphrase
: >"$SAMPLES"
: >"$ERRORS"
: >"$DIAG"
: >"$LOG"
printf 'bench-peers passphrase %s\n' "$RANDOM$RANDOM" >"$PASSFILE"
chmod 600 "$PASSFILE"
declare -A MOUNTED=() # mount point -> system

mounted_under() { # mount points in /proc/mounts at or below DIR, deepest first
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts | sort -r
}

fuse_daemon_pids() { # processes of ours serving a volume under DIR (their command line names it)
  local dir=$1 pid exe
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case ${exe##*/} in kmsfs | gocryptfs | securefs | bindfs) ;; *) continue ;; esac
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" && echo "$pid"
  done
  return 0
}

force_unmount() { # force_unmount MNT: lazy unmount (the daemon exits once the kernel lets go)
  local m=$1
  fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  unset "MOUNTED[$m]"
}

cleanup_dir() { # cleanup_dir DIR [below]: unmount everything at (or only below) DIR and stop the daemons serving volumes there
  local dir=$1 m pid i
  while read -r m; do
    [[ -n $m ]] || continue
    [[ ${2:-} == below && $m == "$dir" ]] && continue
    log "cleanup: unmounting $m"
    force_unmount "$m"
  done < <(mounted_under "$dir")
  # A lazily unmounted daemon exits once the kernel releases the connection; give it a moment,
  # then end the ones (started by us, serving this directory) that are still there.
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [[ -z $(fuse_daemon_pids "$dir") ]] && return 0
    sleep 0.2
  done
  for pid in $(fuse_daemon_pids "$dir"); do
    log "cleanup: daemon $pid still serving $dir after unmount; sending SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
  done
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP PIPE
  set +e
  exec 1>&3 2>&4 # the signal may have come while a step's output was redirected
  local m
  if [[ -n $CHILD ]]; then # a step was running: stop it (timeout passes the signal on to it)
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  for m in "${!MOUNTED[@]}"; do force_unmount "$m"; done
  cleanup_dir "$WORK"
  local img
  for img in "$WORK"/*.img; do [[ -e $img ]] && tree_fs_release "${img%.img}"; done
  if [[ -n $(mounted_under "$WORK") ]]; then
    printf 'bench-peers: WARNING: could not unmount: %s\n' "$(mounted_under "$WORK" | tr '\n' ' ')" >&2
    KEEP=1 # never delete through a mount
  fi
  if ((KEEP == 1)); then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  if ((rc != 0)); then
    printf 'bench-peers: FAILED (exit %d); log: %s\n' "$rc" "$LOG" >&2
  fi
  exit "$rc"
}
CHILD=""
exec 3>&1 4>&2 # the script's own stdout and stderr, for the traps (children do not get them)
trap on_exit EXIT
trap 'exec 1>&3 2>&4; log "interrupted"; exit 130' INT
trap 'exec 1>&3 2>&4; log "terminated"; exit 143' TERM HUP
trap 'exit 141' PIPE

# ---------------------------------------------------------------------------------------------
# Helpers: timing, recording, page cache

LAST_ERR=""
ELAPSED=0
declare -A DONE_ROWS=()

# child CMD...: run CMD under `timeout` and wait for it. `timeout` gives CMD a process group of
# its own, so Ctrl-C reaches only this script; running CMD in the background and waiting with the
# `wait` builtin lets the INT/TERM trap run at once (it stops CHILD and unmounts everything).
child() {
  local rc=0
  timeout -k 10 "$STEP_TIMEOUT" "$@" 3>&- 4>&- &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

# timed OUT CMD...: run CMD under `timeout`, stdout to OUT, stderr to the log; sets ELAPSED
# (wall seconds). On failure sets LAST_ERR and returns non-zero.
timed() {
  local out=$1 t0 t1 rc=0
  shift
  t0=$EPOCHREALTIME
  child "$@" >"$out" 2>"$STEP_ERR" || rc=$?
  t1=$EPOCHREALTIME
  ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
  cat "$STEP_ERR" >>"$LOG"
  if ((rc == 124 || rc == 137)); then
    LAST_ERR="timed out after ${STEP_TIMEOUT}s: $*"
  elif ((rc != 0)); then
    LAST_ERR="exit $rc from: $* -- $(tail -n 3 "$STEP_ERR" | tr '\n' ' ')"
  fi
  return "$rc"
}

# quiet CMD...: an untimed step (set-up, verification) with a timeout; output to the log.
quiet() { quiet_in /dev/null "$@"; }
# quiet_in FILE CMD...: the same with stdin from FILE (securefs reads the passphrase there).
quiet_in() {
  local in=$1 rc=0
  shift
  child "$@" >>"$LOG" 2>"$STEP_ERR" <"$in" || rc=$?
  cat "$STEP_ERR" >>"$LOG"
  if ((rc == 124 || rc == 137)); then
    LAST_ERR="timed out after ${STEP_TIMEOUT}s: $*"
  elif ((rc != 0)); then
    LAST_ERR="exit $rc from: $* -- $(tail -n 3 "$STEP_ERR" | tr '\n' ' ')"
  fi
  return "$rc"
}

tmo() { child "$@"; } # anything that touches a mount may hang

fail() { # fail MESSAGE: set LAST_ERR, return 1
  LAST_ERR=$*
  return 1
}

CUR_SYS="" CUR_REP=0 GROUP_FAILED=0
record() { # record ROW VALUE UNIT
  DONE_ROWS[$1]=1
  wanted "$1" || return 0
  printf '%s\t%s\t%s\t%s\n' "$CUR_SYS" "$1" "$CUR_REP" "$2" >>"$SAMPLES"
  log "    $CUR_SYS $1 = $2 $3"
}
record_secs() { record "$1" "$ELAPSED" s; }
record_mbps() { # record_mbps ROW MIB: throughput in MB/s (10^6 bytes/s), like dd reports it
  record "$1" "$(awk -v m="$2" -v s="$ELAPSED" 'BEGIN { printf "%.3f", m * 1048576 / 1e6 / s }')" MB/s
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

diag() { # a finding worth reporting under the table (once per system and kind)
  local line="$1: $2"
  grep -qxF -- "- $line" "$DIAG" || printf -- '- %s\n' "$line" >>"$DIAG"
  log "    NOTE $line"
}

# ---------------------------------------------------------------------------------------------
# The systems: create a fresh volume, mount, unmount. A volume lives in its own directory VOL;
# the file system under test is always VOL/mnt (for raw, a plain directory).

BINDFS_OPTS=()
BINDFS_NOTE=""

vol_create() { # vol_create SYS VOL fast|default
  local sys=$1 vol=$2 kdf=$3
  mkdir -p "$vol/mnt" || fail "mkdir $vol/mnt" || return 1
  case $sys in
    raw) ;;
    bindfs) mkdir "$vol/back" || fail "mkdir $vol/back" || return 1 ;;
    gocryptfs)
      mkdir "$vol/cipher" || fail "mkdir $vol/cipher" || return 1
      local n=()
      [[ $kdf == fast ]] && n=(-scryptn 10)
      quiet gocryptfs -init -q "${n[@]}" -passfile "$PASSFILE" "$vol/cipher" || return 1
      ;;
    securefs) # the passphrase on stdin (its first line), not on the command line (--pass)
      mkdir "$vol/cipher" || fail "mkdir $vol/cipher" || return 1
      local k=()
      [[ $kdf == fast ]] && k=(--pbkdf pkcs5-pbkdf2-hmac-sha256 -r 1)
      quiet_in "$PASSFILE" securefs create --format 4 "${k[@]}" "$vol/cipher" || return 1
      ;;
    kmsfs)
      if [[ $kdf == fast ]]; then
        quiet env KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$PASSFILE" --no-recovery-key "$vol/cipher" || return 1
      else
        quiet env -u KMSFS_INSECURE_FAST_KDF "$KMSFS" init --passfile "$PASSFILE" --no-recovery-key "$vol/cipher" || return 1
      fi
      ;;
  esac
}

is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }

# The daemon keeps the output of the mount command, so it goes to a file of its own, VOL/daemon.log
# (appended to the main log, and reported if not empty, when the volume is destroyed).
# securefs logs to a file of its own once in the background (--log; without it, it warns that it
# has none), VOL/securefs.log; its lines other than [Info] are reported with VOL/daemon.log.
vol_mount() { # vol_mount SYS VOL: returns once VOL/mnt is usable
  local sys=$1 vol=$2 mnt=$2/mnt i rc=0 cmd in=/dev/null
  case $sys in
    raw) return 0 ;;
    bindfs) cmd=(bindfs "${BINDFS_OPTS[@]}" "$vol/back" "$mnt") ;;
    gocryptfs) cmd=(gocryptfs -q -nosyslog -passfile "$PASSFILE" "$vol/cipher" "$mnt") ;;
    securefs)
      cmd=(securefs mount -b --log "$vol/securefs.log" "$vol/cipher" "$mnt")
      in=$PASSFILE
      ;;
    kmsfs) cmd=("$KMSFS" mount --passfile "$PASSFILE" "$vol/cipher" "$mnt") ;;
  esac
  child "${cmd[@]}" >>"$vol/daemon.log" 2>&1 <"$in" || rc=$?
  MOUNTED[$mnt]=$sys # even on failure: it may be half mounted; the clean-up checks
  if ((rc != 0)); then
    fail "$sys: mount failed (exit $rc): $(tail -n 3 "$vol/daemon.log" | tr '\n' ' ')"
    return 1
  fi
  # "Usable": listed in /proc/mounts and the root directory can be read.
  for ((i = 0; i < 3000; i++)); do
    if is_mounted "$mnt" && timeout 10 ls -a "$mnt" >/dev/null 2>&1; then return 0; fi
    sleep 0.01
  done
  fail "$sys: mount command returned but $mnt is not usable after 30 s"
}

vol_umount() { # vol_umount SYS VOL: a clean (non-lazy) unmount, retried while busy
  local sys=$1 vol=$2 mnt=$2/mnt i ok
  [[ $sys == raw ]] && return 0
  is_mounted "$mnt" || { unset "MOUNTED[$mnt]"; return 0; }
  for ((i = 0; i < 20; i++)); do
    ok=1
    if [[ $sys == kmsfs ]]; then
      quiet "$KMSFS" unmount "$mnt" || ok=0
    else
      quiet fusermount3 -u "$mnt" || ok=0
    fi
    if ! is_mounted "$mnt"; then
      unset "MOUNTED[$mnt]"
      if ((!ok)); then
        log "    $sys: unmount reported failure but the mount is gone: $LAST_ERR"
        diag "$sys" "the unmount command failed although the mount went away (see the log)"
      fi
      if ((i > 0)); then
        log "    $sys: unmount of $mnt needed $((i + 1)) attempts: $LAST_ERR"
        diag "$sys" "unmount was refused as busy right after a workload and needed retries (see the log)"
      fi
      return 0
    fi
    sleep 0.25
  done
  fail "$sys: could not unmount $mnt: $LAST_ERR"
}

cold() { # cold SYS VOL: unmount, drop the page cache, mount again
  vol_umount "$1" "$2" || return 1
  drop_caches
  vol_mount "$1" "$2" || return 1
}

# A fresh ext4 for one small-file group, mounted at VOL (see TREE_FS).
tree_fs_make() { # tree_fs_make VOL
  local vol=$1 dev
  truncate -s 4G "$vol.img" &&
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$vol.img" >>"$LOG" 2>&1 ||
    fail "mkfs.ext4 on $vol.img" || return 1
  dev=$(losetup -f --show --direct-io=on "$vol.img" 2>>"$LOG") || fail "losetup $vol.img" || return 1
  echo "$dev" >"$vol.dev"
  mkdir -p "$vol" && mount "$dev" "$vol" || fail "mount $dev on $vol" || return 1
}

tree_fs_release() { # tree_fs_release VOL: unmount and detach a tree_fs_make file system
  local vol=$1 dev i
  [[ -e $vol.img ]] || return 0
  for i in 1 2 3 4 5; do
    mountpoint -q "$vol" || break
    umount "$vol" 2>/dev/null && break
    sleep 0.5
  done
  mountpoint -q "$vol" && umount -l "$vol"
  dev=$(cat "$vol.dev" 2>/dev/null)
  [[ -n $dev ]] && losetup -d "$dev" 2>/dev/null
  rm -f "$vol.img" "$vol.dev"
}

vol_destroy() { # vol_destroy SYS VOL: unmount (forcibly if need be) and delete
  local sys=$1 vol=$2
  if [[ -d $vol ]]; then
    if ! vol_umount "$sys" "$vol" 2>/dev/null; then
      log "    $sys: clean unmount failed ($LAST_ERR); forcing"
      diag "$sys" "a clean unmount failed (busy for 5 s) and a lazy one was needed (see the log)"
    fi
    cleanup_dir "$vol" below # (VOL itself may be a fresh tree file system: released below)
    if [[ -s $vol/securefs.log ]]; then # its [Info] lines (init, destroy) are routine
      cat "$vol/securefs.log" >>"$LOG"
      grep -v '^\[Info\]' "$vol/securefs.log" >>"$vol/daemon.log" || true
    fi
    if [[ -s $vol/daemon.log ]]; then
      {
        echo "---- $sys daemon output ($vol) ----"
        cat "$vol/daemon.log"
      } >>"$LOG"
      if ((!GROUP_FAILED)); then # (if it failed, the error already says it)
        diag "$sys" "the mount daemon printed: $(head -c 200 "$vol/daemon.log" | head -n 2 | tr '\n' ' ')"
      fi
    fi
    tree_fs_release "$vol"
    [[ -z $(mounted_under "$vol") ]] || die "$vol is still mounted; not deleting it"
    rm -rf "$vol"
  fi
}

# ---------------------------------------------------------------------------------------------
# Workloads. Each runs on a fresh volume and returns non-zero (with LAST_ERR set) on failure;
# they run with errexit off (called from `if`), so every step is checked explicitly.

bench_seq() { # sequential 1 MiB write with fsync, cold sequential read
  local sys=$1 vol=$2 mnt=$2/mnt f=$2/mnt/seq.bin size
  vol_create "$sys" "$vol" fast || return 1
  vol_mount "$sys" "$vol" || return 1
  timed /dev/null dd if=/dev/zero of="$f" bs=1M count="$SIZE_MB" conv=fsync status=none || return 1
  record_mbps seq_write "$SIZE_MB"
  size=$(tmo stat -c %s "$f") || fail "stat $f" || return 1
  ((size == SIZE_MB * 1048576)) || fail "$f has $size bytes after writing $((SIZE_MB * 1048576))" || return 1
  if wanted seq_read; then
    cold "$sys" "$vol" || return 1
    timed /dev/null dd if="$f" of=/dev/null bs=1M status=none || return 1
    record_mbps seq_read "$SIZE_MB"
    if ((VERIFY)); then
      quiet cmp -n "$size" "$f" /dev/zero || fail "read-back differs from what was written: $LAST_ERR" || return 1
    fi
  fi
  if wanted seq_copy; then
    # cp as users run it (coreutils 9 asks for copy_file_range, which a file system may do
    # itself; otherwise the kernel reads and writes), until the copy is on the disk.
    cold "$sys" "$vol" || return 1
    timed /dev/null sh -c 'cp -- "$1" "$2" && sync -- "$2"' sh "$f" "$f.copy" || return 1
    record_mbps seq_copy "$SIZE_MB"
    if ((VERIFY)); then
      quiet cmp -n "$size" "$f.copy" /dev/zero || fail "the copy differs: $LAST_ERR" || return 1
      size=$(tmo stat -c %s "$f.copy") || fail "stat $f.copy" || return 1
      ((size == SIZE_MB * 1048576)) || fail "the copy has $size bytes" || return 1
    fi
  fi
}

fio_iops() { # fio_iops JSON read|write
  python3 - "$1" "$2" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
if job.get("error"):
    sys.exit(f"fio job error {job['error']}")
print(f"{job[sys.argv[2]]['iops']:.1f}")
EOF
}

bench_rand() { # fio random 4 KiB reads (cold) and buffered random 4 KiB writes
  local sys=$1 vol=$2 f=$2/mnt/rand.bin json=$WORK/fio.json iops
  local common=(--filename="$f" --size="${RAND_MB}M" --ioengine=psync --direct=0 --fallocate=none
    --numjobs=1 --iodepth=1)
  vol_create "$sys" "$vol" fast || return 1
  vol_mount "$sys" "$vol" || return 1
  quiet fio --name=layout "${common[@]}" --rw=write --bs=1M --end_fsync=1 || return 1
  local rw row dir
  for row in rand_read rand_write; do
    wanted "$row" || continue
    if [[ $row == rand_read ]]; then rw=randread dir=read; else rw=randwrite dir=write; fi
    cold "$sys" "$vol" || return 1
    timed "$json" fio --name="$rw" "${common[@]}" --rw="$rw" --bs=4k --time_based=1 \
      --runtime="$FIO_RUNTIME" --output-format=json || return 1
    iops=$(fio_iops "$json" "$dir" 2>"$STEP_ERR") || fail "fio $rw: $(cat "$STEP_ERR")" || return 1
    record "$row" "$iops" IOPS
  done
}

TREE_TAR="" TREE_FILES=0 TREE_BYTES=0 TREE_DESC=""
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
# No background gc/maintenance (it would keep the mount busy), no fsmonitor, no untracked cache.
GIT_OPTS=(-c gc.auto=0 -c maintenance.auto=false -c core.fsmonitor=false
  -c core.untrackedCache=false -c init.defaultBranch=main -c commit.gpgSign=false)

tree_fingerprint() { # inode numbers and names of the tree (to see whether they survive a remount)
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  tmo bash -o pipefail -c 'cd "$1" && find . -printf "%i %p\n" | sort | md5sum' _ "$1"
}

bench_tree() { # small-file workload on a real source tree
  local sys=$1 vol=$2 t=$2/mnt/tree out=$WORK/tree.out fp1 fp2
  if [[ $TREE_FS == fresh ]]; then tree_fs_make "$vol" || return 1; fi
  vol_create "$sys" "$vol" fast || return 1
  vol_mount "$sys" "$vol" || return 1
  tmo mkdir "$t" || fail "mkdir $t" || return 1

  timed /dev/null tar -xf "$TREE_TAR" -C "$t" || return 1
  record_secs untar

  if wanted ls_lR; then
    cold "$sys" "$vol" || return 1
    timed /dev/null ls -lR "$t" || return 1
    record_secs ls_lR
  fi
  if wanted du; then
    cold "$sys" "$vol" || return 1
    timed "$out" du -s "$t" || return 1
    record_secs du
  fi
  if wanted read_all; then
    cold "$sys" "$vol" || return 1
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    timed "$out" bash -o pipefail -c 'cd "$1" && find . -type f -print0 | xargs -0 cat | wc -c' _ "$t" ||
      return 1
    record_secs read_all
    local got
    got=$(tr -d ' \n' <"$out")
    [[ $got == "$TREE_BYTES" ]] || fail "read_all read $got bytes, the tree holds $TREE_BYTES" || return 1
  fi

  if wanted git_commit || wanted git_status_cold || wanted git_status_warm; then
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    timed /dev/null bash -c 'cd "$1" && shift && git "$@" init -q && git "$@" add -A &&
      git "$@" commit -q -m bench' _ "$t" "${GIT_OPTS[@]}" || return 1
    record_secs git_commit
    fp1=$(tree_fingerprint "$t")
    if wanted git_status_cold; then
      cold "$sys" "$vol" || return 1
      timed "$out" git -C "$t" "${GIT_OPTS[@]}" status || return 1
      record_secs git_status_cold
      grep -q 'nothing to commit, working tree clean' "$out" ||
        fail "git status after remount is not clean: $(head -c 300 "$out" | tr '\n' ' ')" || return 1
    fi
    timed "$out" git -C "$t" "${GIT_OPTS[@]}" status || return 1
    record_secs git_status_warm
    grep -q 'nothing to commit, working tree clean' "$out" ||
      fail "git status is not clean: $(head -c 300 "$out" | tr '\n' ' ')" || return 1
    fp2=$(tree_fingerprint "$t")
    if wanted git_status_cold && [[ $fp1 != "$fp2" ]]; then
      diag "$sys" "inode numbers change across a remount (git must re-stat/re-hash the work tree on a cold status)"
    fi
  fi

  timed /dev/null rm -rf "$t" || return 1
  record_secs rm_rf
  ! tmo test -e "$t" || fail "$t still exists after rm -rf" || return 1
  local left
  left=$(tmo find "$vol/mnt" -mindepth 1 | head -n 3)
  [[ -z $left ]] || fail "left behind after rm -rf: $left" || return 1
  # The backing directory should be back to the bare volume too.
  local n i
  for i in 0 1; do
    n=$(backing_leftovers "$sys" "$vol")
    ((n == 0)) && break
    sleep 2
  done
  if ((n > 0)); then
    diag "$sys" "after rm -rf of the whole tree, $n entries remain in the backing directory (e.g. $(backing_leftovers "$sys" "$vol" list | head -n 2 | tr '\n' ' '))"
  elif [[ $i == 1 ]]; then
    diag "$sys" "after rm -rf, the backing directory was emptied only some time after rm returned"
  fi
}

backing_leftovers() { # backing_leftovers SYS VOL [list]: entries in the backing dir beyond the volume's own metadata
  local dir
  case $1 in
    raw) dir=$2/mnt ;; bindfs) dir=$2/back ;; gocryptfs | securefs | kmsfs) dir=$2/cipher ;;
  esac
  find "$dir" -mindepth 1 \( -path "$dir/.kmsfs" -prune -o -path "$dir/.kmsfs/*" -prune \
    -o -name kmsfs.dirid -o -name gocryptfs.conf -o -name gocryptfs.diriv \
    -o -path "$dir/.securefs.json" -o -print \) 2>/dev/null |
    if [[ ${3:-} == list ]]; then cat; else wc -l; fi
}

bench_mount() { # mount time with the default (slow, secure) KDF; cold cache
  local sys=$1 vol=$2 t0
  case $sys in raw | bindfs) return 0 ;; esac
  vol_create "$sys" "$vol" default || return 1
  drop_caches
  t0=$EPOCHREALTIME
  vol_mount "$sys" "$vol" || return 1
  ELAPSED=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')
  record_secs mount
}

run_group() { # run_group GROUP SYS REP
  local group=$1 sys=$2 rep=$3 vol=$WORK/$2-$1-$3 r
  CUR_SYS=$sys CUR_REP=$rep LAST_ERR="" GROUP_FAILED=0
  DONE_ROWS=()
  log "  [$rep/$REPS] $group on $sys"
  if ! "bench_$group" "$sys" "$vol"; then
    GROUP_FAILED=1
    log "    ERROR $sys/$group (rep $rep): $LAST_ERR"
    printf -- '- %s, %s rows, repetition %s: %s\n' "$sys" "$group" "$rep" "$LAST_ERR" >>"$ERRORS"
    for r in "${ROW_IDS[@]}"; do
      [[ ${ROW_GROUP[$r]} == "$group" && -z ${DONE_ROWS[$r]:-} ]] || continue
      [[ $group == mount && ($sys == raw || $sys == bindfs) ]] && continue
      record "$r" ERR ""
    done
  fi
  vol_destroy "$sys" "$vol"
}

# ---------------------------------------------------------------------------------------------
# Set-up: bindfs options, the tree tarball, the header

if [[ -z $TREE_FS ]]; then
  TREE_FS=shared
  if command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then
    truncate -s 64M "$WORK/probe.img" && mkfs.ext4 -q -F "$WORK/probe.img" >/dev/null 2>&1 &&
      d=$(losetup -f --show --direct-io=on "$WORK/probe.img" 2>/dev/null) && {
      mkdir -p "$WORK/probe-fs"
      mount "$d" "$WORK/probe-fs" 2>/dev/null && umount "$WORK/probe-fs" && TREE_FS=fresh
      losetup -d "$d"
    }
    rm -rf "$WORK/probe.img" "$WORK/probe-fs"
  fi
fi
[[ $TREE_FS == fresh || $TREE_FS == shared ]] || die "TREE_FS must be fresh or shared (got '$TREE_FS')"
log "work directory $WORK; results to $OUT_DIR/peers-$STAMP.*"
fstype=$(findmnt -no FSTYPE -T "$WORK")
case $fstype in tmpfs | ramfs | overlay) log "WARNING: BENCH_DIR is on $fstype, not a real disk" ;; esac
avail_mb=$(($(df -Pk "$WORK" | awk 'NR == 2 { print $4 }') / 1024))
need_mb=$((SIZE_MB + RAND_MB + 1024))
((avail_mb > need_mb)) || die "BENCH_DIR has ${avail_mb} MiB free, the run needs about ${need_mb} MiB"

if has_system bindfs; then
  mkdir -p "$WORK/probe/back" "$WORK/probe/mnt"
  if timeout 30 bindfs -o big_writes "$WORK/probe/back" "$WORK/probe/mnt" >>"$LOG" 2>&1 3>&- 4>&- &&
    is_mounted "$WORK/probe/mnt"; then
    BINDFS_OPTS=(-o big_writes)
    BINDFS_NOTE="bindfs mounted with \`-o big_writes\` (supported by this build)"
  else
    BINDFS_NOTE="bindfs mounted with default options (\`-o big_writes\` is not supported by this build)"
  fi
  MOUNTED[$WORK/probe/mnt]=bindfs
  cleanup_dir "$WORK/probe"
  rm -rf "$WORK/probe"
  log "$BINDFS_NOTE"
fi

if group_wanted tree; then
  if [[ -z $TREE_SRC ]]; then
    TREE_SRC=$(compgen -G '/usr/lib/python3*' | paste -sd ' ' || true)
    [[ -n $TREE_SRC ]] || TREE_SRC=/usr/share
  fi
  TREE_TAR=$WORK/tree.tar
  read -r -a _src <<<"$TREE_SRC"
  log "making the small-file tarball from ${_src[*]}"
  tar -cf "$TREE_TAR" --warning=no-file-changed -C / "${_src[@]#/}" 2>>"$LOG" ||
    [[ $? == 1 && -s $TREE_TAR ]] || die "could not tar $TREE_SRC"
  read -r TREE_FILES TREE_DIRS TREE_LINKS TREE_BYTES < <(python3 - "$TREE_TAR" <<'EOF'
import sys, tarfile
files = dirs = links = size = 0
sizes = {}
with tarfile.open(sys.argv[1]) as t:
    for m in t:
        if m.isfile():
            files += 1; size += m.size; sizes[m.name] = m.size
        elif m.islnk():
            files += 1; size += sizes.get(m.linkname, 0)
        elif m.isdir():
            dirs += 1
        elif m.issym():
            links += 1
print(files, dirs, links, size)
EOF
  )
  [[ ${TREE_BYTES:-0} -gt 0 ]] || die "could not read the tarball $TREE_TAR"
  TREE_DESC="$TREE_FILES files, $TREE_DIRS directories, $TREE_LINKS symlinks, $((TREE_BYTES / 1048576)) MiB from ${_src[*]}"
  log "tree: $TREE_DESC"
fi

# Header
ver() { "$@" 2>&1 | head -n 1 || true; }
kmsfs_ver="not run"
if has_system kmsfs; then
  kmsfs_ver="$("$KMSFS" --version 2>&1 | head -n 1 | sed 's/^kmsfs //') ($KMSFS"
  if rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev+=" + uncommitted changes"
    kmsfs_ver+=", git $rev"
  fi
  kmsfs_ver+=")"
fi
securefs_ver="securefs not run"
if has_system securefs; then # Debian's build says "securefs GIT-NOTFOUND": ask dpkg then
  securefs_ver=$(ver securefs version)
  if [[ ! $securefs_ver =~ [0-9] ]] && v=$(dpkg-query -W -f '${Version}' securefs 2>/dev/null) && [[ -n $v ]]; then
    securefs_ver="securefs $v (Debian package)"
  fi
  securefs_ver+=", lite format 4"
fi
env_knobs=""
shq() { # quote for the shell only when needed
  if [[ $1 =~ ^[A-Za-z0-9._/,:+=-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
for k in BENCH_DIR SIZE_MB RAND_MB FIO_RUNTIME REPS ONLY SKIP STEP_TIMEOUT TREE_SRC TREE_FS VERIFY; do
  env_knobs+="$k=$(shq "${!k}") "
done
src_dev=$(findmnt -no SOURCE -T "$WORK")
disk_desc=$(lsblk -dno NAME,MODEL,SIZE,ROTA "$src_dev" 2>/dev/null |
  awk '{ r = $NF == 1 ? "rotational per lsblk" : "non-rotational per lsblk"; $NF = ""; print $0 r }' || true)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
{
  echo "# kmsfs vs peers: side-by-side benchmark"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- Host: $(uname -srm); CPU: ${cpu:-unknown} × $(nproc) online; RAM $mem; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- BENCH_DIR: \`$BENCH_DIR\` on $src_dev ($fstype, $(findmnt -no OPTIONS -T "$WORK")); disk: ${disk_desc:-unknown}"
  echo "- Versions: kmsfs $kmsfs_ver; $(has_system gocryptfs && ver gocryptfs -version || echo 'gocryptfs not run'); $securefs_ver; $(has_system bindfs && ver bindfs --version || echo 'bindfs not run'); $(ver fio --version); $(ver git --version)"
  echo "- Command: \`$env_knobs$CMDLINE\`"
  echo "- Sizes: sequential file $SIZE_MB MiB; fio file $RAND_MB MiB, $FIO_RUNTIME s per run; small-file tree: ${TREE_DESC:-skipped}"
  echo "- Each figure is the median of $REPS repetition(s), each on a fresh volume; systems interleaved within a repetition."
  if [[ $TREE_FS == fresh ]]; then
    echo "- Small-file rows: each system, each repetition, on a new ext4 (mkfs.ext4 defaults but inode tables and journal initialized at once, 4 GiB image in BENCH_DIR on a loop device with direct I/O), so no run inherits another's deleted inodes."
  fi
} >"$WORK/header.md"

# Row labels
{
  printf 'seq_write\tSequential write, %s MiB (dd bs=1M conv=fsync)\tMB/s\thi\n' "$SIZE_MB"
  printf 'seq_read\tSequential read, cold (dd bs=1M)\tMB/s\thi\n'
  printf 'seq_copy\tCopy of that file within the file system, cold (cp, then sync of the copy)\tMB/s\thi\n'
  printf 'rand_read\tRandom 4 KiB reads, cold (fio psync, %s MiB file, %s s)\tIOPS\thi\n' "$RAND_MB" "$FIO_RUNTIME"
  printf 'rand_write\tRandom 4 KiB buffered writes (fio psync, %s MiB file, %s s)\tIOPS\thi\n' "$RAND_MB" "$FIO_RUNTIME"
  printf 'untar\tSmall files: untar the tree\ts\tlo\n'
  printf 'ls_lR\tSmall files: ls -lR, cold\ts\tlo\n'
  printf 'du\tSmall files: du -s, cold\ts\tlo\n'
  printf 'read_all\tSmall files: read every file (find | xargs cat), cold\ts\tlo\n'
  printf 'git_commit\tSmall files: git init + add -A + commit\ts\tlo\n'
  printf 'git_status_cold\tSmall files: git status, cold\ts\tlo\n'
  printf 'git_status_warm\tSmall files: git status, warm\ts\tlo\n'
  printf 'rm_rf\tSmall files: rm -rf the tree (with .git)\ts\tlo\n'
  printf 'mount\tMount time, default KDF, cold cache\ts\tlo\n'
} | while IFS=$'\t' read -r id rest; do
  if wanted "$id"; then printf '%s\t%s\n' "$id" "$rest"; fi
done >"$WORK/rows.tsv"

# ---------------------------------------------------------------------------------------------
# Run

log "systems: ${SYSTEMS[*]}; repetitions: $REPS; skipping: ${SKIP:-nothing}"
for ((rep = 1; rep <= REPS; rep++)); do
  for group in "${GROUPS_ORDER[@]}"; do
    group_wanted "$group" || continue
    for sys in "${SYSTEMS[@]}"; do
      run_group "$group" "$sys" "$rep"
    done
  done
done

# ---------------------------------------------------------------------------------------------
# Report

{
  echo "Ratios: > 1 means kmsfs is better — kmsfs/peer for throughput (MB/s, IOPS), peer/kmsfs for times (s)."
  echo
  echo "Notes:"
  echo "- cold = unmount, \`sync; echo 3 > /proc/sys/vm/drop_caches\`, mount again (raw: sync and drop caches only); the remount is not timed."
  if has_system bindfs; then echo "- $BINDFS_NOTE; bindfs runs single-threaded (its default)."; fi
  echo "- Data rows use a fast KDF (gocryptfs \`-scryptn 10\`, securefs \`--pbkdf pkcs5-pbkdf2-hmac-sha256 -r 1\`, kmsfs \`KMSFS_INSECURE_FAST_KDF=1\` at init); it affects only mounting."
  if group_wanted mount; then
    echo "- The mount row uses the default KDFs (gocryptfs scrypt N=2^16, securefs Argon2id 256 MiB × 9 passes × 4 lanes, kmsfs Argon2id 64 MiB × 3 passes) on a cold cache, timed from invoking the mount command until the mount point is listed in /proc/mounts and readable."
  fi
  echo "- kmsfs mounted with its defaults (\`kmsfs mount --passfile\`); gocryptfs with \`-q -nosyslog -passfile\`."
  if has_system securefs; then
    echo "- securefs volumes made by \`securefs create --format 4\` (lite format: one encrypted file per file, names encrypted, 4 KiB blocks, 12-byte IVs: its defaults) and mounted with its defaults otherwise (multi-threaded, \`--attr-timeout 30\`) by \`securefs mount -b --log FILE\`; the passphrase goes to both on stdin."
  fi
  if group_wanted rand; then
    echo "- fio: \`--ioengine=psync --direct=0 --bs=4k --time_based --runtime=$FIO_RUNTIME\`; the file is laid out by a sequential write first. Random writes are buffered (no fsync) after a cold remount."
  fi
  if group_wanted tree; then
    echo "- Small-file rows: untar is timed without a final sync; ls -lR, du, read-all and the first git status each start cold; rm -rf follows the warm git status (its time includes ext4 reloading its block bitmaps after the cache drop)."
  fi
  if [[ -s $DIAG ]]; then
    echo
    echo "Observations:"
    cat "$DIAG"
  fi
  if [[ -s $ERRORS ]]; then
    echo
    echo "Errors (the affected cells show ERR or the count of good repetitions):"
    cat "$ERRORS"
  fi
} >"$WORK/notes.md"

OUT_BASE=$OUT_DIR/peers-$STAMP
systems_csv=$(
  IFS=,
  echo "${SYSTEMS[*]}"
)
python3 "$REPO/tools/bench/peers_report.py" --rows "$WORK/rows.tsv" --samples "$SAMPLES" \
  --header "$WORK/header.md" --notes "$WORK/notes.md" --systems "$systems_csv" \
  --md "$OUT_BASE.md" --tsv "$OUT_BASE.tsv"
cp "$SAMPLES" "$OUT_BASE.samples.tsv"
log "wrote $OUT_BASE.md, $OUT_BASE.tsv, $OUT_BASE.samples.tsv, $OUT_BASE.log"
