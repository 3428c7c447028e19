#!/usr/bin/python3
"""The peer of flow_bench.cpp: the same flows written in plain PyTorch (Python), run by
Debian's python3-torch with the same threads and BLAS. Same architectures and arithmetic as
nfkit's recipes (flows/builder.h): a fixed standardisation, then 4 blocks of
  realnvp: affine coupling (alternating parity), random permutations between blocks (D > 2)
  maf:     MADE affine autoregressive + reverse permutation between blocks
  nsf:     rational-quadratic spline coupling (8 bins, bound 4, identity tails)
with MLP/MADE conditioners of 2 hidden layers of 64 ReLU units, a standard normal base, and
a training step of: seeded minibatch draw, NLL, backward, gradient-norm clipping (10), AdamW.

    /usr/bin/python3 bench/flow_bench_ref.py --threads 2 [--steps 200] [--profile PREFIX]

--profile writes PREFIX-KIND-D.trace.json, a Chrome trace of one log_prob call (the same as
flow_bench --profile writes for nfkit).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, n_in, n_out, hidden=64, layers=2):
        super().__init__()
        dims = [n_in] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], n_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


def rq_spline(x, uw, uh, ud, bound, min_bin=1e-3, min_d=1e-3):
    """Forward rational-quadratic spline with identity tails (Durkan et al. 2019)."""
    K = uw.shape[-1]

    def knots(u):
        size = min_bin + (1 - min_bin * K) * torch.softmax(u, -1)
        cum = F.pad(torch.cumsum(size, -1), (1, 0))
        cum = 2 * bound * cum - bound
        cum = torch.cat([torch.full_like(cum[..., :1], -bound), cum[..., 1:K],
                         torch.full_like(cum[..., :1], bound)], -1)
        return cum, cum[..., 1:] - cum[..., :-1]

    cw, w = knots(uw)
    ch, h = knots(uh)
    one = torch.ones_like(uw[..., :1])
    d = torch.cat([one, min_d + F.softplus(ud), one], -1)
    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)
    idx = (v.unsqueeze(-1) >= cw[..., 1:K]).sum(-1, keepdim=True).clamp_max(K - 1)
    g = lambda t: t.gather(-1, idx).squeeze(-1)
    xk, wk, yk, hk, dk, dk1 = g(cw), g(w), g(ch), g(h), g(d), g(d[..., 1:])
    sk = hk / wk
    dsum = dk1 + dk - 2 * sk
    xi = ((v - xk) / wk).clamp(0, 1)
    xi1 = xi * (1 - xi)
    den = sk + dsum * xi1
    y = yk + hk * (sk * xi * xi + dk * xi1) / den
    dnum = sk * sk * (dk1 * xi * xi + 2 * sk * xi1 + dk * (1 - xi) * (1 - xi))
    lad = torch.log(dnum) - 2 * torch.log(den)
    return torch.where(inside, y, x), torch.where(inside, lad, torch.zeros_like(lad))


class Coupling(nn.Module):
    def __init__(self, dim, parity, spline, bins=8, bound=4.0, clamp=3.0):
        super().__init__()
        idx = torch.arange(dim)
        self.register_buffer("tr", idx[idx % 2 == parity], persistent=False)
        self.register_buffer("id", idx[idx % 2 != parity], persistent=False)
        self.spline, self.bins, self.bound, self.clamp = spline, bins, bound, clamp
        self.P = 3 * bins - 1 if spline else 2
        self.net = MLP(len(self.id), len(self.tr) * self.P)

    def forward(self, x):
        xa, xb = x.index_select(1, self.id), x.index_select(1, self.tr)
        p = self.net(xa).view(x.shape[0], xb.shape[1], self.P)
        if self.spline:
            K = self.bins
            yb, lad = rq_spline(xb, p[..., :K], p[..., K:2 * K], p[..., 2 * K:], self.bound)
        else:
            s = self.clamp * torch.tanh(p[..., 0] / self.clamp)
            yb, lad = xb * torch.exp(s) + p[..., 1], s
        return x.index_copy(1, self.tr, yb), lad.sum(1)


class MaskedLinear(nn.Module):
    def __init__(self, mask):
        super().__init__()
        out, n_in = mask.shape
        bound = 1 / math.sqrt(max(n_in, 1))
        self.weight = nn.Parameter(torch.empty(out, n_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out).uniform_(-bound, bound))
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return torch.addmm(self.bias, x, (self.weight * self.mask).t())


class MADE(nn.Module):
    """Masked MLP (Germain et al. 2015): the n_params outputs of variable i see inputs < i."""

    def __init__(self, dim, n_params, hidden=64, layers=2):
        super().__init__()
        self.dim, self.n_params = dim, n_params
        prev = torch.arange(1, dim + 1)
        mods = []
        for _ in range(layers):
            deg = torch.arange(hidden) % max(dim - 1, 1) + 1
            if dim == 1:
                deg = torch.zeros_like(deg)
            mods.append(MaskedLinear(deg[:, None] >= prev[None, :]))
            prev = deg
        out_deg = torch.arange(1, dim + 1).repeat_interleave(n_params)
        last = MaskedLinear(out_deg[:, None] > prev[None, :])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.layers = nn.ModuleList(mods + [last])

    def forward(self, x):
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h).view(-1, self.dim, self.n_params)


class MAF(nn.Module):
    def __init__(self, dim, hidden=64, layers=2, clamp=3.0):
        super().__init__()
        self.clamp = clamp
        self.made = MADE(dim, 2, hidden, layers)

    def forward(self, x):
        p = self.made(x)
        s = self.clamp * torch.tanh(p[..., 0] / self.clamp)
        return x * torch.exp(s) + p[..., 1], s.sum(1)


class Permutation(nn.Module):
    def __init__(self, perm):
        super().__init__()
        self.register_buffer("perm", torch.as_tensor(perm), persistent=False)

    def forward(self, x):
        return x.index_select(1, self.perm), torch.zeros(x.shape[0], dtype=x.dtype)


class Flow(nn.Module):
    def __init__(self, kind, dim, data, layers=4):
        super().__init__()
        self.register_buffer("shift", data.mean(0))
        self.register_buffer("log_scale", torch.log(data.std(0).clamp_min(1e-12)))
        g = torch.Generator().manual_seed(1)
        blocks = []
        for l in range(layers):
            if kind == "maf":
                blocks.append(MAF(dim))
                if dim > 1 and l + 1 < layers:
                    blocks.append(Permutation(list(range(dim - 1, -1, -1))))
            else:
                blocks.append(Coupling(dim, l % 2, spline=(kind == "nsf")))
                if dim > 2 and l + 1 < layers:
                    blocks.append(Permutation(torch.randperm(dim, generator=g)))
        self.blocks = nn.ModuleList(blocks)
        self.dim = dim

    def log_prob(self, x):
        z = (x - self.shift) * torch.exp(-self.log_scale)
        total = -self.log_scale.sum()
        for b in self.blocks:
            z, lad = b(z)
            total = total + lad
        return -0.5 * (z * z).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + total


def bench(kind, dim, steps, evals, batch=512, profile=None):
    torch.manual_seed(0)
    data = torch.randn(4096, dim)
    flow = Flow(kind, dim, data)
    x = torch.randn(batch, dim)
    with torch.no_grad():
        flow.eval()
        for _ in range(10):
            flow.log_prob(x)
        per_round, lp = max(1, evals // 5), 0.0
        for _ in range(5):  # the best of 5 rounds, as flow_bench.cpp
            t0 = time.perf_counter()
            for _ in range(per_round):
                flow.log_prob(x)
            lp = max(lp, per_round * batch / (time.perf_counter() - t0))
        if profile:
            with torch.autograd.profiler.profile() as prof:
                flow.log_prob(x)
            prof.export_chrome_trace(f"{profile}-{kind}-{dim}.trace.json")
    flow.train()
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-3, weight_decay=0.0)

    def run(n, seed0):
        for step in range(n):
            torch.manual_seed(seed0 + step)
            idx = torch.randint(data.shape[0], (batch,))
            loss = -flow.log_prob(data.index_select(0, idx)).mean()
            if not math.isfinite(loss.item()):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            if not math.isfinite(norm.item()):
                continue
            opt.step()
        with torch.no_grad():  # the final validation pass nfkit's Trainer makes
            flow.eval()
            -flow.log_prob(data).mean().item()
            flow.train()

    run(10, 0)
    t0 = time.perf_counter()
    run(steps, 1000)
    train = steps * batch / (time.perf_counter() - t0)
    return {"impl": "pytorch", "kind": kind, "dim": dim, "batch": batch,
            "threads": torch.get_num_threads(), "train_samples_per_s": train,
            "log_prob_samples_per_s": lp}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--evals", type=int, default=200)
    ap.add_argument("--kinds", default="realnvp,maf,nsf")
    ap.add_argument("--dims", default="2,16,64")
    ap.add_argument("--profile")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    else:
        import os
        torch.set_num_threads(os.cpu_count())
    for kind in a.kinds.split(","):
        for dim in map(int, a.dims.split(",")):
            print(json.dumps(bench(kind, dim, a.steps, a.evals, profile=a.profile)), flush=True)


if __name__ == "__main__":
    main()
