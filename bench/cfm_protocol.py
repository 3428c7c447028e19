#!/usr/bin/python3
"""The torchcfm 2-D protocol (Tong et al., TMLR 2024, Table 2) with nfkit's `cfm` commands:
every flow-matching method on N(0,I)->8gaussians, N(0,I)->moons, 8gaussians->moons and
N(0,I)->scurve; exact W2 (EMD) between generated and held-out target samples with the adaptive
solver (and its NFE) and with 1, 2, 4, 8 Euler steps; mean +- sd over seeds.

Protocol: MLP 3 x 64 SELU (t concatenated), Adam(W) lr 1e-3, batch 512, sigma 0.1 (0 for rf),
10000 training rows, 1000 held out for validation, 1000 fresh test samples. Scaled for 2 cores
by --steps (torchcfm trains 20000 steps) and --seeds (torchcfm: 42-46).

    /usr/bin/python3 bench/cfm_protocol.py [--steps 5000] [--seeds 42,43,44] [--methods ...]
        [--tasks ...] [--json results.json] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
TASKS = {"normal-8gaussians": ("normal", "8gaussians"), "normal-moons": ("normal", "moons"),
         "8gaussians-moons": ("8gaussians", "moons"), "normal-scurve": ("normal", "scurve")}
METHODS = ["icfm", "otcfm", "sbcfm", "fm", "vpcfm", "wcfm", "rf", "rf+reflow", "flowmap"]
# Also accepted: METHOD+bossK (e.g. icfm+boss2): trained, then BOSS-straightened for K Euler
# steps (`--boss-straighten K`, as many tuning steps as training steps); its stored-grid W2 is the
# "tuned" column.


def nfkit(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"nfkit {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(root, "build", "apps", "nfkit"))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sinkhorn-iters", type=int, default=500)
    ap.add_argument("--json")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks.split(","):
            src, tgt = TASKS[task]
            for method in a.methods.split(","):
                base = method.split("+")[0]
                if base == "fm" and src != "normal":
                    continue  # Lipman's target path needs the Normal source
                for seed in seeds:
                    model = os.path.join(tmp, f"{task}-{method}-{seed}.h5")
                    train = ["cfm", "train", "--source", src, "--target", tgt, "--method", base,
                             "--steps", str(a.steps), "--n-samples", "11000", "--n-val", "1000",
                             "--out", model, "--seed", str(seed), "--threads", str(a.threads),
                             "--quiet", "--json"]
                    if base == "sbcfm":
                        train += ["--sinkhorn-iters", str(a.sinkhorn_iters)]
                    if method.endswith("+reflow"):
                        train += ["--reflow", "1"]
                    if "+boss" in method:
                        train += ["--boss-straighten", method.split("+boss")[1]]
                    t = nfkit(a.binary, train)
                    ev = ["cfm", "eval", "--model", model, "-n", "1000", "--euler-steps", "1,2,4,8", "--boss",
                          "--no-nll", "--seed", str(seed + 1000), "--threads", str(a.threads), "--json"]
                    if base == "flowmap":  # also jumps of the map itself
                        ev += ["--map-steps", "1,2,4,8"]
                    e = nfkit(a.binary, ev)
                    row = {"task": task, "method": method, "seed": seed, "w2": e["w2"], "nfe": e["nfe"],
                           "straightness": e["straightness"], "val_loss": t["val_loss"]}
                    for x in e["euler"]:
                        row[f"w2_euler{x['steps']}"] = x["w2"]
                    for x in e["boss"]:
                        row[f"w2_boss{x['steps']}"] = x["w2"]
                    for x in e.get("map", []):
                        row[f"w2_map{x['steps']}"] = x["w2"]
                    if "stored_grid" in e:
                        row["w2_tuned"] = e["stored_grid"]["w2"]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    cols = ["w2", "nfe", "w2_euler1", "w2_euler2", "w2_euler4", "w2_euler8", "w2_boss2", "w2_boss4",
            "w2_boss8", "w2_tuned", "w2_map1", "w2_map2", "w2_map4", "w2_map8", "straightness"]
    print(f"{a.steps} steps per round, seeds {a.seeds}; W2 exact (n = 1000), mean +- sd\n")
    print("| task | method | W2 adaptive | NFE | W2 Euler 1 | Euler 2 | Euler 4 | Euler 8 | BOSS 2 | BOSS 4 | BOSS 8 "
          "| BOSS-tuned K | map 1 | map 2 | map 4 | map 8 | straightness |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for task in a.tasks.split(","):
        for method in a.methods.split(","):
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            if not sel:
                continue
            cells = []
            for c in cols:
                v = [r[c] for r in sel if c in r]
                if not v:  # jumps exist for flow maps only
                    cells.append("-")
                    continue
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):.0f}" if c == "nfe" else f"{statistics.mean(v):.3f} +- {sd:.3f}")
            print(f"| {task} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
