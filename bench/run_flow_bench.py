#!/usr/bin/python3
"""Runs nfkit's flow benchmark and its plain-PyTorch peer in one go, with the same threads,
and prints a Markdown table of throughputs and ratios (nfkit / PyTorch) for
docs/benchmarks.md.

    /usr/bin/python3 bench/run_flow_bench.py [--threads 2] [--steps 200] [--repeats 3]

The machines drift in speed by tens of percent over minutes, so each configuration is
measured as adjacent pairs (nfkit then PyTorch, the order swapped on every repeat); the table
reports the median throughput of each and the median of the paired ratios. log_prob is timed
inside each process as the best of 5 rounds (both peers alike).

    --kinds maf --dims 64 measures one cell.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="realnvp,maf,nsf")
    ap.add_argument("--dims", default="2,16,64")
    ap.add_argument("--binary", default=os.path.join(root, "build", "bench", "flow_bench"))
    a = ap.parse_args()
    common = ["--threads", str(a.threads), "--steps", str(a.steps)]
    configs = [(k, int(d)) for k in a.kinds.split(",") for d in a.dims.split(",")]
    results, ratios = {}, {}
    for rep in range(a.repeats):
        for kind, dim in configs:
            sel = ["--kinds", kind, "--dims", str(dim)]
            cmds = [("nfkit", [a.binary] + common + sel),
                    ("pytorch", [sys.executable, os.path.join(here, "flow_bench_ref.py")] + common + sel)]
            pair = {}
            for impl, cmd in (cmds if rep % 2 == 0 else cmds[::-1]):
                pair[impl] = run(cmd)[0]
                results.setdefault((kind, dim, impl), []).append(pair[impl])
            for f in ("train_samples_per_s", "log_prob_samples_per_s"):
                ratios.setdefault((kind, dim, f), []).append(pair["nfkit"][f] / pair["pytorch"][f])
    import torch
    print(f"threads {a.threads}, batch 512, float32, {a.steps} timed steps, median of {a.repeats} adjacent pairs; "
          f"log_prob best of 5 rounds; {cpu_model()}; "
          f"PyTorch {torch.__version__} (Python), LibTorch same BLAS\n")
    print("| flow | D | train nfkit (samples/s) | train PyTorch | ratio | log_prob nfkit | log_prob PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    keys = sorted({(k, d) for k, d, _ in results}, key=lambda t: (["realnvp", "maf", "nsf"].index(t[0]), t[1]))
    for kind, dim in keys:
        med = lambda impl, f: statistics.median(r[f] for r in results[(kind, dim, impl)])
        ratio = lambda f: statistics.median(ratios[(kind, dim, f)])
        t, l = "train_samples_per_s", "log_prob_samples_per_s"
        print(f"| {kind} | {dim} | {med('nfkit', t):,.0f} | {med('pytorch', t):,.0f} | {ratio(t):.2f} "
              f"| {med('nfkit', l):,.0f} | {med('pytorch', l):,.0f} | {ratio(l):.2f} |")

if __name__ == "__main__":
    main()
