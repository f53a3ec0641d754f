#!/usr/bin/env python3
"""Interleaved A/B of two (or more) imgclass builds on one model: `imgclass bench` of each binary
in turn, --rounds times, so a host whose speed drifts affects every binary alike. Prints per binary
the median over rounds of the per-round medians and the minimum over rounds, in ms per image, and
the ratio of each binary's median to the first's.

    python3 scripts/bench/ab_binaries.py --model mobilenet_v3_large --batch 1 \\
        --iters 300 --rounds 8 /tmp/imgclass-old target/release/imgclass
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("binaries", nargs="+")
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    med: dict[str, list[float]] = {b: [] for b in a.binaries}
    mins: dict[str, list[float]] = {b: [] for b in a.binaries}
    for _ in range(a.rounds):
        for b in a.binaries:
            out = subprocess.run(
                [b, "bench", "--model", a.model, "--batch", str(a.batch), "--iters",
                 str(a.iters), "--random-weights"],
                check=True, capture_output=True, text=True).stdout
            d = json.loads(out.strip().splitlines()[-1])
            med[b].append(d["forward_ms"]["median"] / a.batch)
            mins[b].append(d["forward_ms"]["min"] / a.batch)
    base = statistics.median(med[a.binaries[0]])
    for b in a.binaries:
        m = statistics.median(med[b])
        print(f"{b}: median {m:.3f} ms/img, min {min(mins[b]):.3f} ms/img, "
              f"{m / base:.3f}x the first ({a.model}, batch {a.batch}, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
