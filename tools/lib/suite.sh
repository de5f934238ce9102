# shellcheck shell=bash
# What the tools/*-suite.sh scripts share: packages, the kmsfs binary, Debian source tarballs,
# a fresh volume mounted for a suite, and its cleanup. Sourced, with SUITE set to the script's
# name (for messages) and the working directory at the repository's root.
#
# Env read here: SUITES_DIR (default ~/.cache/kmsfs-suites), KMSFS (binary; default: release
# build), WORK_IN (where volumes go; default /var/tmp), DAEMON_NO_DAC (below).
#
# DAEMON_NO_DAC=1 runs every kmsfs daemon the suites mount (through `daemon`) as root without
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv drops them from its inheritable and bounding
# sets), so that the backing files' modes bind it as they bind a user's own daemon, the files'
# owner; DAEMON_NO_DAC=nofowner drops CAP_FOWNER too (no chmod, utimes or ACL change of a backing
# file it does not own). It keeps CAP_CHOWN and CAP_SYS_ADMIN: it still mounts, and still gives
# new files their creator's ownership (as a root daemon does, unlike a user's own), so on an
# --allow-other mount it then lacks access to other users' backing files that a user's daemon,
# owning every file, would have (pjdfstest's *::uid_gid_eq_euid_egid fail for that; with
# nofowner also ftruncate/posix_fallocate create-flag cases and chmod::clear_isgid_bit).
# Unset or 0: the daemon has all of root's capabilities.

SUITES_DIR=${SUITES_DIR:-$HOME/.cache/kmsfs-suites}
WORK_IN=${WORK_IN:-/var/tmp}

die() { echo "$SUITE: $*" >&2; exit 2; }

# Runs COMMAND (a `kmsfs mount`, whose daemon inherits the capabilities) as DAEMON_NO_DAC asks.
daemon() { # COMMAND...
  local caps
  case ${DAEMON_NO_DAC:-0} in
    0) "$@"; return ;;
    1) caps=-dac_override,-dac_read_search ;;
    nofowner) caps=-dac_override,-dac_read_search,-fowner ;;
    *) die "DAEMON_NO_DAC=$DAEMON_NO_DAC: 0, 1 or nofowner" ;;
  esac
  setpriv --inh-caps="$caps" --bounding-set="$caps" -- "$@"
}

need_root() { # WHY
  ((EUID == 0)) || die "run as root ($1)"
}

install_pkg() { # PACKAGE
  apt-get install -y -qq "$1" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq "$1" >/dev/null; } || die "$1 is needed"
}

need_command() { # COMMAND [PACKAGE]
  command -v "$1" >/dev/null || install_pkg "${2:-$1}"
}

# Sets KMSFS to an absolute path, building the release binary when KMSFS is not given.
kmsfs_binary() {
  if [[ -z ${KMSFS:-} ]]; then
    cargo build --release --locked -q || die "build failed"
    KMSFS=$PWD/target/release/kmsfs
  fi
  KMSFS=$(realpath "$KMSFS") || die "no kmsfs binary"
}

# Sets ORIG to Debian's upstream tarball of PACKAGE in $SUITES_DIR/PACKAGE (not its .asc
# signature, which some packages have), downloading it with `apt-get source` (a deb-src entry
# added for the download and removed again) when missing.
debian_source() { # PACKAGE
  local pkg=$1 dir=$SUITES_DIR/$1
  ORIG=$(find "$dir" -maxdepth 1 -name "${pkg}_*.orig.tar.*" ! -name "*.asc" 2>/dev/null | head -1)
  [[ -n $ORIG ]] && return 0
  mkdir -p "$dir" || die "cannot make $dir"
  echo "== downloading $pkg's source (apt-get source $pkg)"
  local codename src_list got
  # shellcheck disable=SC1091 # the system's own file
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
  src_list=/etc/apt/sources.list.d/kmsfs-$pkg-suite-src.sources
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$codename" >"$src_list"
  (apt-get update -qq && cd "$dir" && apt-get source -qq --download-only "$pkg") >/dev/null 2>&1
  got=$?
  rm -f "$src_list"
  apt-get update -qq >/dev/null 2>&1
  ((got == 0)) || die "apt-get source $pkg failed"
  ORIG=$(find "$dir" -maxdepth 1 -name "${pkg}_*.orig.tar.*" ! -name "*.asc" | head -1)
  [[ -n $ORIG ]] || die "no ${pkg}_*.orig.tar.* downloaded"
}

# Unmounts $MNT and waits (up to 10 s) for its daemon to exit: it still writes to the volume
# after the kernel let go, and removing the volume under it fails ("Directory not empty").
unmount() { # [fusermount3 flags]
  mountpoint -q "$MNT" || return 0
  fusermount3 -u "$@" "$MNT"
  local i
  for i in $(seq 100); do
    pgrep -f -- " $MNT\$" >/dev/null || return 0
    sleep 0.1
  done
}

# Lets every user use the volume's default key (for suites that act as other users), keeping
# every key-manager action to root.
allow_everyone() { # CIPHERDIR PASSFILE
  local key
  key=$("$KMSFS" key --passfile "$2" "$1" list | awk 'NR > 1 && $4 == "yes" {print $1}')
  printf '%s\n' '{"Version": "2012-10-17", "Statement": [' \
    '  {"Sid": "Owner", "Effect": "Allow", "Principal": {"Uid": "0"}, "Action": "kms:*", "Resource": "*"},' \
    '  {"Sid": "Everyone", "Effect": "Allow", "Principal": "*",' \
    '   "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"}]}' >"$1.policy.json"
  "$KMSFS" policy put --volume "$1" --passfile "$2" "$key" "$1.policy.json" >/dev/null ||
    die "policy put failed"
}

# A fresh volume in a new directory WORK under $WORK_IN (removed at exit), its audit log held
# to 1 GiB (a whole suite writes GBs of records), mounted at MNT with the mount options given.
# With --allow-other, the directories are opened to every user and so is the default key.
# MOUNT_OPTS (environment) adds options to every suite's mount, e.g. MOUNT_OPTS=--acl.
fresh_mount() { # [kmsfs mount options]
  # shellcheck disable=SC2086 # options, split on purpose
  set -- "$@" ${MOUNT_OPTS:-}
  WORK=$(mktemp -d "$WORK_IN/kmsfs-$SUITE.XXXXXX") || die "mktemp in $WORK_IN failed"
  chmod 755 "$WORK"
  MNT=$WORK/mnt
  trap 'cd /; unmount -z; rm -rf "$WORK"' EXIT
  mkdir "$MNT" "$WORK/cipher"
  printf 'suite\n' >"$WORK/pass"
  KMSFS_INSECURE_FAST_KDF=1 "$KMSFS" init --passfile "$WORK/pass" --no-recovery-key "$WORK/cipher" \
    >/dev/null || die "kmsfs init failed"
  "$KMSFS" audit --passfile "$WORK/pass" "$WORK/cipher" retention --max-size 1G >/dev/null ||
    die "setting the audit size limit failed"
  [[ " $* " == *" --allow-other "* ]] && allow_everyone "$WORK/cipher" "$WORK/pass"
  daemon timeout 30 "$KMSFS" mount --passfile "$WORK/pass" "$@" "$WORK/cipher" "$MNT" || die "mount failed"
  chmod 755 "$MNT"
}

# Unpacks $ORIG onto the mount, enters its top directory (NAME-*, set as SRC), and builds it
# there with the configure command given, then `make -j$JOBS`.
build_on_mount() { # NAME CONFIGURE_COMMAND...
  local name=$1
  shift
  echo "== building $(basename "$ORIG") on a kmsfs mount"
  tar -xf "$ORIG" -C "$MNT" || die "cannot unpack $ORIG onto the mount"
  SRC=$(find "$MNT" -maxdepth 1 -type d -name "$name-*" | head -1)
  [[ -n $SRC ]] || die "no $name-* directory in $ORIG"
  cd "$SRC" || die "cannot enter $SRC"
  "$@" >"$WORK/configure.log" 2>&1 ||
    { tail -20 "$WORK/configure.log"; die "configure failed on the mount"; }
  make -j"${JOBS:-$(nproc)}" >"$WORK/build.log" 2>&1 ||
    { tail -20 "$WORK/build.log"; die "build failed on the mount"; }
}
