#!/usr/bin/python3
"""Runs nfkit's flow-matching benchmark (cfm_bench) and its plain-PyTorch peer
(cfm_bench_ref.py) in one go, with the same threads, and prints a Markdown table of
throughputs and ratios (nfkit / PyTorch) for docs/benchmarks.md.

    /usr/bin/python3 bench/run_cfm_bench.py [--threads 2] [--steps 300] [--repeats 3]

Each configuration is measured as adjacent pairs (nfkit then PyTorch, the order swapped on
every repeat); the table reports the median throughput of each and the median paired ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
FIELDS = [("train_samples_per_s", "train (samples/s)"), ("sample_samples_per_s", "Euler-100 sampling (samples/s)"),
          ("ot_pairings_per_s", "exact OT pairing, 512 x 512 (per s)")]


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dims", default="2,16")
    ap.add_argument("--binary", default=os.path.join(root, "build", "bench", "cfm_bench"))
    a = ap.parse_args()
    common = ["--threads", str(a.threads), "--steps", str(a.steps)]
    results, ratios = {}, {}
    for rep in range(a.repeats):
        for dim in [int(d) for d in a.dims.split(",")]:
            sel = ["--dims", str(dim)]
            cmds = [("nfkit", [a.binary] + common + sel),
                    ("pytorch", [sys.executable, os.path.join(here, "cfm_bench_ref.py")] + common + sel)]
            pair = {}
            for impl, cmd in (cmds if rep % 2 == 0 else cmds[::-1]):
                pair[impl] = run(cmd)[0]
                results.setdefault((dim, impl), []).append(pair[impl])
            for f, _ in FIELDS:
                if pair["pytorch"].get(f):
                    ratios.setdefault((dim, f), []).append(pair["nfkit"][f] / pair["pytorch"][f])
    import torch
    print(f"threads {a.threads}, batch 512, float32, {a.steps} timed steps, median of {a.repeats} adjacent pairs; "
          f"PyTorch {torch.__version__} (Python), LibTorch same BLAS; OT peer: scipy linear_sum_assignment\n")
    print("| D | measure | nfkit | PyTorch / scipy | ratio |")
    print("|---|---|---|---|---|")
    for dim in sorted({d for d, _ in results}):
        for f, label in FIELDS:
            med = lambda impl: statistics.median(r[f] for r in results[(dim, impl)] if r.get(f))
            if (dim, f) not in ratios:
                continue
            print(f"| {dim} | {label} | {med('nfkit'):,.0f} | {med('pytorch'):,.0f} | "
                  f"{statistics.median(ratios[(dim, f)]):.2f} |")


if __name__ == "__main__":
    main()
