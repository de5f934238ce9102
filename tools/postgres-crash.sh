#!/usr/bin/env bash
# A data-integrity check with a real database: PostgreSQL on a fresh kmsfs mount runs pgbench
# (a TPC-B-like script whose history rows carry the round and client), and each round kills
# something under it at a random moment:
#   - odd rounds: every PostgreSQL process (kill -9: the database crashes, kmsfs keeps going);
#   - even rounds: the kmsfs daemon itself (kill -9: the mount dies, PostgreSQL panics on the
#     next I/O and is killed too; `kmsfs fsck` runs on the volume; it is mounted again).
# Then PostgreSQL starts (crash recovery from its WAL) and the round passes when:
#   - the sums agree: accounts = tellers = branches = history (every transaction changes all
#     four by the same amount, so a lost or half-kept transaction shows);
#   - no committed transaction is lost: for each client, the rows it stored in that round are
#     the transactions pgbench logged as committed (-l), or one more (a commit under way when
#     the kill came may be kept or not);
#   - after a daemon kill, fsck reports nothing but interrupted-write markers (what a killed
#     daemon leaves; recovered at the next open).
# At the end: pg_amcheck (heap and every index entry), a clean shutdown, an unmount, and a
# clean fsck.
#
# Run as root: tools/postgres-crash.sh
# Env: KMSFS (binary; default: release build), ROUNDS (default 6), SCALE (pgbench scale,
#      default 10), PGPORT (default 5488), MOUNT_OPTS (extra kmsfs mount options, e.g.
#      --no-writeback-cache), WORK_IN (where the volume goes; default /var/tmp).
# Installs postgresql (Debian) when missing. Does not touch the system's own clusters.
# Exit status: 0 when every round passed, 1 otherwise, 2 when the setup failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=postgres-crash
. tools/lib/suite.sh

ROUNDS=${ROUNDS:-6}
SCALE=${SCALE:-10}
PGPORT=${PGPORT:-5488}

need_root "apt-get, mounting, running PostgreSQL as user postgres"
need_command fusermount3 fuse3
PGBIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
if [[ -z $PGBIN ]]; then
  install_pkg postgresql
  PGBIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1)
fi
[[ -x $PGBIN/pg_ctl ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
id postgres >/dev/null 2>&1 || die "no user postgres"

kmsfs_binary
fresh_mount --allow-other
# shellcheck disable=SC2206 # options, split on purpose
MOUNT_ARGS=(--allow-other ${MOUNT_OPTS:-})
PGDATA=$MNT/pg/data
SOCK=$WORK/sock
LOGS=$WORK/logs
PGLOG=$WORK/pglog/postgres.log
mkdir -p "$MNT/pg" "$SOCK" "$LOGS" "$WORK/pglog"
chown postgres "$MNT/pg" "$SOCK" "$LOGS" "$WORK/pglog"
failed=0
# On failure the volume and logs stay in $WORK for a look (unmounted all the same).
trap 'as_pg "$PGBIN/pg_ctl -D $PGDATA -m immediate stop" >/dev/null 2>&1; kill_pg; cd /; unmount -z; ((failed)) || rm -rf "$WORK"' EXIT

as_pg() { su postgres -s /bin/sh -c "$1"; }
psql_q() { as_pg "psql -h $SOCK -p $PGPORT -X -At -d postgres" ; }
# Starts the cluster and sets PM to its postmaster's pid (read now: once the kmsfs daemon is
# killed, postmaster.pid cannot be read).
PM=
pg_start() {
  as_pg "$PGBIN/pg_ctl -D $PGDATA -w -t 120 -o '-p $PGPORT -k $SOCK -c listen_addresses=' -l $PGLOG start" \
    >/dev/null 2>&1 || return 1
  PM=$(head -1 "$PGDATA/postmaster.pid")
}
# Every process of this cluster (the postmaster and its children), by kill -9.
kill_pg() {
  local pm=$PM
  [[ $pm =~ ^[0-9]+$ ]] || return 0
  kill -STOP "$pm" 2>/dev/null
  pkill -9 -P "$pm" 2>/dev/null
  kill -9 "$pm" 2>/dev/null
  kill -CONT "$pm" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pm" 2>/dev/null || break; sleep 0.1; done
  # What a crash leaves behind; a postmaster killed a moment ago may still be an unreaped
  # zombie, which PostgreSQL would take for a running server.
  rm -f "$PGDATA/postmaster.pid" "$SOCK"/.s.PGSQL.* 2>/dev/null
}
daemon_pid() { pgrep -f -- " $MNT\$" | head -1; }

cat >"$WORK/tpcb.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler)
  VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP, :round || ':' || :client_id);
END;
EOF
chmod 644 "$WORK/tpcb.sql"

echo "== PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on a kmsfs mount (${MOUNT_ARGS[*]}), $ROUNDS rounds"
as_pg "$PGBIN/initdb -D $PGDATA" >"$WORK/initdb.log" 2>&1 || { tail "$WORK/initdb.log"; die "initdb failed on the mount"; }
pg_start || { tail "$PGLOG"; die "PostgreSQL did not start"; }
as_pg "$PGBIN/pgbench -h $SOCK -p $PGPORT -i -q -s $SCALE postgres" >"$WORK/init.log" 2>&1 ||
  { tail "$WORK/init.log"; die "pgbench -i failed"; }

fail() { echo "   FAIL: $*"; failed=1; }

for ((round = 1; round <= ROUNDS; round++)); do
  what=postgres
  ((round % 2 == 0)) && what="kmsfs daemon"
  after=$((3 + RANDOM % 10))
  rm -f "$LOGS"/*
  as_pg "cd $LOGS && $PGBIN/pgbench -h $SOCK -p $PGPORT -n -c 4 -j 2 -T 120 -D round=$round -f $WORK/tpcb.sql -l --log-prefix=$LOGS/r postgres" \
    >"$WORK/bench.log" 2>&1 &
  bench=$!
  sleep "$after"
  fsck_note=""
  if [[ $what == postgres ]]; then
    kill_pg
  else
    kill -9 "$(daemon_pid)" 2>/dev/null
    kill_pg
    fusermount3 -u -z "$MNT" 2>/dev/null
    for _ in $(seq 100); do [[ -z $(daemon_pid) ]] && break; sleep 0.1; done
    "$KMSFS" fsck --json --passfile "$WORK/pass" "$WORK/cipher" >"$WORK/fsck.json" 2>"$WORK/fsck.err"
    rc=$?
    kinds=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(sorted({p["kind"] for p in d.get("problems", [])})))' "$WORK/fsck.json" 2>/dev/null)
    fsck_note=", fsck exit $rc${kinds:+ ($kinds)}"
    [[ -z $kinds || $kinds == interrupted-write ]] || fail "fsck after the kill found: $kinds"
    timeout 30 "$KMSFS" mount --passfile "$WORK/pass" "${MOUNT_ARGS[@]}" "$WORK/cipher" "$MNT" ||
      die "remount after the daemon kill failed"
    rm -f "$PGDATA/postmaster.pid"
  fi
  wait "$bench"
  pg_start || { tail "$PGLOG"; fail "PostgreSQL did not recover"; break; }
  sums=$(psql_q <<<"select sum(abalance), (select sum(tbalance) from pgbench_tellers), (select sum(bbalance) from pgbench_branches), (select coalesce(sum(delta), 0) from pgbench_history) from pgbench_accounts;")
  IFS='|' read -r a t b h <<<"$sums"
  [[ -n $a && $a == "$t" && $a == "$b" && $a == "$h" ]] || fail "sums differ: accounts $a, tellers $t, branches $b, history $h"
  stored=$(psql_q <<<"select filler, count(*) from pgbench_history where split_part(trim(filler), ':', 1) = '$round' group by 1;")
  logged=$(cat "$LOGS"/r* 2>/dev/null | awk -v r="$round" '{n[$1]++} END {for (c in n) print r ":" c "|" n[c]}')
  total=0
  for c in 0 1 2 3; do
    s=$(awk -F'|' -v k="$round:$c" '{gsub(/ /, "", $1)} $1 == k {print $2}' <<<"$stored")
    l=$(awk -F'|' -v k="$round:$c" '$1 == k {print $2}' <<<"$logged")
    s=${s:-0} l=${l:-0}
    total=$((total + l))
    ((s == l || s == l + 1)) || fail "client $c: $l transactions committed, $s stored"
  done
  echo "round $round: killed the $what after ${after} s; $total committed transactions, all kept$fsck_note"
done

echo "== pg_amcheck, shutdown, fsck"
psql_q <<<"create extension if not exists amcheck;" >/dev/null || fail "create extension amcheck"
as_pg "$PGBIN/pg_amcheck -h $SOCK -p $PGPORT --heapallindexed --parent-check -d postgres" ||
  fail "pg_amcheck found corruption"
as_pg "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null || fail "clean shutdown"
unmount
"$KMSFS" fsck --passfile "$WORK/pass" "$WORK/cipher" || fail "fsck after the clean unmount"
grep -E 'PANIC|FATAL' "$PGLOG" | grep -v -E 'Transport endpoint|connection abort|the database system is (starting up|in recovery mode|shutting down)' |
  sed 's/^/   postgres log: /' | tail -5
if ((failed)); then
  echo "== FAILED (volume and logs kept in $WORK)"
  exit 1
fi
echo "== all $ROUNDS rounds passed"
