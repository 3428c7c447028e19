#!/usr/bin/python3
"""The peer of cfm_bench.cpp: the same flow-matching model and loop in plain PyTorch (Python),
run by Debian's python3-torch with the same threads and BLAS. The torchcfm 2-D velocity MLP
(input [x, t], 3 hidden layers of 64 SELU units), batch 512, float32:
  train   a training step of: minibatch draw, N(0, I) source draw, t ~ U(0, 1), I-CFM path
          (sigma 0.1), MSE, backward, AdamW (lr 1e-3);
  sample  Euler with 100 steps from N(0, I), 10000 samples;
  ot      scipy.optimize.linear_sum_assignment of a 512 x 512 squared-distance cost (what an
          exact OT-CFM pairing costs in Python; torchcfm calls POT's network simplex).

    /usr/bin/python3 bench/cfm_bench_ref.py --threads 2 [--steps 300] [--dims 2,16]
"""
import argparse
import json
import time

import torch
import torch.nn as nn


class VelocityMLP(nn.Module):
    def __init__(self, dim, hidden=64, layers=3):
        super().__init__()
        dims = [dim + 1] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(hidden, dim)

    def forward(self, t, x):
        h = torch.cat([x, t[:, None]], 1)
        for layer in self.hidden:
            h = torch.selu(layer(h))
        return self.out(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dims", default="2,16")
    ap.add_argument("--ot-reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    batch, n_sample, sigma = 512, 10000, 0.1
    for D in [int(d) for d in a.dims.split(",")]:
        torch.manual_seed(0)
        data = torch.randn(10000, D) * 2 + 1
        v = VelocityMLP(D)
        opt = torch.optim.AdamW(v.parameters(), lr=1e-3, weight_decay=0.0)

        def step(k):
            torch.manual_seed(k)
            x1 = data[torch.randint(data.shape[0], (batch,))]
            x0 = torch.randn_like(x1)
            t = torch.rand(batch)
            xt = t[:, None] * x1 + (1 - t[:, None]) * x0 + sigma * torch.randn_like(x0)
            loss = ((v(t, xt) - (x1 - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            return loss.item()

        for k in range(20):
            step(k)
        t0 = time.perf_counter()
        for k in range(a.steps):
            step(k)
        train_sps = a.steps * batch / (time.perf_counter() - t0)

        with torch.no_grad():
            z = torch.randn(n_sample, D)

            def euler(x, n=100):
                h = 1.0 / n
                for k in range(n):
                    x = x + h * v(torch.full((x.shape[0],), k * h), x)
                return x

            euler(z[:512])
            t0 = time.perf_counter()
            euler(z)
            sample_sps = n_sample / (time.perf_counter() - t0)

        ot_ps = None
        try:
            from scipy.optimize import linear_sum_assignment
            x0, x1 = torch.randn(batch, D).double(), (torch.randn(batch, D) * 2 + 1).double()
            linear_sum_assignment(torch.cdist(x0, x1).pow(2).numpy())
            t0 = time.perf_counter()
            for _ in range(a.ot_reps):
                linear_sum_assignment(((x0[:, None] - x1[None]) ** 2).sum(-1).numpy())
            ot_ps = a.ot_reps / (time.perf_counter() - t0)
        except ImportError:
            pass
        print(json.dumps({"impl": "pytorch", "dim": D, "batch": batch, "threads": a.threads,
                          "train_samples_per_s": train_sps, "sample_samples_per_s": sample_sps,
                          "ot_pairings_per_s": ot_ps}), flush=True)


if __name__ == "__main__":
    main()
