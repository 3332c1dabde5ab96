"""Training-step time of PyTorch on dst's models, dense and DST, on one device.

The PyTorch side of the side-by-side step times in BENCHMARKS.md. It builds LeNet-300-100,
LeNet-5-Caffe and LSTM-a with the masked layers of METHOD.md section 1 (mask S(|W| - t) with the
long-tailed derivative, one threshold per row, the alpha * sum(exp(-t)) penalty) and times
forward + backward + optimiser steps on batches gathered from a GPU-resident random dataset of
MNIST's shape (speed only: accuracy is `dst train`'s job). The reset rule of section 3 is a
per-layer check once per step and is left out here (it only makes the PyTorch side faster).

    python3 assets/peers/torch_dst_step.py --device cuda --steps 200
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LongTailStep(torch.autograd.Function):
    """S(q) = [q > 0] forward; H(q) (METHOD.md section 1) as its derivative."""

    @staticmethod
    def forward(ctx, q):
        ctx.save_for_backward(q)
        return (q > 0).to(q.dtype)

    @staticmethod
    def backward(ctx, g):
        (q,) = ctx.saved_tensors
        a = q.abs()
        h = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0))
        return g * h


def masked(w, t):
    """P = W * S(|W| - t), t one threshold per row of W's row view."""
    rows = w.shape[0]
    q = w.abs().reshape(rows, -1) - t[:, None]
    return w * LongTailStep.apply(q).reshape(w.shape)


class Net(nn.Module):
    def __init__(self, name, dst):
        super().__init__()
        self.name, self.dst = name, dst
        if name == "lenet300":
            self.layers = nn.ModuleList([nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)])
        elif name == "lenet5":
            self.layers = nn.ModuleList([nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5),
                                         nn.Linear(800, 500), nn.Linear(500, 10)])
        else:
            self.lstm = nn.LSTM(28, 128, num_layers=2, batch_first=True)
            self.fc = nn.Linear(128, 10)
            self.layers = nn.ModuleList([self.fc])
        self.thresholds = nn.ParameterDict()
        if dst:
            for i, l in enumerate(self.layers if name != "lstm-a" else []):
                self.thresholds[str(i)] = nn.Parameter(torch.zeros(l.weight.shape[0]))
            if name == "lstm-a":
                for n, p in self.lstm.named_parameters():
                    if n.startswith("weight"):
                        self.thresholds[n] = nn.Parameter(torch.zeros(p.shape[0]))

    def w(self, i):
        l = self.layers[i]
        return masked(l.weight, self.thresholds[str(i)]) if self.dst else l.weight

    def forward(self, x):
        if self.name == "lenet300":
            h = x.reshape(x.shape[0], -1)
            for i, l in enumerate(self.layers):
                h = F.linear(h, self.w(i), l.bias)
                if i < 2:
                    h = F.relu(h)
            return h
        if self.name == "lenet5":
            h = F.max_pool2d(F.relu(F.conv2d(x, self.w(0), self.layers[0].bias)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, self.w(1), self.layers[1].bias)), 2)
            h = F.relu(F.linear(h.flatten(1), self.w(2), self.layers[2].bias))
            return F.linear(h, self.w(3), self.layers[3].bias)
        seq = x.reshape(x.shape[0], 28, 28)
        if self.dst:
            ps = {n: (masked(p, self.thresholds[n]) if n in self.thresholds else p)
                  for n, p in self.lstm.named_parameters()}
            out, _ = torch.func.functional_call(self.lstm, ps, (seq,))
        else:
            out, _ = self.lstm(seq)
        return self.fc(out[:, -1])

    def penalty(self, alpha):
        return alpha * sum(torch.exp(-t).sum() for t in self.thresholds.values())


def time_steps(name, dst, device, steps, warmup):
    torch.manual_seed(1)
    batch = 100 if name == "lstm-a" else 64
    n = 60000
    xs = torch.rand(n, 1, 28, 28, device=device)
    ys = torch.randint(0, 10, (n,), device=device)
    net = Net(name, dst).to(device)
    if name == "lstm-a":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        alpha = 1e-4
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        alpha = 5e-4
    perm = torch.randperm(n, device=device)

    def step(i):
        idx = perm[(i * batch) % (n - batch):][:batch]
        x, y = xs.index_select(0, idx), ys.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        if dst:
            loss = loss + net.penalty(alpha)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--models", default="lenet300,lenet5,lstm-a")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__} on {dev}")
    for m in a.models.split(","):
        dense = time_steps(m, False, a.device, a.steps, a.warmup)
        dst = time_steps(m, True, a.device, a.steps, a.warmup)
        print(f"{m:9s} dense step {dense:8.3f} ms   DST step {dst:8.3f} ms   DST/dense {dst / dense:.3f}")


if __name__ == "__main__":
    main()
