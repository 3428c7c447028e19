#!/usr/bin/python3
"""Fit quality per unit of time: nfkit's `flow train` with its defaults against zuko's neural
spline flow with its usual settings, against the same model and training loop as nfkit's
defaults written in plain PyTorch (--pytorch), and optionally nfkit configured otherwise, on
sets drawn from nfkit's built-in densities, whose log-densities are exact.

For every set, seed and thread count, one data file (bench/density_sets: /train, /test and the
exact /test_log_p) is shared by all peers. Each peer trains on /train only and is scored on
/test: gap = mean over test rows of log p(x) - log q(x) (nats; 0 is a perfect fit), with the
wall time of training. The table reports the mean and the seed-to-seed standard deviation.

    /usr/bin/python3 bench/fit_bench.py --zuko PATH_TO_ZUKO_CHECKOUT \
        [--sets banana:2,banana:6,...] [--seeds 1,2,3] [--threads 1,2] \
        [--pytorch] [--n-train 20000] [--n-test 20000] [--variant NAME='--flow nsf-ar ...']
        [--no-default]

zuko runs in this process under Debian's python3-torch, with the recipe its documentation and
the issue describe: features standardised by the training mean and standard deviation,
NSF(D, transforms=5, hidden_features=[128, 128], bins=8), AdamW(lr=1e-3) with cosine decay to 0,
batch 512, 40 epochs of shuffled minibatches, float32. Its time is the training loop (model
construction, standardisation and epochs); nfkit's is the whole `nfkit flow train` process
(start-up, reading the file, validation, writing the model), so the comparison slightly
favours zuko.

--pytorch adds the peer "pytorch": the model and loop nfkit's defaults chose for this set
(read from the settings nfkit's run printed, so it needs the default nfkit peer): the same
10% validation split rule, standardisation, blocks (affine MADE blocks where nfkit puts them,
then MADE rational-quadratic spline autoregressive transforms, with reverse permutations; or
couplings with random permutations above 32 dimensions), knots, identity start, AdamW with warm-up and cosine
decay, gradient clipping at 10, minibatches drawn with replacement, validation every
eval_every steps with early stopping and the best weights restored, in float32. Its time is
the whole fit in this process, from the split to the restored best weights.
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


def pytorch_fit(data, settings, threads, seed):
    """nfkit's default model and loop (flows/src/fit_settings.cpp, trainer.cpp) in plain PyTorch."""
    sys.path.insert(0, here)
    import torch
    import torch.nn as nn
    from flow_bench_ref import MADE, MAF, MLP, rq_spline
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    s = settings
    D, K, B, H, L = (s["dim"], s["bins"], s["bound"], s["hidden"], s["layers"])
    P = 3 * K - 1
    shift = math.log(math.expm1(1.0 - 1e-3)) if s["identity_at_zero"] else 0.0

    class SplineAR(nn.Module):
        def __init__(self):
            super().__init__()
            self.made = MADE(D, P, H, s["hidden_layers"])

        def forward(self, x):
            p = self.made(x)
            y, lad = rq_spline(x, p[..., :K], p[..., K:2 * K], p[..., 2 * K:] + shift, B)
            return y, lad.sum(1)

    class SplineCoupling(nn.Module):
        def __init__(self, parity):
            super().__init__()
            idx = torch.arange(D)
            self.tr, self.id = idx[idx % 2 == parity], idx[idx % 2 != parity]
            self.net = MLP(len(self.id), len(self.tr) * P, hidden=H, layers=s["hidden_layers"])

        def forward(self, x):
            xb = x.index_select(1, self.tr)
            p = self.net(x.index_select(1, self.id)).view(x.shape[0], len(self.tr), P)
            yb, lad = rq_spline(xb, p[..., :K], p[..., K:2 * K], p[..., 2 * K:] + shift, B)
            return x.index_copy(1, self.tr, yb), lad.sum(1)

    class AffineCoupling(nn.Module):
        def __init__(self, parity, clamp=3.0):
            super().__init__()
            idx = torch.arange(D)
            self.tr, self.id, self.clamp = idx[idx % 2 == parity], idx[idx % 2 != parity], clamp
            self.net = MLP(len(self.id), len(self.tr) * 2, hidden=H, layers=s["hidden_layers"])

        def forward(self, x):
            p = self.net(x.index_select(1, self.id)).view(x.shape[0], len(self.tr), 2)
            sc = self.clamp * torch.tanh(p[..., 0] / self.clamp)
            yb = x.index_select(1, self.tr) * torch.exp(sc) + p[..., 1]
            return x.index_copy(1, self.tr, yb), sc.sum(1)

    class Flow(nn.Module):
        def __init__(self, train):
            super().__init__()
            self.register_buffer("mu", train.mean(0))
            self.register_buffer("log_sd", torch.log(train.std(0).clamp_min(1e-12)))
            ar = s["flow"] == "nsf-ar"
            A = s.get("affine_layers", 0)
            # A affine blocks (MAF or affine couplings), each followed by a permutation, then
            # L spline blocks with permutations between them.
            affine = [MAF(D, hidden=H, layers=s["hidden_layers"]) if ar else AffineCoupling(l % 2)
                      for l in range(A)]
            splines = [SplineAR() if ar else SplineCoupling(l % 2) for l in range(L)]
            self.blocks = nn.ModuleList(affine + splines)
            perm = lambda: torch.arange(D - 1, -1, -1) if ar else torch.randperm(D)
            self.perms = [perm() for _ in range(A + L - 1)]

        def log_prob(self, x):
            z = (x - self.mu) * torch.exp(-self.log_sd)
            total = -self.log_sd.sum()
            for l, b in enumerate(self.blocks):
                z, lad = b(z)
                total = total + lad
                if l < len(self.perms):
                    z = z.index_select(1, self.perms[l])
            return -0.5 * (z * z).sum(1) - 0.5 * D * math.log(2 * math.pi) + total

    x = torch.as_tensor(data["train"], dtype=torch.float32)
    test = torch.as_tensor(data["test"], dtype=torch.float32)
    t0 = time.perf_counter()
    n_val = max(1, math.ceil(0.1 * len(x)))
    perm = torch.randperm(len(x))
    val, train = x[perm[:n_val]], x[perm[n_val:]]
    flow = Flow(train)
    steps, warm, every = s["steps"], s["warmup"], s["eval_every"]
    opt = torch.optim.AdamW(flow.parameters(), lr=s["lr"], weight_decay=0.0)

    def lr_at(step):
        if warm > 0 and step < warm:
            return s["lr"] * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, steps - warm))
        return s["lr"] * 0.5 * (1 + math.cos(math.pi * progress))

    best, best_state, since = math.inf, None, 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(len(train), (s["batch_size"],))
        loss = -flow.log_prob(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            with torch.no_grad():
                v = -flow.log_prob(val).mean().item()
            if v < best:
                best, since = v, 0
                best_state = {k: t.clone() for k, t in flow.state_dict().items()}
            else:
                since += 1
                if s["patience"] > 0 and since >= s["patience"]:
                    break
    flow.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        lq = flow.log_prob(test)
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
    ap.add_argument("--pytorch", action="store_true",
                    help="also fit nfkit's default model and loop written in plain PyTorch")
    ap.add_argument("--binary", default=os.path.join(root, "build", "apps", "nfkit"))
    ap.add_argument("--sets-binary", default=os.path.join(root, "build", "bench", "density_sets"))
    ap.add_argument("--json", help="also write every result to this JSON file")
    a = ap.parse_args()
    import h5py

    peers = [] if a.no_default else [("nfkit", [])]
    peers += [(v.split("=", 1)[0], v.split("=", 1)[1].split()) for v in a.variant]
    if a.pytorch:
        if a.no_default:
            ap.error("--pytorch reads the settings of nfkit's default run: drop --no-default")
        peers.append(("pytorch", "pytorch"))
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
                settings = None
                for name, args in peers:
                    extra = {}
                    if args is None:
                        lq, sec = zuko_fit(a.zuko, data, threads, seed)
                    elif args == "pytorch":
                        lq, sec = pytorch_fit(data, dict(settings, dim=data["train"].shape[1]),
                                              threads, seed)
                    else:
                        lq, sec, extra = nfkit_fit(a.binary, set_path, work, args, threads, seed)
                    r = {"set": spec, "threads": threads, "seed": seed, "peer": name,
                         "gap": lp - lq, "seconds": sec}
                    if "settings" in extra:
                        r["settings"] = extra["settings"]
                        if name == "nfkit":
                            settings = extra["settings"]
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
