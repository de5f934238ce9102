#!/usr/bin/env bash
# What one wake-up costs on this machine, within a CPU and across CPUs: two threads hand a turn
# back and forth through a futex (as a process and a FUSE daemon thread do through a request and
# its reply: each sleeps until the other wakes it), and the mean round trip is printed with the
# threads pinned to one CPU, pinned to two, and left to the scheduler.
#
#   tools/cpu-wake-latency.sh [ROUND_TRIPS]     (default 20000; needs cc and 2+ CPUs)
#
# On the 2-vCPU VMs kmsfs is benchmarked on (2026-12-07: Linux 6.18, no guest halt polling) a
# round trip took 3.5-6 us on one CPU and 20-46 us across two, the scheduler's own placement
# in between: most of a small FUSE request's cost is the two cross-CPU wake-ups, not the
# daemon's work (docs/performance-history.md, 2026-12-07 from 22:56).
set -euo pipefail
n=${1:-20000}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [ROUND_TRIPS]" >&2; exit 2; }
cpus=$(nproc)
((cpus >= 2)) || { echo "$0: one CPU: nothing to compare" >&2; exit 1; }
command -v cc >/dev/null || { echo "$0: needs a C compiler (cc)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/wake.c" <<'EOF'
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int turn = 1; /* 0: the server's turn, 1: the caller's */
static long rounds;
static int cpu_caller = -1, cpu_server = -1;

static void wait_while(atomic_int *a, int v) {
    while (atomic_load(a) == v)
        syscall(SYS_futex, a, FUTEX_WAIT, v, NULL, NULL, 0);
}
static void wake(atomic_int *a) { syscall(SYS_futex, a, FUTEX_WAKE, 1, NULL, NULL, 0); }
static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) { perror("sched_setaffinity"); exit(1); }
}
static void *server(void *x) {
    (void)x;
    pin(cpu_server);
    for (long i = 0; i < rounds; i++) {
        wait_while(&turn, 1);
        atomic_store(&turn, 1);
        wake(&turn);
    }
    return NULL;
}
int main(int argc, char **argv) {
    rounds = atol(argv[1]);
    cpu_caller = atoi(argv[2]);
    cpu_server = atoi(argv[3]);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    pin(cpu_caller);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rounds; i++) {
        atomic_store(&turn, 0);
        wake(&turn);
        wait_while(&turn, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, NULL);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f\n", ns / rounds / 1000.0);
    return 0;
}
EOF
cc -O2 -pthread -o "$dir/wake" "$dir/wake.c"
echo "futex round trip, mean of $n (microseconds):"
for mode in "one CPU:0 0" "two CPUs:0 1" "scheduler's choice:-1 -1"; do
  label=${mode%%:*}
  read -r c s <<<"${mode#*:}"
  printf '  %-20s %s\n' "$label" "$("$dir/wake" "$n" "$c" "$s")"
done
