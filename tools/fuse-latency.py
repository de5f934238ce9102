#!/usr/bin/env python3
"""FUSE request latency of one command on one mount, as the kernel sees it.

    tools/fuse-latency.py MOUNTPOINT [--top N] -- COMMAND [ARGS...]

Runs COMMAND with the kernel's FUSE request tracepoints on (Linux 6.13+:
fuse:fuse_request_send and fuse:fuse_request_end), then prints, for the requests to the file
system mounted at MOUNTPOINT, a table per opcode (count, total, median, 90th percentile and
longest time from the kernel queuing a request to the daemon's reply) and the N slowest
requests with their position in the run. Requests the same in every run at the same position
point at something that is not the disk (this is how the daemon's descriptor-table growth was
found, 2026-12-07). Root only (tracefs); mounts tracefs at /sys/kernel/tracing when it is not.
Other FUSE mounts' requests are left out (told apart by the connection, the mount's st_dev).
"""

import os
import re
import subprocess
import sys
import time

TRACING = "/sys/kernel/tracing"
EVENTS = ("fuse_request_send", "fuse_request_end")
LINE = re.compile(
    r"\s(\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)"
    r"(?: opcode \d+ \((\w+)\))?"
)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def tracing_ready():
    if not os.path.isdir(os.path.join(TRACING, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)
    for e in EVENTS:
        if not os.path.isdir(os.path.join(TRACING, "events", "fuse", e)):
            sys.exit(f"fuse-latency: no fuse:{e} tracepoint (Linux 6.13 or later needed)")


def enable(on):
    for e in EVENTS:
        write(os.path.join(TRACING, "events", "fuse", e, "enable"), "1" if on else "0")


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    args = sys.argv[1:]
    if "--" not in args or args.index("--") < 1:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    split = args.index("--")
    opts, command = args[:split], args[split + 1 :]
    mountpoint, top = opts[0], 10
    if "--top" in opts:
        top = int(opts[opts.index("--top") + 1])
    if not command:
        sys.exit("fuse-latency: no command given")
    connection = str(os.stat(mountpoint).st_dev)
    tracing_ready()
    write(os.path.join(TRACING, "trace"), "")
    enable(True)
    start = time.monotonic()
    try:
        rc = subprocess.run(command).returncode
    finally:
        elapsed = time.monotonic() - start
        enable(False)
    with open(os.path.join(TRACING, "trace")) as f:
        lines = f.read().splitlines()
    sent, done, position = {}, [], 0
    for line in lines:
        m = LINE.search(line)
        if not m or m.group(3) != connection:
            continue
        t, kind, _, req, name = m.groups()
        if kind == "send":
            position += 1
            sent[req] = (float(t), name, position)
        elif req in sent:
            t0, name, pos = sent.pop(req)
            done.append(((float(t) - t0) * 1e6, name, pos, t0))
    print(f"{' '.join(command)}: exit {rc}, {elapsed:.3f} s, {len(done)} requests answered")
    if not done:
        return
    first = min(d[3] for d in done)
    by_op = {}
    for us, name, _, _ in done:
        by_op.setdefault(name, []).append(us)
    print(f"{'opcode':24} {'count':>7} {'total ms':>9} {'p50 us':>8} {'p90 us':>8} {'max us':>9}")
    for name, v in sorted(by_op.items(), key=lambda kv: -sum(kv[1])):
        v.sort()
        print(
            f"{name:24} {len(v):7} {sum(v) / 1e3:9.1f} {percentile(v, 0.5):8.0f} "
            f"{percentile(v, 0.9):8.0f} {v[-1]:9.0f}"
        )
    print(f"slowest {top}:")
    for us, name, pos, t0 in sorted(done, reverse=True)[:top]:
        print(f"  {us / 1e3:8.2f} ms  {name:22} request #{pos} at +{(t0 - first) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
