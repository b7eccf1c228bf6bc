"""AdamW's fused step against its default per-tensor step, on the real runs' parameters.

dcloop builds Adam/AdamW with ``fused=True`` where it is safe (``dcloop.models.optim._fused``:
the user chose no implementation, every parameter a floating tensor on the CPU or CUDA).
This script measures what that buys, in process CPU seconds (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``, one spawned process per measurement, ``--jobs`` at once):

* part ``step``: one optimiser step over the K=5 fold replicas' stacked parameters of a real
  run (``FoldEnsemble`` built from the shipped config on AG News with ``bench_text``'s recipe,
  spoken digits with ``bench_real``'s, and the embedded digits), random gradients, median of
  repeats, default (per-tensor loop) against fused;
* part ``runs``: whole default runs (``dcloop.train.train``, the kept student included) with
  the fused step and with ``+model.optimizer.fused=false`` (the old step), seeds 0 and 1:
  CPU seconds, the kept model's test accuracy and detection F1.

Example::

    python scripts/bench_fused_adam.py --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
DATASETS = ("agnews", "fsdd", "digits")


def _overrides(dataset: str, workdir: Path) -> list[str]:
    sys.path.insert(0, str(HERE))
    if dataset == "digits":
        return []
    import bench_kept

    return bench_kept.data_overrides(dataset, "sym20", workdir, None)


def _cpu() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def step_task(task: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import bench_real

    from dcloop.train import build

    work = Path(task["workdir"])
    cfg = bench_real.compose(work / f"step_{task['dataset']}", 0, _overrides(task["dataset"], work))
    run = build(cfg, work / f"step_{task['dataset']}")
    params = [p for p in run.model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    out = {"dataset": task["dataset"], "numel": sum(p.numel() for p in params)}
    for name, kw in (("default", {"fused": False}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kw)
        for _ in range(3):
            opt.step()
        times = []
        for _ in range(task["repeats"]):
            t = time.process_time()
            for _ in range(10):
                opt.step()
            times.append((time.process_time() - t) / 10)
        out[f"{name}_ms"] = 1000 * statistics.median(times)
    return out


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import bench_real

    from dcloop.train import train

    work = Path(task["workdir"])
    extra = [] if task["fused"] else ["+model.optimizer.fused=false"]
    name = f"run_{task['dataset']}_{task['seed']}_{'fused' if task['fused'] else 'default'}"
    cfg = bench_real.compose(
        work / name, task["seed"], [*_overrides(task["dataset"], work), *extra]
    )
    start = _cpu()
    metrics = train(cfg)
    det = metrics.get("detection") or {}
    return {
        "dataset": task["dataset"],
        "seed": task["seed"],
        "fused": task["fused"],
        "cpu_s": _cpu() - start,
        "accuracy": metrics["kept"]["test_accuracy"],
        "f1": det.get("f1"),
        "cost_ratio": (metrics.get("cost") or {}).get("cpu_ratio"),
    }


def markdown(meta: dict[str, Any], steps: list, runs: list) -> str:
    sys.path.insert(0, str(HERE))
    from bench_real import md_head

    lines = [
        *md_head(
            "AdamW: the fused step against the default per-tensor step",
            meta,
            f"- Total wall time: {meta['wall_min']:.1f} min",
        ),
        "## One optimiser step over the K=5 fold replicas' stacked parameters",
        "",
        "| data (net) | parameters | default ms | fused ms | fused / default |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s['dataset']} | {s['numel']:,} | {s['default_ms']:.2f} | {s['fused_ms']:.2f} | "
            f"{s['fused_ms'] / s['default_ms']:.2f} |"
        )
    lines += [
        "",
        "## Whole default runs (replicas, confident learning, the kept student)",
        "",
        "| data | seed | CPU s default | CPU s fused | fused / default | kept acc. default | "
        "kept acc. fused | F1 default | F1 fused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["dataset"], r["seed"], r["fused"]): r for r in runs if "error" not in r}
    for ds, seed in sorted({(r["dataset"], r["seed"]) for r in runs}):
        a, b = by.get((ds, seed, False)), by.get((ds, seed, True))
        if a is None or b is None:
            lines.append(f"| {ds} | {seed} | (failed: see the JSON) | | | | | | |")
            continue
        f1 = [f"{x['f1']:.3f}" if x["f1"] is not None else "—" for x in (a, b)]
        lines.append(
            f"| {ds} | {seed} | {a['cpu_s']:.1f} | {b['cpu_s']:.1f} | "
            f"{b['cpu_s'] / a['cpu_s']:.2f} | {100 * a['accuracy']:.1f} | "
            f"{100 * b['accuracy']:.1f} | {f1[0]} | {f1[1]} |"
        )
    return "\n".join(lines) + "\n"


def _safe(fn, task):
    try:
        return fn(task)
    except Exception as err:  # one failed measurement is a row naming it
        return {**{k: v for k, v in task.items() if k != "workdir"}, "error": repr(err)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_fused_adam")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_fused_"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    ctx = mp.get_context("spawn")
    common = {"workdir": str(workdir)}
    step_tasks = [{**common, "dataset": d, "repeats": args.repeats} for d in args.datasets]
    run_tasks = [
        {**common, "dataset": d, "seed": s, "fused": f}
        for d in args.datasets
        for s in args.seeds
        for f in (False, True)
    ]
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        steps = list(pool.map(_safe, [step_task] * len(step_tasks), step_tasks))
        runs = list(pool.map(_safe, [run_task] * len(run_tasks), run_tasks))
    meta = {
        "command": "python scripts/bench_fused_adam.py "
        + " ".join(a for a in (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "setup": f"{args.jobs} processes at a time, one spawned process per measurement with "
        "torch.set_num_threads(1); process CPU seconds; data: agnews = bench_text's recipe "
        "(TextBoW, 20 epochs, sym. 20 %), fsdd = bench_real's (AudioCNN, 20 epochs, sym. 20 %), "
        "digits = the embedded default (SmallCNN, its default noise)",
        "wall_min": (time.time() - began) / 60,
    }
    failed = [r for r in [*steps, *runs] if "error" in r]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({**meta, "steps": steps, "runs": runs}, indent=1, default=float)
    )
    args.out.with_suffix(".md").write_text(
        markdown(meta, [s for s in steps if "error" not in s], runs)
    )
    print(args.out.with_suffix(".md").read_text())
    if failed:
        print(f"{len(failed)} measurement(s) failed: {failed}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
