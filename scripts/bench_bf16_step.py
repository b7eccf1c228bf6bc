"""One training step in float32 against bfloat16 autocast, per network dcloop ships.

``replica_precision=auto`` (``dcloop.train.replica_precision``) trains the fold replicas
under bf16 autocast only where that is faster: convolutional nets, on a CPU or GPU that
runs bfloat16 natively. This script measures the step behind that rule: forward, cross
entropy, backward and an SGD step of one network on one random batch of the shape its
recipe trains on, float32 against ``torch.autocast(dtype=torch.bfloat16)``, on the CPU with
one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). The two precisions
alternate over ``--rounds`` rounds of ``--steps`` timed steps (after 3 warm-up steps); the
table gives the median ms per step of each and their ratio.

Example::

    python scripts/bench_bf16_step.py --out scripts/results/bench_bf16_step
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcloop.models.audio import AudioCNN  # noqa: E402
from dcloop.models.nets import MLP, SmallCNN  # noqa: E402
from dcloop.models.resnet_small import ResNetSmall  # noqa: E402
from dcloop.models.text import TextBoW  # noqa: E402
from dcloop.train import bf16_is_native, convolutional  # noqa: E402


def cases() -> list[tuple[str, torch.nn.Module, torch.Tensor, int]]:
    """(name, net, batch, classes): the recipes' nets at their batch shapes."""
    g = torch.Generator().manual_seed(0)
    return [
        ("MLP, digits 8x8 (batch 64)", MLP((1, 8, 8), 10), torch.randn(64, 1, 8, 8), 10),
        (
            "SmallCNN width 16, digits 8x8 (batch 64; model=cnn's replicas)",
            SmallCNN(1, 10, width=16),
            torch.randn(64, 1, 8, 8),
            10,
        ),
        (
            "SmallCNN width 32, 32x32 RGB (batch 128)",
            SmallCNN(3, 10, width=32),
            torch.randn(128, 3, 32, 32),
            10,
        ),
        (
            "ResNet-8 width 16, 32x32 RGB (batch 128; experiment=cifar_resnet)",
            ResNetSmall(3, 10),
            torch.randn(128, 3, 32, 32),
            10,
        ),
        (
            "TextBoW dim 32, 8,000 words, 128 tokens (batch 128; bench_text)",
            TextBoW(8000, 4, dim=32),
            torch.randint(1, 8000, (128, 128), generator=g),
            4,
        ),
        (
            "AudioCNN, 1 s at 8 kHz (batch 64; model=audio_cnn)",
            AudioCNN(1, 10),
            torch.randn(64, 1, 8000),
            10,
        ),
    ]


def step_ms(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, n: int) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for i in range(n + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / n * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench_bf16_step"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, net, x, classes in cases():
        y = torch.randint(0, classes, (x.shape[0],), generator=torch.Generator().manual_seed(1))
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(step_ms(net, x, y, bf16, args.steps))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        rows.append(
            {
                "net": name,
                "convolutional": convolutional(net),
                "fp32_ms": round(fp32, 2),
                "bf16_ms": round(bf16, 2),
                "speedup": round(fp32 / bf16, 2),
            }
        )
        print(rows[-1], flush=True)
    meta = {
        "command": "python scripts/bench_bf16_step.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "bf16_native": bf16_is_native("cpu"),
        "rounds": args.rounds,
        "steps": args.steps,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# One training step, float32 against bfloat16 autocast (CPU, one thread)",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; bfloat16 native here "
        f"(`dcloop.train.bf16_is_native`): {meta['bf16_native']}",
        f"- Median over {args.rounds} alternating rounds of {args.steps} timed steps "
        "(forward, cross entropy, backward, SGD step) on one random batch.",
        "",
        "| net | convolutional | float32 ms/step | bf16 ms/step | float32 / bf16 |",
        "|---|:---:|---:|---:|---:|",
        *(
            f"| {r['net']} | {'yes' if r['convolutional'] else 'no'} | {r['fp32_ms']} | "
            f"{r['bf16_ms']} | {r['speedup']} |"
            for r in rows
        ),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
