#!/usr/bin/env python3
"""Summarise the samples collected by tools/bench-peers.sh into a Markdown table and a TSV.

Inputs (all written by bench-peers.sh):
  rows.tsv     id, label, unit, better ("hi" = higher is better, "lo" = lower is better)
  samples.tsv  system, row id, repetition, value (a number, or ERR)
  header.md    Markdown printed above the table
  notes.md     Markdown printed below the table (may be empty)
Every cell is the median of its repetitions. Ratio columns are oriented so that > 1 means
kmsfs is better: kmsfs/peer for throughput, peer/kmsfs for times.
"""

import argparse
import statistics
import sys

SYSTEMS = ["raw", "bindfs", "gocryptfs", "securefs", "kmsfs"]
PEERS = ["gocryptfs", "securefs", "bindfs"]  # ratio columns, in this order


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def fmt_value(v, unit):
    if unit == "IOPS":
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    # seconds
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    return f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--header", required=True)
    ap.add_argument("--notes", required=True)
    ap.add_argument("--systems", required=True, help="comma list of the systems that were run")
    ap.add_argument("--md", required=True)
    ap.add_argument("--tsv", required=True)
    a = ap.parse_args()

    ran = set(a.systems.split(","))
    rows = read_tsv(a.rows)
    samples = {}
    for sysname, row, _rep, value in read_tsv(a.samples):
        samples.setdefault((sysname, row), []).append(value)

    md = [open(a.header, encoding="utf-8").read().rstrip("\n"), ""]
    cols = ["Measurement", "Unit"] + SYSTEMS + [f"kmsfs/{p}" for p in PEERS]
    md.append("| " + " | ".join(cols) + " |")
    md.append("|" + "|".join([":---", ":---"] + ["---:"] * (len(cols) - 2)) + "|")
    tsv = ["\t".join(["row", "measurement", "unit", "better"] + SYSTEMS
                     + [f"kmsfs/{p}" for p in PEERS] + ["reps_ok"])]

    for rid, label, unit, better in rows:
        medians, cells, tsv_cells, reps_ok = {}, [], [], []
        for s in SYSTEMS:
            vals = samples.get((s, rid))
            if not vals:
                cells.append("n/a" if s in ran else "not run")
                tsv_cells.append("")
                continue
            ok = [float(v) for v in vals if v != "ERR"]
            errs = len(vals) - len(ok)
            reps_ok.append(f"{s}:{len(ok)}/{len(vals)}")
            if not ok:
                cells.append("**ERR**")
                tsv_cells.append("ERR")
                continue
            m = statistics.median(ok)
            medians[s] = m
            cell = fmt_value(m, unit)
            if errs:
                cell += f" ({len(ok)}/{len(vals)} ok)"
            cells.append(cell)
            tsv_cells.append(f"{m:.6g}")
        ratios, tsv_ratios = [], []
        for p in PEERS:
            k, v = medians.get("kmsfs"), medians.get(p)
            if k is None or v is None or k == 0 or v == 0:
                ratios.append("–")
                tsv_ratios.append("")
                continue
            r = k / v if better == "hi" else v / k
            ratios.append(f"{r:.2f}")
            tsv_ratios.append(f"{r:.4f}")
        md.append("| " + " | ".join([label.replace("|", "\\|"), unit] + cells + ratios) + " |")
        tsv.append("\t".join([rid, label, unit, better] + tsv_cells + tsv_ratios
                             + [",".join(reps_ok)]))

    notes = open(a.notes, encoding="utf-8").read().strip("\n")
    if notes:
        md += ["", notes]
    text = "\n".join(md) + "\n"
    with open(a.md, "w", encoding="utf-8") as f:
        f.write(text)
    with open(a.tsv, "w", encoding="utf-8") as f:
        f.write("\n".join(tsv) + "\n")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
