"""Calibrated evidence (issue 20 item 3): is confident learning's noise estimate right?

Two phases:

* ``runs``: dcloop detect runs (``cl=detect``: the K fold replicas and the OOF softmax, no
  cleaning, so the evidence is the model's alone) on digits, spoken digits (FSDD, as
  ``bench_real``) and AG News (as ``bench_text``), with symmetric 20 / 40 % and asymmetric 30 %
  noise. Each run folder keeps ``oof_probs.npy`` / ``oof_probs_smoothed.npy`` (the verdict's
  evidence), ``folds.npy``, ``labels.csv`` (given, true) and, from :class:`ValLogits`, every
  replica's logits on the validation split (``val_logits.npy``, ``(K, N_val, C)``).
* ``eval``: offline, on those files: the noise rate and detection F1 of
  :func:`dcloop.cl.verdict` on the raw evidence and on the evidence calibrated by
  :func:`dcloop.calibrate.calibrate` (and by the other estimators tried), against the injected
  flips.

Example::

    python scripts/bench_calibration.py --jobs 2            # runs, then eval
    python scripts/bench_calibration.py --phase eval        # eval on the saved runs only
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATASETS = ("digits", "fsdd", "agnews")
SETTINGS = ("sym20", "sym40", "asym30")
EPOCHS = {"digits": 30, "fsdd": 20, "agnews": 15}


class ValLogits(L.Callback):
    """At the end of fit: every replica's logits on the validation split, ``(K, N_val, C)``,
    and the validation labels, into ``path`` (``val_logits.npy``, ``val_labels.npy``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.datamodule.val_dataloader()
        was = pl_module.training
        pl_module.eval()
        logits, labels = [], []
        with torch.no_grad():
            for x, y, _ in loader:
                logits.append(pl_module(x.to(pl_module.device)).float().cpu())
                labels.append(y)
        pl_module.train(was)
        self.path.mkdir(parents=True, exist_ok=True)
        np.save(self.path / "val_logits.npy", torch.cat(logits, 1).numpy())
        np.save(self.path / "val_labels.npy", torch.cat(labels).numpy())


def overrides(dataset: str, setting: str, workdir: Path) -> list[str]:
    """The data/model/noise overrides of ``bench_real`` (fsdd) and ``bench_text`` (agnews);
    digits: the shipped defaults with the noise."""
    import bench_real
    import bench_text

    if dataset == "fsdd":
        return bench_real.data_overrides("fsdd", setting, workdir, EPOCHS["fsdd"])
    if dataset == "agnews":
        return bench_text.data_overrides("agnews", setting, EPOCHS["agnews"])
    noise = {
        "sym20": ["noise=symmetric", "noise.rate=0.2"],
        "sym40": ["noise=symmetric", "noise.rate=0.4"],
        "asym30": ["noise=asymmetric", "noise.rate=0.3"],
    }[setting]
    return [*noise, "data.num_workers=0", f"trainer.max_epochs={EPOCHS['digits']}"]


#: What the offline phase reads from a run folder: a run with all of them is done.
EVIDENCE = ("labels.csv", "oof_probs_smoothed.npy", "folds.npy", "val_logits.npy", "val_labels.npy")


def finished(run_dir: Path) -> bool:
    return all((run_dir / f).exists() for f in EVIDENCE)


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One detect run in this (worker) process; its folder keeps the evidence."""
    torch.set_num_threads(1)
    import bench_noise as bn
    from bench_real import compose, run_inloop

    bn.quiet()
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = [
        *task["overrides"],
        "cl=detect",
        "health=false",  # the data-health pass: not what this measures
        "+callbacks.val_logits._target_=bench_calibration.ValLogits",
        f"+callbacks.val_logits.path={run_dir}",
    ]
    cfg = compose(run_dir, task["seed"], extra)
    t0 = time.perf_counter()
    out = run_inloop(cfg, run_dir)
    out["wall_time_s"] = time.perf_counter() - t0
    (run_dir / "done.json").write_text(json.dumps(out, indent=1, default=float))
    return {k: task[k] for k in ("dataset", "setting", "seed")}


def run_all(args) -> None:
    tasks = []
    for seed in args.seeds:  # seed-major: a stopped phase still has whole seeds
        for ds in args.datasets:
            for st in args.settings:
                run_dir = args.workdir / f"{ds}_{st}_s{seed}"
                if finished(run_dir):
                    continue
                ov = overrides(ds, st, args.workdir)
                tasks.append(
                    {"dataset": ds, "setting": st, "seed": seed, "run_dir": str(run_dir)}
                    | {"overrides": ov}
                )
    print(f"{len(tasks)} runs to do", flush=True)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_one, t) for t in tasks]
        for f in cf.as_completed(futures):
            try:
                print("done", f.result(), flush=True)
            except Exception as err:  # one failed run: report it, keep the others going
                print("FAILED", repr(err), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=("runs", "eval", "all"), default="all")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_calibration"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_calibration")
    args = p.parse_args(argv)
    args.command = "python scripts/bench_calibration.py " + shlex.join(argv or sys.argv[1:])
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.phase in ("runs", "all"):
        run_all(args)
    if args.phase in ("eval", "all"):
        evaluate(args)


# ------------------------------------------------------------------------------ offline


def load_run(run_dir: Path) -> dict[str, Any]:
    """A finished run's evidence, labels, folds and validation logits (host tensors)."""
    from dcloop.csvsafe import read_csv

    lab = read_csv(run_dir / "labels.csv")
    t = torch.as_tensor
    return {
        "given": t(lab["given_label"].to_numpy(np.int64)),
        "true": t(lab["true_label"].to_numpy(np.int64)),
        "evidence": t(np.load(run_dir / "oof_probs_smoothed.npy")),
        "folds": t(np.load(run_dir / "folds.npy")).long(),
        "val_logits": t(np.load(run_dir / "val_logits.npy")).double(),
        "val_labels": t(np.load(run_dir / "val_labels.npy")).long(),
    }


def nll_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The usual temperature: minimises the NLL of ``labels`` (:func:`dcloop.calibrate`'s
    search with the identity as noise matrix)."""
    from dcloop.calibrate import _fit_log_t

    eye = torch.eye(logits.shape[1], dtype=logits.dtype)
    return float(np.exp(_fit_log_t(logits, eye[labels], 0.0, None)))


def scaled(evidence: torch.Tensor, folds: torch.Tensor, temps: list[float]) -> torch.Tensor:
    """``softmax(log p / T_fold)``: temperature scaling of each replica's OOF rows."""
    z = evidence.double().clamp_min(1e-12).log()
    inv = torch.as_tensor([1 / temps[f] for f in folds.tolist()], dtype=z.dtype)
    return torch.softmax(z * inv.unsqueeze(1), 1).float()


def noisy_val_labels(d: dict[str, Any], setting: str, seed: int) -> torch.Tensor:
    """The validation labels with the training split's noise (same kind and rate; for the
    asymmetric setting, the class pairs the training flips used)."""
    from dcloop.data.noise import inject_noise

    y, c = d["val_labels"].numpy(), d["evidence"].shape[1]
    if setting.startswith("sym"):
        rate = int(setting[3:]) / 100
        res = inject_noise(y, kind="symmetric", rate=rate, num_classes=c, seed=seed + 1000)
    else:
        flips = (d["given"] != d["true"]).numpy()
        pairs = {}
        for true, given in zip(d["true"].numpy()[flips], d["given"].numpy()[flips], strict=True):
            pairs.setdefault(int(true), int(given))
        res = inject_noise(
            y, kind="asymmetric", rate=0.3, num_classes=c, seed=seed + 1000, mapping=pairs
        )
    return torch.as_tensor(res.given_labels)


def f1(flags: torch.Tensor, noisy: torch.Tensor) -> float:
    from dcloop.metrics import detection_metrics

    return float(detection_metrics(flags.bool(), noisy.bool())["f1"])


def evaluate_run(run_dir: Path, setting: str, seed: int) -> dict[str, Any]:
    """Noise estimates and detection F1 of every method on one run's saved evidence."""
    from dcloop.calibrate import calibrate
    from dcloop.cl import verdict
    from dcloop.safety import CleaningPolicy

    d = load_run(run_dir)
    given, ev, folds = d["given"], d["evidence"], d["folds"]
    noisy = given != d["true"]
    k = int(folds.max()) + 1
    out: dict[str, Any] = {"true": float(noisy.double().mean()), "n": len(given)}
    pred = ev.argmax(1)  # why CL runs high: the replicas' own mistakes, and which rows CL flags
    out["model_error"] = float((pred != d["true"]).double().mean())
    out["disagreement"] = float((pred != given).double().mean())
    t0 = time.process_time()
    before = CleaningPolicy().verdict(given, ev)
    out["cl_s"] = time.process_time() - t0
    t0 = time.process_time()
    after = CleaningPolicy(calibrate="noise_aware").verdict(given, ev, folds=folds)
    out["calibrated_s"] = time.process_time() - t0 - out["cl_s"]
    cal = calibrate(ev, given, folds)
    flagged = before.flags.bool()
    out["cl"] = {
        "est": before.noise_rate,
        "f1": f1(before.flags, noisy),
        "false_flag_share": float((flagged & ~noisy).sum() / flagged.sum().clamp_min(1)),
    }
    out["noise_aware"] = {
        "est": after.noise_rate,
        "f1": f1(after.flags, noisy),
        "low": cal.noise_rate_range[0],
        "high": cal.noise_rate_range[1],
        "temperature": float(cal.temperatures.mean()),
        "posterior_f1": f1(cal.posterior_clean < 0.5, noisy),
    }
    val_noisy = noisy_val_labels(d, setting, seed)
    temps = {
        "t_oof": [
            nll_temperature(ev[folds == j].double().log(), given[folds == j]) for j in range(k)
        ],
        "t_val_clean": [nll_temperature(d["val_logits"][j], d["val_labels"]) for j in range(k)],
        "t_val_noisy": [nll_temperature(d["val_logits"][j], val_noisy) for j in range(k)],
    }
    for name, ts in temps.items():
        v = verdict(given, scaled(ev, folds, ts))
        out[name] = {
            "est": v.noise_rate,
            "f1": f1(v.flags, noisy),
            "temperature": float(np.mean(ts)),
        }
    return out


#: Methods in the results table: key -> label.
METHODS = {
    "cl": "confident learning as today (per-class thresholds on the raw evidence)",
    "t_oof": "CL on evidence scaled by T fitted on the OOF rows (NLL vs given labels)",
    "t_val_noisy": "CL on evidence scaled by T fitted on validation, noisy labels",
    "t_val_clean": "CL on evidence scaled by T fitted on validation, clean labels",
    "noise_aware": "**cl.calibrate=noise_aware** (T fitted with the noise; dcloop.calibrate)",
}


def evaluate(args) -> None:
    runs = []
    for seed in args.seeds:
        for ds in args.datasets:
            for st in args.settings:
                run_dir = args.workdir / f"{ds}_{st}_s{seed}"
                if not finished(run_dir):
                    continue
                res = evaluate_run(run_dir, st, seed)
                runs.append({"dataset": ds, "setting": st, "seed": seed, **res})
                print(f"evaluated {run_dir.name}", flush=True)
    write_results(args, runs)


def _rel(est: float, true: float) -> float:
    return est / true - 1


def why_rows(runs: list[dict[str, Any]], keys) -> list[str]:
    out = []
    for ds, st in keys:
        rs = [r for r in runs if (r["dataset"], r["setting"]) == (ds, st)]

        def pct(f, rs=rs):
            return f"{100 * np.mean([f(r) for r in rs]):.1f}"

        out.append(
            f"| {ds} | {st} | {pct(lambda r: r['true'])} | {pct(lambda r: r['model_error'])} | "
            f"{pct(lambda r: r['disagreement'])} | {pct(lambda r: r['cl']['est'])} | "
            f"{pct(lambda r: r['cl']['false_flag_share'])} |"
        )
    return out


def write_results(args, runs: list[dict[str, Any]]) -> None:
    meta = {
        "command": args.command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores (shared), Python {sys.version.split()[0]}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    keys = sorted(
        {(r["dataset"], r["setting"]) for r in runs},
        key=lambda k: (DATASETS.index(k[0]), SETTINGS.index(k[1])),
    )
    lines = [
        "# Calibrated evidence: confident learning's noise estimate vs the truth",
        "",
        "```",
        "python scripts/bench_calibration.py --phase runs --jobs 2  # the runs",
        meta["command"],
        "```",
        "",
        f"- Date: {meta['date']}; machine: {meta['machine']}",
        "- Runs: `dcloop` with `cl=detect` (K=5 fold replicas, OOF softmax smoothed as shipped, "
        "no cleaning), digits (SmallCNN, 30 epochs), spoken digits (FSDD, audio_cnn, 20 epochs, "
        "as `bench_real`), AG News (text_bow, 15 epochs, as `bench_text`); every method judged "
        "offline on the same saved evidence (`oof_probs_smoothed.npy`, the last verdict's).",
        f"- Seeds {sorted({r['seed'] for r in runs})}; relative error = est. / true - 1; "
        "target: within ±25 %.",
        "",
        "## Noise estimate, relative error (mean over seeds; worst seed in brackets)",
        "",
        "| data | noise | true % | " + " | ".join(METHODS) + " |",
        "|---|---|---:|" + "---:|" * len(METHODS),
    ]
    for ds, st in keys:
        rs = [r for r in runs if (r["dataset"], r["setting"]) == (ds, st)]
        cells = []
        for m in METHODS:
            rel = [_rel(r[m]["est"], r["true"]) for r in rs]
            worst = max(rel, key=abs)
            cells.append(f"{100 * np.mean(rel):+.0f} % ({100 * worst:+.0f})")
        true = 100 * np.mean([r["true"] for r in rs])
        lines.append(f"| {ds} | {st} | {true:.1f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Columns: " + "; ".join(f"`{k}`: {v}" for k, v in METHODS.items()) + ".",
        "",
        "## Detection F1 (mean over seeds)",
        "",
        "| data | noise | CL flags, before | CL flags, cl.calibrate=noise_aware | "
        "CL on T(oof) | CL on T(val, noisy) | posterior < 0.5 (not shipped) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for ds, st in keys:
        rs = [r for r in runs if (r["dataset"], r["setting"]) == (ds, st)]

        def m(key, sub="f1", rs=rs):
            return f"{np.mean([r[key][sub] for r in rs]):.3f}"

        lines.append(
            f"| {ds} | {st} | {m('cl')} | {m('noise_aware')} | {m('t_oof')} | "
            f"{m('t_val_noisy')} | {m('noise_aware', 'posterior_f1')} |"
        )
    lines += [
        "",
        "## Why confident learning runs high (mean over seeds)",
        "",
        "| data | noise | true noise % | OOF argmax wrong vs true labels % | OOF argmax != given % "
        "| CL estimate % | CL flags on clean rows (1 - precision) |",
        "|---|---|---:|---:|---:|---:|---:|",
        *why_rows(runs, keys),
        "",
        "## Temperatures and cost (mean over seeds and replicas)",
        "",
        "| data | noise | T, noise-aware | T, OOF NLL | T, val noisy | T, val clean | "
        "estimate range (likelihood .. counted) | calibrate CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ds, st in keys:
        rs = [r for r in runs if (r["dataset"], r["setting"]) == (ds, st)]

        def t(key, rs=rs):
            return f"{np.mean([r[key]['temperature'] for r in rs]):.2f}"

        lo = 100 * np.mean([_rel(r["noise_aware"]["low"], r["true"]) for r in rs])
        hi = 100 * np.mean([_rel(r["noise_aware"]["high"], r["true"]) for r in rs])
        sec = np.mean([r["calibrated_s"] for r in rs])
        lines.append(
            f"| {ds} | {st} | {t('noise_aware')} | {t('t_oof')} | {t('t_val_noisy')} | "
            f"{t('t_val_clean')} | {lo:+.0f} % .. {hi:+.0f} % | {sec:.2f} |"
        )
    lines += ["", "## Target (±25 % relative, mean of the seeds)", "", *target_lines(runs, keys)]
    lines += ["", *NOTES]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


#: How the method was chosen, and what the page does not show (static text of the page).
NOTES = [
    "## Notes",
    "",
    "- Protocol: the estimator (likelihood fit of temperature + noise matrix, then the mean of "
    "its noise matrix and the confident counts at 0.9) was chosen on the seed-0 runs alone; "
    "seeds 1 and 2 were run afterwards and not used to choose or tune anything.",
    "- `cl.calibrate=noise_aware` changes only the verdict's noise fields, so its flags (and "
    "F1) equal confident learning's by construction. The posterior column flags "
    "`posterior_clean < 0.5` of `dcloop.calibrate`: higher F1 on 7 of 9 cells, lower on "
    "digits with pair noise (-0.08) and AG News sym40 (-0.003); not shipped.",
    "- Offline: the estimate of the last verdict of a `cl=detect` run, on its saved evidence; "
    "the in-loop effect (the guard's noise-jump check reads the estimate) needs the callback "
    "to pass `calibrate` and `folds` and was not run.",
]


def target_lines(runs: list[dict[str, Any]], keys) -> list[str]:
    out = []
    for ds, st in keys:
        rs = [r for r in runs if (r["dataset"], r["setting"]) == (ds, st)]
        before = np.mean([_rel(r["cl"]["est"], r["true"]) for r in rs])
        after = np.mean([_rel(r["noise_aware"]["est"], r["true"]) for r in rs])
        verdict = "within" if abs(after) <= 0.25 else "MISSED"
        out.append(
            f"- {ds} {st}: confident learning {100 * before:+.0f} %, noise-aware "
            f"{100 * after:+.0f} % ({verdict})"
        )
    return out


if __name__ == "__main__":
    main()
