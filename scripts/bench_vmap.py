"""Fold-parallel replicas: torch.func.vmap versus a loop over replicas.

Times one training step (forward, fold-masked loss, backward, AdamW step) of K
replicas on a batch of digits, for the MLP and the SmallCNN, both modes in the same
process and interleaved. Usage:

    python scripts/bench_vmap.py [--device cuda] [--folds 5] [--batch 64] [--steps 200]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from dcloop.data import load_digits_splits
from dcloop.models import MLP, FoldEnsemble, SmallCNN, fold_masked_loss


def step_time(model, x, index, steps, device) -> float:
    opt = torch.optim.AdamW(model.replica_params.parameters(), lr=1e-3)
    s = model.samples

    def one():
        loss, _ = fold_masked_loss(model(x), s.labels[index], s.folds[index], s.weights[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return f"{model}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    train = load_digits_splits(seed=0)["train"]
    labels = train.labels
    x = torch.stack([train[i][0] for i in range(args.batch)]).to(device)
    index = torch.arange(args.batch, device=device)
    nets = {
        "mlp": partial(MLP, (1, 8, 8), 10),
        "cnn": partial(SmallCNN, 1, 10),
        "cnn+bn": partial(SmallCNN, 1, 10, batch_norm=True),
    }
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(
        f"# bench_vmap: K={args.folds}, batch={args.batch}, {args.steps} steps x "
        f"{args.repeats} repeats, device={device} ({name}), torch {torch.__version__}"
    )
    print("| net | vmap ms/step | loop ms/step | loop / vmap |")
    print("|---|---:|---:|---:|")
    for label, net in nets.items():
        model = FoldEnsemble(net, labels, num_folds=args.folds, vectorize="vmap").to(device)
        model.train()
        times = {"vmap": [], "loop": []}
        for _ in range(args.repeats):
            for mode in ("vmap", "loop"):
                model._mode = mode
                times[mode].append(step_time(model, x, index, args.steps, device))
        v, lp = np.median(times["vmap"]) * 1e3, np.median(times["loop"]) * 1e3
        print(f"| {label} | {v:.2f} | {lp:.2f} | {lp / v:.2f}x |")


if __name__ == "__main__":
    main()
