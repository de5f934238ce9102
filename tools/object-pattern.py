#!/usr/bin/env python3
"""git's loose-object pattern, timed per object, on one or more directories side by side.

Per object: create a temporary file (O_CREAT|O_EXCL, mode 0444), write 300 bytes, close it,
link it under its final name, unlink the temporary name: what `git add` does for every file
(CREATE, WRITE, FLUSH, RELEASE, LINK, UNLINK and the lookups around them on a FUSE mount). The
directories take turns, ROUNDS times, so that a drift of the machine hits them alike; the
median per directory is printed. Mount the file systems first (fresh volumes), e.g.:

    tools/object-pattern.py --objects 3000 --rounds 3 /mnt/kmsfs/x /mnt/gocryptfs/x /tmp/raw/x

Each directory given is made, filled and left in place (remove it afterwards).
"""
import argparse
import os
import statistics
import time


def objects(d, n):
    os.makedirs(d, exist_ok=True)
    data = b"x" * 300
    t = time.perf_counter()
    for i in range(n):
        tmp = os.path.join(d, "tmp_obj_%d" % i)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o444)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.link(tmp, os.path.join(d, "obj%d" % i))
        os.unlink(tmp)
    return (time.perf_counter() - t) / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    got = {d: [] for d in a.dirs}
    for r in range(a.rounds):
        for d in a.dirs:
            got[d].append(objects(os.path.join(d, "round%d" % r), a.objects))
    for d in a.dirs:
        v = got[d]
        print("%-40s median %7.1f us per object  (%s)" % (
            d, statistics.median(v), ", ".join("%.1f" % x for x in v)))


if __name__ == "__main__":
    main()
