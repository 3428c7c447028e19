#!/usr/bin/python3
"""Fit quality per unit of time: nfkit's `flow train` with its defaults against zuko's neural
spline flow with its usual settings (and optionally nfkit configured otherwise), on sets drawn
from nfkit's built-in densities, whose log-densities are exact.

For every set, seed and thread count, one data file (bench/density_sets: /train, /test and the
exact /test_log_p) is shared by all peers. Each peer trains on /train only and is scored on
/test: gap = mean over test rows of log p(x) - log q(x) (nats; 0 is a perfect fit), with the
wall time of training. The table reports the mean and the seed-to-seed standard deviation.

    /usr/bin/python3 bench/fit_bench.py --zuko PATH_TO_ZUKO_CHECKOUT \
        [--sets banana:2,banana:6,...] [--seeds 1,2,3] [--threads 1,2] \
        [--n-train 20000] [--n-test 20000] [--variant NAME='--flow nsf-ar ...'] [--no-default]

zuko runs in this process under Debian's python3-torch, with the recipe its documentation and
the issue describe: features standardised by the training mean and standard deviation,
NSF(D, transforms=5, hidden_features=[128, 128], bins=8), AdamW(lr=1e-3) with cosine decay to 0,
batch 512, 40 epochs of shuffled minibatches, float32. Its time is the training loop (model
construction, standardisation and epochs); nfkit's is the whole `nfkit flow train` process
(start-up, reading the file, validation, writing the model), so the comparison slightly
favours zuko.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def zuko_fit(zuko_path, data, threads, seed, epochs=40, batch=512):
    sys.path.insert(0, zuko_path)
    import torch
    import zuko
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train = torch.as_tensor(data["train"], dtype=torch.float32)
    test = torch.as_tensor(data["test"], dtype=torch.float32)
    t0 = time.perf_counter()
    mu, sd = train.mean(0), train.std(0)
    xs = (train - mu) / sd
    flow = zuko.flows.NSF(train.shape[1], transforms=5, hidden_features=[128, 128], bins=8)
    steps_per_epoch = math.ceil(len(xs) / batch)
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(batch):
            loss = -flow().log_prob(xs[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        lq = flow().log_prob((test - mu) / sd) - torch.log(sd).sum()
    return float(lq.double().mean()), seconds


def nfkit_fit(binary, set_path, work, args, threads, seed):
    model = os.path.join(work, "model.h5")
    cmd = [binary, "flow", "train", "--data", set_path + ":/train", "--out", model, "--restart",
           "--seed", str(seed), "--threads", str(threads), "--quiet", "--json"] + args
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - t0
    train = json.loads(out.strip().splitlines()[-1])
    out = subprocess.run([binary, "flow", "eval", "--model", model, "--data", set_path + ":/test",
                          "--threads", str(threads), "--json"],
                         check=True, capture_output=True, text=True).stdout
    ev = json.loads(out.strip().splitlines()[-1])
    return -ev["nll"], seconds, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zuko", help="path of a zuko checkout (the folder that holds zuko/)")
    ap.add_argument("--sets", default="banana:2,banana:6,banana:16,rings,spirals,checkerboard,"
                                      "mixture:6:16,funnel:6")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=20000)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=ARGS: also run `nfkit flow train` with these options")
    ap.add_argument("--no-default", action="store_true", help="skip nfkit with its defaults")
    ap.add_argument("--binary", default=os.path.join(root, "build", "apps", "nfkit"))
    ap.add_argument("--sets-binary", default=os.path.join(root, "build", "bench", "density_sets"))
    ap.add_argument("--json", help="also write every result to this JSON file")
    a = ap.parse_args()
    import h5py

    peers = [] if a.no_default else [("nfkit", [])]
    peers += [(v.split("=", 1)[0], v.split("=", 1)[1].split()) for v in a.variant]
    if a.zuko:
        peers.append(("zuko", None))
    results = []
    work = tempfile.mkdtemp(prefix="fit_bench_")
    for spec in a.sets.split(","):
        for threads in map(int, a.threads.split(",")):
            for seed in map(int, a.seeds.split(",")):
                set_path = os.path.join(work, "set.h5")
                subprocess.run([a.sets_binary, spec, str(a.n_train), str(a.n_test), str(seed),
                                set_path], check=True)
                with h5py.File(set_path, "r") as f:
                    data = {k: f[k][...] for k in ("train", "test", "test_log_p")}
                lp = float(data["test_log_p"].mean())
                for name, args in peers:
                    extra = {}
                    if args is None:
                        lq, sec = zuko_fit(a.zuko, data, threads, seed)
                    else:
                        lq, sec, extra = nfkit_fit(a.binary, set_path, work, args, threads, seed)
                    r = {"set": spec, "threads": threads, "seed": seed, "peer": name,
                         "gap": lp - lq, "seconds": sec}
                    if "settings" in extra:
                        r["settings"] = extra["settings"]
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)

    names = [p[0] for p in peers]
    print(f"n_train {a.n_train}, n_test {a.n_test}, seeds {a.seeds}; gap = mean(log p - log q) "
          "on the test rows [nats], mean ± sd over seeds; time = training wall seconds\n")
    print("| set | threads | " + " | ".join(f"{n} gap | {n} s" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for spec in a.sets.split(","):
        for threads in map(int, a.threads.split(",")):
            cells = []
            for n in names:
                rs = [r for r in results if r["set"] == spec and r["threads"] == threads and r["peer"] == n]
                g = [r["gap"] for r in rs]
                s = [r["seconds"] for r in rs]
                sd = statistics.stdev(g) if len(g) > 1 else float("nan")
                cells.append(f"{statistics.mean(g):.3f} ± {sd:.3f} | {statistics.mean(s):.1f}")
            print(f"| {spec} | {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
