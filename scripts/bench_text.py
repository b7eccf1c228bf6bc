"""Text classification with in-loop confident learning: AG News rows and embedded synthetic texts.

Data: ``agnews``: ``../shared/data/agnews-4000/agnews.csv`` (4,000 real AG News rows, 4 classes;
20 % test, 15 % validation, 2,600 training rows) through ``data=text_csv``; ``synth``: the
embedded ``data=text_synth`` (2,000 texts, 4 classes, 1,300 training rows). Model: ``text_bow``
(fastText-style mean of word embeddings + linear, dropout 0.5), K = 5.

Noise: symmetric 20 % / 40 %; asymmetric 30 %: AG News World -> Business, Business -> World,
Sci/Tech -> Business (the confusions a tired annotator makes between politics/economy and
tech-business news; Sports stays clean, so 22.5 % of all labels); synth c -> c + 1, the
neighbouring topic that shares words with it.

Rows (same network, optimiser, schedule, batch and epochs within a dataset):

* ``plain``: one network on the noisy labels.
* ``detect``: no cleaning: dcloop's K fold replicas with ``cl=detect`` (the ensemble).
* ``two_stage``: the ``detect`` run's OOF softmax -> ``dcloop.cl.find_label_issues`` -> one
  network refit on the unflagged samples (its wall time includes the ``detect`` run).
* ``inloop``: ``dcloop.train.train`` with the shipped cleaning defaults (prune).
* ``inloop_aug``: the same with ``augment=text_targeted`` (EDA on the weak classes,
  co-occurrence synonyms from the training split, x2 oversampling).
* ``oracle``: one network on the true labels (no noise): the ceiling.

Beside: precision of ``dcloop.cl.find_label_issues`` against the human-confirmed errors of
20 Newsgroups and IMDB (``../shared/data/label-errors``, their published cross-validated
probabilities), with ``bench_cl_engine``'s helpers.

Each run is one task in a pool of ``--jobs`` worker processes, each with
``torch.set_num_threads(1)``. Results are rewritten after every finished task (a stopped
benchmark still has its finished rows).

Example::

    python scripts/bench_text.py --jobs 2                       # the committed results
    python scripts/bench_text.py --seeds 0 --out /tmp/bench_text_smoke   # 1-seed smoke
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
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_real import SHARED, _cpu, compose, fmt, md_head, run_inloop, summary_row, write_json  # noqa: E402
from bench_real import table as real_table  # noqa: E402

#: ``../shared/data`` (``DCLOOP_SHARED_DATA`` overrides it, e.g. for a copy of the repository).
DATA = Path(os.environ.get("DCLOOP_SHARED_DATA", str(SHARED)))
AGNEWS = DATA / "agnews-4000"
DATASETS = ("synth", "agnews")
SETTINGS = ("sym20", "sym40", "asym30")
METHODS = (
    *("plain", "detect", "two_stage", "inloop", "inloop_refit", "inloop_aug", "inloop_aug1"),
    "oracle",
)
#: What a plain run does (inloop_refit and inloop_aug1 are extra rows, added with --append).
DEFAULT_METHODS = ("plain", "detect", "inloop", "inloop_aug", "oracle")
NAMES = {
    "plain": "plain (1 network, noisy labels)",
    "detect": "no cleaning (K replicas, cl=detect)",
    "two_stage": "two-stage (detect run's OOF -> CL -> 1 network refit)",
    "inloop": "in-loop, defaults (K-replica ensemble)",
    "inloop_refit": "in-loop + refit (1 network on the cleaned labels, refit=true)",
    "inloop_aug": "in-loop + text augmentation (augment=text_targeted)",
    "inloop_aug1": "in-loop + milder text augmentation (augment.weak_level=1)",
    "oracle": "oracle (1 network, true labels)",
}
AG_ASYM = "{World:Business,Business:World,Sci/Tech:Business}"


def data_overrides(dataset: str, setting: str, epochs: int) -> list[str]:
    if dataset == "agnews":
        data = [
            "data=text_csv",
            f"data.source.path={AGNEWS / 'agnews.csv'}",
            f"data.source.classes={AGNEWS / 'classes.txt'}",
            "data.source.tokenizer.max_vocab=8000",  # 2,600 rows: 8k words cover them
            "data.batch_size=128",
            "model.net.dim=32",
            "model.optimizer.lr=0.006",
        ]
    else:
        data = ["data=text_synth"]
    noise = {
        "sym20": ["noise=symmetric", "noise.rate=0.2"],
        "sym40": ["noise=symmetric", "noise.rate=0.4"],
        "asym30": ["noise=asymmetric", "noise.rate=0.3"]
        + ([f"noise.mapping={AG_ASYM}"] if dataset == "agnews" else []),
    }[setting]
    return [*data, "model=text_bow", *noise, f"trainer.max_epochs={epochs}"]


# ------------------------------------------------------------------------------ one run
def _factory(cfg, dm):
    from dcloop.train import net_factory

    return net_factory(cfg.model.net, dm.input_shape, dm.num_classes, dm.net_kwargs)


def _one_net(cfg, run_dir: Path, *, clean: bool = False, keep=None) -> float:
    """One Classifier on the noisy labels (``keep``: only those rows), or the true labels."""
    import bench_noise as bn
    from torch.utils.data import Subset

    # every key: Hydra merges a kwarg into the config's `noise: ${noise}` (a mapping would stay)
    none = {"kind": "none", "rate": 0.0, "sparsity": 0.0, "mapping": None}
    dm = bn.datamodule(cfg, noise=none if clean else None)
    ds = dm.train_dataset if keep is None else Subset(dm.train_dataset, keep.tolist())
    _, acc = bn.fit_classifier(cfg, dm, _factory(cfg, dm), ds, run_dir, cfg.seed)
    return acc


def _two_stage(cfg, run_dir: Path) -> dict[str, Any]:
    """From the detect run's files: OOF softmax -> find_label_issues -> one network refit."""
    import torch

    from dcloop.cl import find_label_issues
    from dcloop.csvsafe import read_csv
    from dcloop.metrics import detection_metrics

    probs = np.load(run_dir / "oof_probs.npy").astype(np.float64)
    probs /= probs.sum(1, keepdims=True)
    lab = read_csv(run_dir / "labels.csv")
    given = lab["given_label"].to_numpy(np.int64)
    noisy = lab["is_noisy"].to_numpy(bool)
    flags = np.asarray(find_label_issues(given, probs, filter_by="prune_by_noise_rate"))
    quality = probs[np.arange(len(given)), given]
    keep = np.flatnonzero(~flags)
    acc = _one_net(cfg, run_dir / "refit", keep=keep)
    det = detection_metrics(
        torch.as_tensor(flags), torch.as_tensor(noisy), torch.as_tensor(quality)
    )
    return {"acc": acc, "detection": det, "num_flagged": int(flags.sum())}


def run_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    import bench_noise as bn

    bn.quiet()
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    method = task["method"]
    extra = list(task["overrides"])
    if method == "detect":
        extra.append("cl=detect")
    if method in ("inloop_aug", "inloop_aug1"):
        extra.append("augment=text_targeted")
    if method == "inloop_aug1":
        extra.append("augment.weak_level=1")
    if method == "inloop_refit":
        extra.append("refit=true")
    cfg = compose(run_dir, task["seed"], extra)
    key = {k: task[k] for k in ("dataset", "setting", "seed")}
    t0, c0 = time.perf_counter(), _cpu()
    if method in ("detect", "inloop", "inloop_refit", "inloop_aug", "inloop_aug1"):
        out = run_inloop(cfg, run_dir)
        if method == "inloop_refit":  # the refit network's accuracy; the ensemble's beside
            out["ensemble_acc"], out["acc"] = out["acc"], out["refit_acc"]
    else:
        out = {"acc": _one_net(cfg, run_dir, clean=method == "oracle")}
    out["wall_time_s"], out["cpu_time_s"] = time.perf_counter() - t0, _cpu() - c0
    res = [{**key, "method": method, **out}]
    if method == "detect":  # two-stage reuses the detect run's OOF softmax
        t1, c1 = time.perf_counter(), _cpu()
        two = _two_stage(cfg, run_dir)
        two["wall_time_s"] = out["wall_time_s"] + time.perf_counter() - t1
        two["cpu_time_s"] = out["cpu_time_s"] + _cpu() - c1
        res.append({**key, "method": "two_stage", **two})
    return res


# --------------------------------------------------------------------- human-confirmed
def label_error_precision() -> list[dict[str, Any]]:
    """find_label_issues on the published 20news / IMDB probabilities vs MTurk verdicts."""
    from bench_cl_engine import confirmed_errors, real_set

    from dcloop.cl import find_label_issues

    rows = []
    for name in ("20news", "imdb"):
        labels, probs = real_set(name)
        cand, conf = confirmed_errors(name, len(labels))
        for fb in ("prune_by_noise_rate", "both"):
            mask = np.asarray(find_label_issues(labels, probs, filter_by=fb))
            checked, hit = int((mask & cand).sum()), int((mask & conf).sum())
            rows.append(
                {
                    "set": name,
                    "filter_by": fb,
                    "flagged": int(mask.sum()),
                    "flagged_checked": checked,
                    "confirmed_found": hit,
                    "confirmed_total": int(conf.sum()),
                    "precision": hit / checked if checked else math.nan,
                    "recall": hit / int(conf.sum()),
                }
            )
    return rows


# ------------------------------------------------------------------------------ report
def rows_of(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted(
        {(r["dataset"], r["setting"]) for r in runs},
        key=lambda k: (DATASETS.index(k[0]), SETTINGS.index(k[1])),
    )
    for ds, st in keys:
        for m in METHODS:
            rs = [r for r in runs if (r["dataset"], r["setting"], r["method"]) == (ds, st, m)]
            if rs:
                cleaning = m in ("detect", "inloop", "inloop_refit", "inloop_aug", "inloop_aug1")
                rows.append(summary_row(rs, (ds, st, m), estimate=cleaning))
    return rows


def table(rows) -> str:
    return real_table(rows, NAMES, min_kept=False)


def targets(rows) -> list[str]:
    by = {(r["dataset"], r["setting"], r["method"]): r for r in rows}
    lines = []
    for ds, st in sorted({(r["dataset"], r["setting"]) for r in rows}):
        det = by.get((ds, st, "detect"))
        for m in ("inloop", "inloop_aug", "inloop_aug1"):
            inl = by.get((ds, st, m))
            if inl is None or det is None:
                continue
            d = round(inl["acc"] - det["acc"], 6)
            line = (
                f"- {ds} {st}: {m} {100 * inl['acc']:.1f} % vs no cleaning "
                f"{100 * det['acc']:.1f} % ({100 * d:+.1f}: {'met' if d >= 0 else 'MISSED'})"
            )
            if st == "sym20" and m == "inloop":
                f1 = inl["f1"]
                line += f"; detection F1 {f1:.3f} ({'met' if f1 >= 0.8 else 'MISSED'} >= 0.8)"
            lines.append(line)
    return lines


def human_table(rows) -> str:
    out = [
        "| set | filter_by | flagged | flagged and checked by people | confirmed among them "
        "| precision | recall of the confirmed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['set']} | {r['filter_by']} | {r['flagged']} | {r['flagged_checked']} | "
            f"{r['confirmed_found']} | {fmt(r['precision'])} | {fmt(r['recall'])} "
            f"({r['confirmed_found']}/{r['confirmed_total']}) |"
        )
    return "\n".join(out)


def write(out: Path, runs, meta) -> None:
    rows = rows_of(runs)
    write_json(out, meta, rows, runs)
    done = (
        f"- Finished runs: {len(runs)} of {meta['num_results']} "
        f"({'complete' if len(runs) >= meta['num_results'] else 'PARTIAL'}); total wall time "
        f"{meta.get('total_time_s', math.nan) / 60:.1f} min"
    )
    md = [
        *md_head("Text classification with in-loop confident learning", meta, done),
        table(rows),
        "",
        "Test accuracy: one network for plain, two-stage, in-loop + refit and oracle; the mean "
        "softmax of the K "
        "fold replicas for no cleaning and in-loop. Detection: precision / recall / F1 of the "
        "final flags against the injected flips (the published AG News labels carry a few real "
        "errors too, counted here as false positives). Estimated noise: confident learning's "
        "at the end. Wall / CPU: one run, mean over seeds (two-stage includes its detect run).",
        "",
        "## Targets",
        "",
        *targets(rows),
        "",
        "## Human-confirmed label errors (20 Newsgroups, IMDB test sets)",
        "",
        "`dcloop.cl.find_label_issues` on the published cross-validated probabilities "
        "(`../shared/data/label-errors`); precision among the flagged samples that people "
        "checked (fewer than 3 of 5 Mechanical Turk workers chose the given label = confirmed).",
        "",
        human_table(meta.get("human", [])),
        "",
        "## Findings",
        "",
        meta.get("findings") or "_(see the final report)_",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument(
        "--methods",
        nargs="+",
        choices=[m for m in METHODS if m != "two_stage"],
        default=list(DEFAULT_METHODS),
        help="detect also gives two_stage",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_text")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--findings", type=Path, default=None)
    p.add_argument("--rewrite", action="store_true", help="rewrite <out>.md from <out>.json")
    p.add_argument(
        "--append",
        action="store_true",
        help="add these runs to <out>.json (replacing the same dataset/setting/seed/method)",
    )
    args = p.parse_args(argv)
    if args.rewrite:
        payload = json.loads(args.out.with_suffix(".json").read_text())
        runs = payload.pop("runs")
        payload.pop("summary", None)
        if args.findings is not None:
            payload["findings"] = args.findings.read_text().strip()
        write(args.out, runs, payload)
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="bench_text_") if args.workdir is None else None
    workdir = Path(tmp.name) if tmp is not None else args.workdir
    tasks = []
    for seed in args.seeds:  # seed by seed: a stopped run still has whole seeds
        for ds in args.datasets:
            for st in args.settings:
                for m in args.methods:
                    tasks.append(
                        {
                            "dataset": ds,
                            "setting": st,
                            "seed": seed,
                            "method": m,
                            "run_dir": str(workdir / ds / st / f"seed{seed}" / m),
                            "overrides": data_overrides(ds, st, args.epochs),
                        }
                    )
    expected = {
        f"{t['dataset']}/{t['setting']}/{t['seed']}/{m}"
        for t in tasks
        for m in ([t["method"], "two_stage"] if t["method"] == "detect" else [t["method"]])
    }
    n_results = len(expected)
    meta: dict[str, Any] = {
        "command": "python scripts/bench_text.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores (shared with other work), Python "
        f"{platform.python_version()}",
        "setup": f"{args.jobs} runs at a time, torch.set_num_threads(1); K=5, "
        f"{args.epochs} epochs, model=text_bow; seeds {args.seeds}",
        "num_results": n_results,
        "expected": sorted(expected),
    }
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    if args.append:  # e.g. rerun a few failed tasks into the committed results
        old = json.loads(args.out.with_suffix(".json").read_text())
        new = {(t["dataset"], t["setting"], t["seed"]) for t in tasks}
        mine = set(args.methods) | ({"two_stage"} if "detect" in args.methods else set())
        runs = [
            r
            for r in old["runs"]
            if not ((r["dataset"], r["setting"], r["seed"]) in new and r["method"] in mine)
        ]
        meta["command"] = f"{old['command']} && {meta['command']}"
        before = set(old.get("expected") or [])
        if not before:  # results written before "expected" was recorded: their own runs
            before = {f"{r['dataset']}/{r['setting']}/{r['seed']}/{r['method']}" for r in runs}
        meta["expected"] = sorted(before | expected)
        meta["num_results"] = len(meta["expected"])
        meta["date"], meta["setup"] = old["date"], old["setup"]
        start -= old.get("total_time_s", 0.0)
        meta["findings"] = old.get("findings")
    if args.findings is not None:
        meta["findings"] = args.findings.read_text().strip()
    meta["human"] = label_error_precision()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = {pool.submit(run_task, t): t for t in tasks}
        for fut in cf.as_completed(futs):
            t = futs[fut]
            try:
                got = fut.result()
            except Exception as err:  # noqa: BLE001 - record and go on
                print(f"FAILED {t['dataset']} {t['setting']} {t['seed']} {t['method']}: {err!r}")
                continue
            runs += got
            meta["total_time_s"] = time.perf_counter() - start
            write(args.out, runs, meta)
            for r in got:
                print(
                    f"{r['dataset']:6s} {r['setting']} seed {r['seed']} {r['method']:10s} "
                    f"acc {100 * r['acc']:.1f} F1 {r.get('detection', {}).get('f1', math.nan):.3f} "
                    f"{r['wall_time_s']:.0f} s",
                    flush=True,
                )
    meta["total_time_s"] = time.perf_counter() - start
    write(args.out, runs, meta)
    print(f"wrote {args.out.with_suffix('.md')} ({meta['total_time_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
