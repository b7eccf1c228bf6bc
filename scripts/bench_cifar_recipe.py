"""The CIFAR recipe on a CPU: one plain network, its test accuracy and its CPU seconds.

The recipe is ``experiment=cifar_resnet`` (``conf/experiment/cifar_resnet.yaml``):
``model=resnet_cifar`` (``dcloop.models.ResNetSmall``, ResNet-8 at width 16, SGD with
Nesterov momentum and one-cycle, no label smoothing), ``RandomCropFlip`` as
``data.train_transform`` (training batches only), batch 128, 30 epochs.

A plain run is what dcloop's baselines call plain: one :class:`~dcloop.models.Classifier`
(no fold replicas, no cleaning) trained on the given labels, built from the composed config
exactly as a run builds it (``instantiate(cfg.data)``, ``net_factory``, ``module_kwargs``,
the trainer config), on ``cifar10-subset/train`` (5,000 images; 10 % to validation, as in
``bench_real.py``) and tested on the subset's 2,000 official test images.
Settings: ``clean`` (the labels as published: the oracle of a noise experiment) and
``sym40`` (40 % symmetric noise injected: the plain row of that experiment).

Each run is a fresh process with ``torch.set_num_threads(1)`` (``OMP_NUM_THREADS=1``); its
CPU seconds are the process's own user + system time from its start (imports, decoding the
JPEGs, training, validation, test), which other load on the machine does not inflate the
way it inflates wall time. ``--jobs`` runs that many at once.

Example::

    python scripts/bench_cifar_recipe.py --seeds 0 1 --jobs 2   # the committed results
    python scripts/bench_cifar_recipe.py --seeds 0 --epochs 1 --out /tmp/recipe_smoke
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "4294967296")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "scripts" / "results" / "bench_cifar_recipe"
SETTINGS = {
    "clean": ["noise=none"],
    "sym40": ["noise=symmetric", "noise.rate=0.4"],
}
TARGET_ACC, TARGET_CPU_S = 0.55, 600.0


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def overrides(task: dict[str, Any]) -> list[str]:
    root = Path(task["data"])
    out = [
        "experiment=cifar_resnet",
        "data=folder",
        f"data.source.root={root / 'train'}",
        f"data.source.test_root={root / 'test'}",
        "data.val_frac=0.1",
        "data.num_workers=0",
        "trainer.threads=1",
        *SETTINGS[task["setting"]],
    ]
    if task.get("epochs"):
        out.append(f"trainer.max_epochs={task['epochs']}")
    return out + list(task.get("extra", []))


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One plain run in this (fresh) process; CPU seconds counted from the process start."""
    import logging
    import warnings

    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import dcloop
    from dcloop.models import Classifier
    from dcloop.models.factory import module_kwargs, net_factory

    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = Path(dcloop.__file__).resolve().parent / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={run_dir}",
                "logger=none",
                "checkpoint=false",
                "report=false",
                "trainer.enable_progress_bar=false",
                f"seed={task['seed']}",
                *overrides(task),
            ],
        )
    GlobalHydra.instance().clear()
    wall0, cpu0 = time.perf_counter(), _cpu()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    cpu_setup = _cpu() - cpu0
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    factory = net_factory(cfg.model.net, dm.input_shape, dm.num_classes)
    model = Classifier(factory, dm.num_classes, seed=seed, **module_kwargs(cfg.model, Classifier))
    curve: list[dict[str, float]] = []

    class Curve(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            acc = trainer.callback_metrics.get("val/acc")
            if acc is not None and not trainer.sanity_checking:
                curve.append(
                    {
                        "epoch": trainer.current_epoch + 1,
                        "val_acc": round(float(acc), 4),
                        "cpu_s": round(_cpu(), 1),
                    }
                )

    trainer = instantiate(
        cfg.trainer,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(run_dir),
        callbacks=[Curve()],
    )
    cpu_fit0 = _cpu()
    trainer.fit(model, datamodule=dm)
    cpu_fit = _cpu() - cpu_fit0
    test = trainer.test(model, datamodule=dm, verbose=False)
    n = dm.num_train
    return {
        **{k: task[k] for k in ("setting", "seed")},
        "test_acc": float(test[0]["test/acc"]),
        "cpu_s": _cpu(),  # the whole process: imports, decoding, fit, test
        "cpu_fit_s": cpu_fit,
        "cpu_decode_s": cpu_setup,
        "wall_s": time.perf_counter() - wall0,
        "epochs": int(cfg.trainer.max_epochs),
        "num_train": n,
        "num_test": len(dm.test_dataset),
        "noise_rate_actual": float(dm.noise.num_noisy) / n,
        "threads": torch.get_num_threads(),
        "transform": repr(dm.train_transform),
        "net": {k: v for k, v in OmegaConf.to_container(cfg.model.net).items() if k != "_partial_"},
        "curve": curve,
        "overrides": overrides(task),
    }


def _task_in_child(task: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    return run_one(task)


# ---------------------------------------------------------------------------- report


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if not n:
        return math.nan, math.nan
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| setting | seed | epochs | test accuracy | process CPU s | fit CPU s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (list(SETTINGS).index(r["setting"]), r["seed"])):
        lines.append(
            f"| {r['setting']} | {r['seed']} | {r['epochs']} | {100 * r['test_acc']:.1f} % | "
            f"{r['cpu_s']:.0f} | {r['cpu_fit_s']:.0f} | {r['wall_s']:.0f} |"
        )
    for setting in SETTINGS:
        rs = [r for r in runs if r["setting"] == setting]
        if len(rs) > 1:
            acc, acc_sd = mean_sd([r["test_acc"] for r in rs])
            cpu, cpu_sd = mean_sd([r["cpu_s"] for r in rs])
            lines.append(
                f"| **{setting}, mean of {len(rs)}** | | | **{100 * acc:.1f} ± "
                f"{100 * acc_sd:.1f} %** | **{cpu:.0f} ± {cpu_sd:.0f}** | | |"
            )
    return lines


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    clean = [r for r in runs if r["setting"] == "clean"]
    if not clean:
        return ["- No clean run: the target is judged on the clean (plain) runs."]
    ok = [r["test_acc"] >= TARGET_ACC and r["cpu_s"] <= TARGET_CPU_S for r in clean]
    acc = min(r["test_acc"] for r in clean)
    cpu = max(r["cpu_s"] for r in clean)
    return [
        f"- Target (issue 20, item 5): a plain run reaches >= {100 * TARGET_ACC:.0f} % test "
        f"accuracy in <= {TARGET_CPU_S / 60:.0f} CPU minutes. "
        f"{'Met' if all(ok) else 'MISSED'} on {sum(ok)} of {len(ok)} clean runs "
        f"(lowest accuracy {100 * acc:.1f} %, highest process CPU time {cpu:.0f} s)."
    ]


def write(out: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    curves = []
    for r in sorted(runs, key=lambda r: (r["setting"], r["seed"])):
        pts = ", ".join(f"{c['epoch']}: {100 * c['val_acc']:.0f}" for c in r["curve"][4::5])
        curves.append(f"- {r['setting']} seed {r['seed']}: {pts}")
    md = [
        "# The CIFAR recipe on a CPU (plain runs)",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- Date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}",
        f"- {meta['setup']}",
        f"- Total wall time: {meta['total_wall_s'] / 60:.1f} min "
        "(the machine was shared with other jobs: compare CPU seconds, not wall time)",
        "",
        *table(runs),
        "",
        *verdict(runs),
        "",
        "Process CPU s: user + system time of the run's process from its start (imports, "
        "decoding 7,000 JPEGs, training, a validation pass per epoch, the test pass), with one "
        "torch thread. Fit CPU s: `trainer.fit` alone. Test accuracy on the subset's 2,000 "
        "official CIFAR-10 test images.",
        "",
        "Validation accuracy (%) by epoch (every fifth epoch):",
        "",
        *curves,
        "",
    ]
    if meta.get("notes"):
        md += ["## Notes", "", meta["notes"], ""]
    out.with_suffix(".md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["clean"])
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (30)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data", type=Path, default=SHARED / "cifar10-subset")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_cifar_recipe"))
    p.add_argument("--notes", default="", help="text for the results page's Notes section")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.net.width=32")
    args = p.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        print(f"error: --data {str(args.data)!r} has no train/ and test/ folders", file=sys.stderr)
        return 2
    tasks = [
        {
            "setting": s,
            "seed": seed,
            "epochs": args.epochs,
            "data": str(args.data),
            "extra": args.overrides,
            "run_dir": str(args.work / f"{s}_seed{seed}"),
        }
        for s in args.settings
        for seed in args.seeds
    ]
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    runs = []
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        for fut in cf.as_completed([pool.submit(_task_in_child, t) for t in tasks]):
            r = fut.result()
            runs.append(r)
            print(
                f"{r['setting']} seed {r['seed']}: test {100 * r['test_acc']:.1f} %, "
                f"{r['cpu_s']:.0f} CPU s, {r['wall_s']:.0f} s wall",
                flush=True,
            )
    import torch

    meta = {
        "command": "python "
        + shlex.join(["scripts/bench_cifar_recipe.py", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "setup": "experiment=cifar_resnet, data=folder on cifar10-subset (4,500 train, 500 val, "
        "2,000 test), one torch thread per run",
        "total_wall_s": time.perf_counter() - t0,
        "notes": args.notes,
    }
    write(args.out, runs, meta)
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
