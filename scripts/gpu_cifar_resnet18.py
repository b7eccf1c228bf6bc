"""ResNet-18 on the CIFAR-10 subset, one GPU, at most ~10 minutes: plain vs oracle vs dcloop.

Issue 20's "if a GPU is available" run. Rows, per noise setting:

* ``plain``: one ResNet-18 (torchvision, CIFAR stem) on the noisy labels;
* ``oracle``: the same network on the true labels (the folder names), once: every setting
  trains on the same 5,000 images (``data.val_frac=0``);
* ``dcloop``: ``dcloop.train.train`` with its defaults (K=5 fold replicas, in-loop confident
  learning, the kept model: ``kept=student``) and the same network, optimiser, schedule,
  batch, epochs and augmentation; the row reports the kept model's test accuracy, the
  replicas' ensemble, the noise estimate and, where the truth is known, detection.

Settings: CIFAR-10N's real human noise on the subset (``aggre`` 9 %, ``random1`` ~18 %,
``worst`` 42 % wrong; ``noise=none`` with the CIFAR-10N manifest) and ``sym40`` (40 %
symmetric noise injected into the published labels). Test: the subset's 2,000 official
CIFAR-10 test images.

Data: every setting's split comes from dcloop's own data module (``data=csv``, decoded once
at setup, ``data.source.cache=true``); the plain and oracle runs copy its tensors to the GPU
once and augment there (random crop of the 4-pixel-padded image + flip, batched on the
device); no JPEG is read per epoch. dcloop's run uses the same ``RandomCropFlip`` as its
``data.train_transform`` on its cached images.

Recipe (all rows): ``model=resnet18 model.net.cifar_stem=true``, SGD (Nesterov, momentum 0.9,
weight decay 5e-4) with one-cycle to ``--lr``, no label smoothing, batch ``--batch``,
``--epochs`` epochs, bf16 autocast; the optimiser, schedule and loss are built from the
composed config by dcloop's own code (``module_kwargs``, ``configure_optimizers``).

Time: rows run in order oracle, plain x 4, then dcloop for worst, sym40, random1, aggre; a
dcloop row starts only if its estimated time (the previous dcloop row's, or 7.5x a plain run)
fits in ``--budget-s``; skipped rows are listed. Results are rewritten after every row, so a
run stopped by a time limit leaves what it finished.

    python scripts/gpu_cifar_resnet18.py                      # on the GPU machine
    python scripts/gpu_cifar_resnet18.py --smoke              # CPU: 10 images a class, 1 epoch

The smoke mode runs every code path (manifests, data modules, on-device augmentation, plain,
oracle, one dcloop row with K=2) on the CPU in about a minute of CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "scripts" / "results" / "gpu_cifar_resnet18"
CIFAR10N = ("aggre", "random1", "worst")
SETTINGS = (*CIFAR10N, "sym40")
DCLOOP_ORDER = ("worst", "sym40", "random1", "aggre")


# ------------------------------------------------------------------------------- data


def write_manifests(data: Path, work: Path, per_class: int | None) -> dict[str, Path]:
    """CSV manifests (``path,label``, relative to ``data``) for every setting and the test set.

    ``clean.csv`` lists ``train/<class>/*.jpg`` with the folder name as label (the published
    labels, for ``sym40``); ``test.csv`` the test folder. ``per_class`` keeps the first n
    training images of each class (and n // 2 test images): the smoke mode.
    """
    work.mkdir(parents=True, exist_ok=True)

    def listing(split: str, n: int | None) -> list[tuple[str, str]]:
        rows = []
        for cls in sorted(p.name for p in (data / split).iterdir() if p.is_dir()):
            files = sorted((data / split / cls).glob("*.jpg"))
            rows += [(f"{split}/{cls}/{f.name}", cls) for f in files[:n]]
        return rows

    def write(name: str, rows: list[tuple[str, str]]) -> Path:
        path = work / name
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
        return path

    clean = listing("train", per_class)
    keep = {p for p, _ in clean}
    out = {
        "clean": write("clean.csv", clean),
        "test": write("test.csv", listing("test", None if per_class is None else per_class // 2)),
    }
    for name in CIFAR10N:
        with (data / "cifar10n" / f"{name}.csv").open(newline="") as f:
            rows = [(r["path"], r["label"]) for r in csv.DictReader(f) if r["path"] in keep]
        if len(rows) != len(clean):
            raise SystemExit(f"cifar10n/{name}.csv lists {len(rows)} of the {len(clean)} images")
        out[name] = write(f"{name}.csv", rows)
    return out


def overrides(setting: str, manifests: dict[str, Path], args, run_dir: Path) -> list[str]:
    noise = ["noise=symmetric", "noise.rate=0.4"] if setting == "sym40" else ["noise=none"]
    manifest = manifests["clean" if setting == "sym40" else setting]
    trainer = (
        ["trainer=cpu", "trainer.threads=1"]
        if args.smoke
        else ["trainer=gpu", "trainer.precision=bf16-mixed"]
    )
    return [
        f"output_dir={run_dir}",
        f"seed={args.seed}",
        "data=csv",
        f"data.source.root={args.data}",
        f"data.source.manifest={manifest}",
        f"data.source.test_manifest={manifests['test']}",
        "data.val_frac=0.0",
        "data.num_workers=0",
        f"data.batch_size={args.batch}",
        "++data.train_transform={_target_:dcloop.augment.crop_flip.RandomCropFlip,padding:4}",
        *noise,
        "model=resnet18",
        "model.net.cifar_stem=true",
        "model.optimizer._target_=torch.optim.SGD",
        f"model.optimizer.lr={args.lr}",
        "model.optimizer.weight_decay=0.0005",
        "+model.optimizer.momentum=0.9",
        "+model.optimizer.nesterov=true",
        "model.scheduler._target_=torch.optim.lr_scheduler.OneCycleLR",
        f"+model.scheduler.max_lr={args.lr}",
        "model.loss.label_smoothing=0.0",
        *trainer,
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "checkpoint=false",
        "report=false",
        "health=false",
        *([f"folds={args.folds}"] if args.folds else []),
    ]


def compose(over: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import dcloop

    GlobalHydra.instance().clear()
    conf = Path(dcloop.__file__).resolve().parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hcompose("config", overrides=over)
    GlobalHydra.instance().clear()
    return cfg


def tensors(cfg, device) -> dict[str, Any]:
    """The setting's data module, decoded once; its splits as tensors on ``device``."""
    import torch
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    names = dm.class_names
    truth = [names.index(Path(s).parent.name) for s in dm.train_sources]
    x = torch.stack([dm.train_dataset[i][0] for i in range(dm.num_train)])
    xt = torch.stack([dm.test_dataset[i][0] for i in range(len(dm.test_dataset))])
    return {
        "x": x.to(device),
        "given": torch.as_tensor(dm.given_labels).to(device),
        "truth": torch.as_tensor(truth).to(device),
        "x_test": xt.to(device),
        "y_test": torch.as_tensor(dm.test_dataset.labels).to(device),
        "num_classes": dm.num_classes,
        "noise_rate": float(
            (torch.as_tensor(dm.given_labels) != torch.as_tensor(truth)).float().mean()
        ),
    }


# ----------------------------------------------------------------------- plain training


def augment(x, pad: int = 4):
    """Random crop of the ``pad``-padded images and a left-right flip, batched on x's device."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    out = xp[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows,
        cols,
    ]
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def fit_plain(cfg, data: dict[str, Any], labels, *, seed: int, epochs: int, batch: int) -> dict:
    """One network on ``labels`` with the config's net, optimiser, schedule and loss."""
    import torch

    from dcloop.models import Classifier, module_kwargs, net_factory
    from dcloop.models import optim as dopt

    device = data["x"].device
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = net_factory(cfg.model.net, tuple(data["x"].shape[1:]), data["num_classes"])()
    net = net.to(device, memory_format=torch.channels_last)
    kw = module_kwargs(cfg.model, Classifier)
    n = data["x"].shape[0]
    steps = math.ceil(n / batch)
    made = dopt.configure_optimizers(
        net.parameters(),
        optimizer=kw.get("optimizer"),
        scheduler=kw.get("scheduler", "cosine"),
        lr=kw.get("lr", 3e-3),
        weight_decay=kw.get("weight_decay", 1e-4),
        trainer=SimpleNamespace(max_epochs=epochs, estimated_stepping_batches=epochs * steps),
    )
    opt = made["optimizer"] if isinstance(made, dict) else made
    sched = made["lr_scheduler"] if isinstance(made, dict) else None
    loss_fn = dopt.per_sample_loss(kw.get("loss"), kw.get("label_smoothing", 0.0))
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(n, generator=g).to(device)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            x = augment(data["x"][idx]).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(net(x).float(), labels[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None and sched["interval"] == "step":
                sched["scheduler"].step()
        if sched is not None and sched["interval"] == "epoch":
            sched["scheduler"].step()
    net.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        for s in range(0, data["x_test"].shape[0], 1000):
            xb = data["x_test"][s : s + 1000].contiguous(memory_format=torch.channels_last)
            correct += int((net(xb).argmax(-1) == data["y_test"][s : s + 1000]).sum())
    if cuda:
        torch.cuda.synchronize()
    return {"test_acc": correct / data["x_test"].shape[0], "seconds": time.perf_counter() - t0}


def run_dcloop(cfg) -> dict[str, Any]:
    """``dcloop.train.train`` on the composed config: the kept model and what the run saw."""
    from dcloop.train import train

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        m = train(cfg)
    kept = m.get("kept") or {}
    return {
        "test_acc": kept.get("test_accuracy", m["test"]["accuracy"]),
        "kept_model": kept.get("model"),
        "test": m.get("test"),
        "noise_rate_est": (m.get("noise") or {}).get("rate"),
        "detection": m.get("detection"),
        "num_flagged": (m.get("cleaning") or {}).get("num_flagged"),
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------ report


def write(out: Path, meta: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    oracle = (rows.get("oracle") or {}).get("test_acc")
    lines = [
        "# ResNet-18 on the CIFAR-10 subset, one GPU: plain vs oracle vs dcloop",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- {meta['device']}; torch {meta['torch']}; {meta['setup']}",
        f"- Elapsed: {meta['elapsed_s']:.0f} s of a {meta['budget_s']:.0f} s budget; "
        f"skipped: {', '.join(meta['skipped']) or 'none'}",
        "",
        "| setting | noise (actual) | plain | dcloop kept model | dcloop ensemble | oracle | "
        "gap recovered | noise estimate | dcloop s / plain s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SETTINGS:
        p, d = rows.get(f"plain/{s}"), rows.get(f"dcloop/{s}")
        if p is None:
            continue
        cells = [s, f"{100 * p['noise_rate']:.1f} %", f"{100 * p['test_acc']:.1f}"]
        if d is None:
            why = any(x.startswith(f"dcloop/{s} ") for x in meta["skipped"])
            cells += ["skipped (time)" if why else "not run", "-"]
        else:
            ens = (d.get("test") or {}).get("ensemble_accuracy")
            cells += [
                f"{100 * d['test_acc']:.1f} ({d['kept_model']})",
                "-" if ens is None else f"{100 * ens:.1f}",
            ]
        cells.append("-" if oracle is None else f"{100 * oracle:.1f}")
        gap = "-"
        if d is not None and oracle is not None and oracle != p["test_acc"]:
            gap = f"{100 * (d['test_acc'] - p['test_acc']) / (oracle - p['test_acc']):.0f} %"
        est = None if d is None else d.get("noise_rate_est")
        cells += [
            gap,
            "-" if est is None else f"{100 * est:.1f} %",
            "-" if d is None else f"{d['seconds'] / p['seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Gap recovered: (kept - plain) / (oracle - plain). For scale, published full-data "
        "(50,000-image) CIFAR-10N worst: cross-entropy 77.7 %, DivideMix 92.6 %, ProMix 96.2 %.",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "cifar10-subset")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_cifar_resnet18"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=None, help="default: dcloop's (5)")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--smoke", action="store_true", help="CPU, 10 images a class, 1 epoch, K=2")
    args = p.parse_args(argv)
    import torch

    if args.smoke:
        args.epochs, args.batch, args.folds, args.budget_s = 1, 20, 2, math.inf
        args.out = args.out or args.work / "smoke" / "gpu_cifar_resnet18"
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; use --smoke for the CPU check", file=sys.stderr)
            return 2
        args.out = args.out or OUT
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    if not (args.data / "cifar10n").is_dir():
        print(f"error: --data {str(args.data)!r} has no cifar10n/ folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    manifests = write_manifests(args.data, args.work / "manifests", 10 if args.smoke else None)
    meta = {
        "command": "python "
        + shlex.join([f"scripts/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke)",
        "torch": torch.__version__,
        "setup": f"ResNet-18 (CIFAR stem), {args.epochs} epochs, batch {args.batch}, SGD "
        f"one-cycle to {args.lr}, crop+flip, seed {args.seed}",
        "budget_s": args.budget_s,
        "skipped": [],
    }
    rows: dict[str, dict[str, Any]] = {}

    def save() -> None:
        meta["elapsed_s"] = time.perf_counter() - t0
        write(args.out, meta, rows)

    cfgs = {s: compose(overrides(s, manifests, args, args.work / s)) for s in SETTINGS}
    data = {s: tensors(cfgs[s], device) for s in SETTINGS}
    ref = data["sym40"]
    oracle = fit_plain(
        cfgs["sym40"], ref, ref["truth"], seed=args.seed, epochs=args.epochs, batch=args.batch
    )
    rows["oracle"] = {**oracle, "noise_rate": 0.0}
    print(f"oracle: {100 * oracle['test_acc']:.1f} % ({oracle['seconds']:.0f} s)", flush=True)
    save()
    for s in SETTINGS:
        r = fit_plain(
            cfgs[s], data[s], data[s]["given"], seed=args.seed, epochs=args.epochs, batch=args.batch
        )
        rows[f"plain/{s}"] = {**r, "noise_rate": data[s]["noise_rate"]}
        print(f"plain {s}: {100 * r['test_acc']:.1f} % ({r['seconds']:.0f} s)", flush=True)
        save()
    estimate = 7.5 * oracle["seconds"]
    for s in DCLOOP_ORDER[:1] if args.smoke else DCLOOP_ORDER:
        if time.perf_counter() - t0 + estimate > args.budget_s:
            meta["skipped"].append(f"dcloop/{s} (estimated {estimate:.0f} s)")
            save()
            continue
        d = run_dcloop(cfgs[s])
        rows[f"dcloop/{s}"] = d
        estimate = d["seconds"]
        print(f"dcloop {s}: kept {100 * d['test_acc']:.1f} % ({d['seconds']:.0f} s)", flush=True)
        save()
    save()
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
