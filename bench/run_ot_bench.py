#!/usr/bin/python3
"""Exact optimal transport in one run: nfkit's exact_transport (LEMON's network simplex on a
certified sparse support) against Python Optimal Transport's ot.emd2 (a network simplex on the
dense n x n cost), on the T-W2 problem of the Boltzmann-generator evaluation: two samples of
alanine-dipeptide-like (phi, psi) torsions on the torus (three wrapped Gaussian basins, one
sample perturbed). Prints a Markdown table for docs/benchmarks.md.

    /usr/bin/python3 bench/run_ot_bench.py [--sizes 2000,5000,10000] [--threads 1]
                                           [--pot-max 10000]

POT's time covers ot.emd2 on a precomputed cost matrix (its matrix build is not counted);
nfkit's covers everything from the two clouds. Sizes above --pot-max run nfkit only (POT's
dense cost at n = 20000 needs 3.2 GB and its simplex minutes).
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import ot

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def torsions(rng, n, shift):
    """Three wrapped Gaussian basins (C7eq/beta, alpha_R, alpha_L) in radians."""
    centres = np.array([[-1.4, 2.6], [-1.3, -0.7], [1.0, 0.6]]) + shift
    weights = np.array([0.55, 0.4, 0.05])
    k = rng.choice(3, size=n, p=weights)
    x = centres[k] + rng.normal(0, 0.35, (n, 2))
    return np.mod(x + np.pi, 2 * np.pi) - np.pi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,5000,10000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pot-max", type=int, default=10000)
    ap.add_argument("--binary", default=os.path.join(root, "build", "bench", "ot_bench"))
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            a, b = torsions(rng, n, 0.0), torsions(rng, n, 0.15)
            pa, pb = os.path.join(tmp, "a.npy"), os.path.join(tmp, "b.npy")
            np.save(pa, a)
            np.save(pb, b)
            out = subprocess.run([args.binary, pa, pb, repr(2 * np.pi), str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            ours = json.loads(out)
            pot_cost = pot_s = None
            if n <= args.pot_max:
                d = np.abs(a[:, None, :] - b[None, :, :])
                d = np.minimum(d, 2 * np.pi - d)
                M = (d ** 2).sum(2)
                del d
                t = time.time()
                pot_cost = ot.emd2([], [], M, numItermax=10 ** 9)
                pot_s = time.time() - t
                del M
            rows.append((n, ours, pot_cost, pot_s))
            print(n, ours, pot_cost, pot_s, flush=True)
    print()
    print("| n per side | nfkit s | solves | candidate pairs | POT ot.emd2 s | POT / nfkit | T-W2 nfkit | rel. diff. |")
    print("|---|---|---|---|---|---|---|---|")
    for n, ours, pc, ps in rows:
        w = np.sqrt(ours["cost"])
        if pc is None:
            print(f"| {n} | {ours['seconds']:.2f} | {ours['rounds']} | {ours['arcs']} | - | - | {w:.6f} | - |")
        else:
            rel = abs(ours["cost"] - pc) / pc
            print(f"| {n} | {ours['seconds']:.2f} | {ours['rounds']} | {ours['arcs']} | {ps:.2f} | "
                  f"{ps / ours['seconds']:.1f}x | {w:.6f} | {rel:.1e} |")


if __name__ == "__main__":
    main()
