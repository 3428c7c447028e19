#!/usr/bin/python3
"""Energy + force throughput of alanine dipeptide (OBC implicit solvent) in one run: nfkit's
OpenMMEnergy Context pool, a single-Context loop in the same binary, and a Python OpenMM loop
(Debian's python3-simtk) on the same configurations. Prints a Markdown table for
docs/benchmarks.md.

    /usr/bin/python3 bench/run_energy_bench.py [--n 4000] [--workers 2] [--repeats 3]
                                               [--platform Reference]

Each repeat measures the three back to back (the machines drift by tens of percent over
minutes); the table gives medians and the median of the per-repeat ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import h5py
import numpy as np

try:
    import openmm as mm
    from openmm import app
except ImportError:
    from simtk import openmm as mm
    from simtk.openmm import app

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--platform", default="Reference")
    ap.add_argument("--binary", default=os.path.join(root, "build", "bench", "energy_bench"))
    a = ap.parse_args()
    system_xml = os.path.join(root, "data", "alanine_dipeptide", "system.xml")
    pdb = app.PDBFile(os.path.join(root, "data", "alanine_dipeptide", "ala2.pdb"))
    x0 = np.asarray(pdb.getPositions()._value).ravel()  # nm
    rng = np.random.default_rng(1)
    x = x0[None, :] + 0.005 * rng.standard_normal((a.n, x0.size))
    tmp = tempfile.mkdtemp()
    pos = os.path.join(tmp, "pos.h5")
    with h5py.File(pos, "w") as f:
        f["x"] = x
    system = mm.XmlSerializer.deserialize(open(system_xml).read())
    props = {"Threads": "1"} if a.platform == "CPU" else {}
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(a.platform), props)
    rows = []
    for rep in range(a.repeats):
        out = subprocess.run([a.binary, "--positions", pos, "--workers", str(a.workers),
                              "--repeats", "1", "--platform", a.platform,
                              "--system", system_xml], check=True, capture_output=True, text=True).stdout
        nf = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
        t0 = time.perf_counter()
        for r in x:
            ctx.setPositions(r.reshape(-1, 3))
            s = ctx.getState(getEnergy=True, getForces=True)
            s.getPotentialEnergy(); s.getForces(asNumpy=True)
        py = a.n / (time.perf_counter() - t0)
        rows.append((nf["pool_per_s"], nf["serial_per_s"], py))
    med = [statistics.median(c) for c in zip(*rows)]
    r_serial = statistics.median(p / s for p, s, _ in rows)
    r_py = statistics.median(p / q for p, _, q in rows)
    print(f"| platform | workers | pool /s | single Context /s | Python OpenMM /s | pool / single | pool / Python |")
    print(f"|---|---|---|---|---|---|---|")
    print(f"| {a.platform} | {a.workers} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {r_serial:.2f} | {r_py:.2f} |")


if __name__ == "__main__":
    main()
