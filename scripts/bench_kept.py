"""Which model should a run keep? Students on the fold replicas' verdict, on real data.

For each (dataset, noise, seed) the K fold replicas are trained once with the shipped
cleaning defaults (the *teacher*; ``--teacher-epochs`` as fractions of the recipe's epochs),
then one network (a *student*) is trained from scratch, with the same recipe as a plain run,
on targets built from the teacher's held-out evidence and flags (:mod:`dcloop.student`):

* ``given``: the given labels (= plain, the reference);
* ``prune``: the loop's weights (flagged samples left out: today's ``refit=true``);
* ``relabel``: flagged samples relabelled to the evidence's argmax when it is >= 0.5 sure;
* ``soft``: flagged samples trained on the evidence's softmax;
* ``posterior``: every sample on its calibrated posterior ``P(true | x, given)``;
* ``drop``: every flagged sample left out (the loop acts only on its confident flags);
* ``soft_mixM``: ``soft``, and every unflagged sample's target mixed with its evidence
  (``(1 - M) * onehot + M * evidence``: distillation from the held-out ensemble);
* ``oracle``: the true labels.

Also reported: the teacher ensemble's own test accuracy (mean softmax of the K replicas) and
the share of the noise gap each recovers, ``(acc - plain) / (oracle - plain)``.

Each task is one process with ``torch.set_num_threads(1)``; ``--jobs`` run at once.

Example::

    python scripts/bench_kept.py --datasets agnews --settings sym40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import io
import json
import math
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "4294967296")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RULES = ("given", "prune", "relabel", "soft", "soft_mix0.5", "oracle")


CIFAR10N = ("aggre", "random1", "worst")  # CIFAR-10N's human labels: real noise, noise=none


def cifar_overrides(setting: str, workdir: Path, epochs: int | None) -> list[str]:
    """The CPU recipe (``experiment=cifar_resnet``) on the CIFAR-10 subset.

    ``aggre``, ``random1``, ``worst``: CIFAR-10N's human labels as the given ones, the folder
    names as the truth (``data.source.truth_manifest``), nothing injected. ``sym20``/``sym40``:
    the folder names as the given labels, with symmetric noise injected. Every setting reads
    the same manifest rows in the same order (``data=csv``), so a seed splits off the same
    validation rows and the oracle is one network for all of them.
    """
    from dcloop.data.truth import folder_truth

    root = HERE.parent.parent / "shared" / "data" / "cifar10-subset"
    truth = folder_truth(root / "cifar10n" / "aggre.csv", workdir / "cifar10_truth.csv")
    given = root / "cifar10n" / f"{setting}.csv" if setting in CIFAR10N else truth
    noise = (
        ["noise=none"]
        if setting in CIFAR10N
        else ["noise=symmetric", f"noise.rate={ {'sym20': 0.2, 'sym40': 0.4}[setting] }"]
    )
    return [
        "data=csv",
        f"data.source.root={root}",
        f"data.source.manifest={given}",
        f"data.source.test_manifest={root / 'cifar10n' / 'test.csv'}",
        *([f"data.source.truth_manifest={truth}"] if setting in CIFAR10N else []),
        *noise,
        "experiment=cifar_resnet",
        "data.val_frac=0.1",
        "data.num_workers=0",
        f"trainer.max_epochs={epochs or 30}",
    ]


def data_overrides(dataset: str, setting: str, workdir: Path, epochs: int | None) -> list[str]:
    sys.path.insert(0, str(HERE))
    if dataset == "cifar":
        return cifar_overrides(setting, workdir, epochs)
    if dataset == "agnews":
        import bench_text

        return bench_text.data_overrides("agnews", setting, epochs or 20)
    import bench_real

    return bench_real.data_overrides(dataset, setting, workdir, epochs or 20)


def _cpu() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def rule_targets(rule, labels, evidence, flags, weights, folds):
    """A student rule's ``(targets, weights)`` (``RULE`` or ``RULE_mixM``:
    :class:`dcloop.student.StudentPolicy`'s ``targets`` and ``mix``); ``posterior`` calibrates
    the evidence per fold first (:func:`dcloop.calibrate.calibrate`), as a run does."""
    from dcloop.calibrate import calibrate
    from dcloop.student import StudentPolicy, student_targets

    mix = float(rule.split("mix")[1]) if "mix" in rule else 0.0
    policy = StudentPolicy(targets=rule.split("_")[0], mix=mix)
    post = None
    if policy.targets == "posterior":
        post = calibrate(evidence.float(), labels, folds).posterior
    return student_targets(labels, evidence.float(), flags, policy, weights=weights, posterior=post)


def run_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`_run_task`; a task that fails is one row naming its error (the others go on)."""
    import traceback

    try:
        return _run_task(task)
    except Exception as err:  # noqa: BLE001 - reported in the results, not lost
        base = {k: task[k] for k in ("dataset", "setting", "seed")}
        return [
            {
                **base,
                "method": "error",
                "acc": math.nan,
                "cpu_s": math.nan,
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc(),
            }
        ]


def _run_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """One (dataset, setting, seed): teachers, then every student rule, in this process."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import bench_noise as bn
    import bench_real

    from dcloop.models import Classifier
    from dcloop.models.factory import module_kwargs
    from dcloop.train import _net, build

    bn.quiet()
    out: list[dict[str, Any]] = []
    base = {k: task[k] for k in ("dataset", "setting", "seed")}
    run_dir = Path(task["run_dir"])
    epochs = task["epochs"]

    def student(cfg, dm, targets, weights, name, extra=None) -> None:
        t0 = _cpu()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = Classifier(
            _net(cfg, dm),
            dm.num_classes,
            targets=targets,
            weights=weights,
            seed=cfg.seed,
            num_samples=len(dm.train_dataset),
            **module_kwargs(cfg.model, Classifier),
        )
        tr = bn.trainer(cfg, run_dir / name)
        tr.fit(model, datamodule=dm)
        acc = float(tr.test(model, datamodule=dm, verbose=False)[0]["test/acc"])
        out.append({**base, "method": name, "acc": acc, "cpu_s": _cpu() - t0, **(extra or {})})

    cfg = bench_real.compose(run_dir / "plain", task["seed"], task["overrides"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    n, c = len(dm.given_labels), dm.num_classes
    labels = torch.as_tensor(dm.given_labels)
    student(cfg, dm, None, None, "given")
    for variant in [v for v in task.get("plain", []) if v] if "given" in task["rules"] else ():
        vcfg = bench_real.compose(
            run_dir / f"plain{len(out)}", task["seed"], [*task["overrides"], *variant]
        )
        student(vcfg, dm, None, None, "given[" + ",".join(variant) + "]")
    if dm.has_ground_truth and "oracle" in task["rules"]:
        true = torch.nn.functional.one_hot(torch.as_tensor(dm.true_labels), c).float()
        student(cfg, dm, true, None, "oracle")
    if "two_stage" in task["rules"]:
        t0 = _cpu()
        two = bn.run_two_stage(cfg, run_dir / "two_stage")
        out.append({**base, "method": "two_stage", "acc": two["acc"], "cpu_s": _cpu() - t0})
    for vi, variant in enumerate(task["defaults"] if "default" in task["rules"] else ()):
        from dcloop.train import train

        tag = "" if not variant else "[" + ",".join(variant) + "]"
        dcfg = bench_real.compose(
            run_dir / f"default{len(out)}", task["seed"], [*task["overrides"], *variant]
        )
        t0 = _cpu()
        with contextlib.redirect_stdout(io.StringIO()):
            m = train(dcfg)
        det = m.get("detection") or {}
        row = {**base, "cpu_s": _cpu() - t0, "noise_est": m["noise"]["rate"]}
        row.update({k: det[k] for k in ("precision", "recall", "f1") if k in det})
        if "noise_injected" in m:
            row["noise_true"] = m["noise_injected"]["rate_actual"]
        out.append({**row, "method": "default_kept" + tag, "acc": m["kept"]["test_accuracy"]})
        # Other student rules on this run's own verdict (its saved evidence and flags).
        table = torch.load(dcfg.output_dir + "/sample_table.pt", weights_only=True)
        saved = np.load(dcfg.output_dir + "/oof_probs_smoothed.npy")
        for rule in task["from_default"] if vi == 0 else ():
            targets, weights = rule_targets(
                rule,
                table["labels"],
                torch.from_numpy(saved),
                table["flagged"],
                table["weights"],
                table["folds"],
            )
            student(cfg, dm, targets, weights, f"student_{rule}", {"teacher_cpu_s": row["cpu_s"]})
        out.append(
            {
                **base,
                "method": "default_ensemble" + tag,
                "acc": m["test"]["ensemble_accuracy"],
                "cpu_s": math.nan,
            }
        )
    for frac in task["teacher_epochs"]:
        e_t = max(2, round(frac * epochs))
        tcfg = bench_real.compose(
            run_dir / f"teacher{frac}",
            task["seed"],
            [*task["overrides"], f"trainer.max_epochs={e_t}", *task["teacher_extra"]],
        )
        L.seed_everything(tcfg.seed, workers=True, verbose=False)
        t0 = _cpu()
        run = build(tcfg, run_dir / f"teacher{frac}")
        with contextlib.redirect_stdout(io.StringIO()):
            run.trainer.fit(run.model, datamodule=run.dm)
            test = run.trainer.test(run.model, datamodule=run.dm, verbose=False)
        cl, table = run.cl, run.model.samples
        evidence = cl.evidence if cl.evidence is not None else cl.collector.probs.float()
        flags = table.flagged.clone()
        det = {}
        if table.has_ground_truth:
            from dcloop.metrics import detection_metrics

            d = detection_metrics(flags, table.is_noisy, table.quality)
            det = {k: d[k] for k in ("precision", "recall", "f1")}
        est = cl.last_result.noise_rate if cl.last_result is not None else math.nan
        t_cpu = _cpu() - t0
        tag = f"@{frac}"
        out.append(
            {
                **base,
                "method": "ensemble" + tag,
                "acc": float(test[0]["test/acc"]),
                "cpu_s": t_cpu,
                "noise_est": est,
                "noise_true": float(table.is_noisy.float().mean()),
                "num_flagged": int(flags.sum()),
                **det,
            }
        )
        assert len(run.dm.given_labels) == n
        for rule in task["rules"]:
            if rule in ("given", "oracle", "two_stage", "default"):
                continue
            targets, weights = rule_targets(
                rule, labels, evidence.cpu(), flags.cpu(), table.weights.cpu(), table.folds.cpu()
            )
            student(cfg, dm, targets, weights, rule + tag, {"teacher_cpu_s": t_cpu})
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["dataset"], r["setting"]) for r in runs})
    for ds, st in keys:
        rs = [
            r for r in runs if (r["dataset"], r["setting"]) == (ds, st) and r["method"] != "error"
        ]
        by_seed: dict[int, dict[str, float]] = {}
        for r in rs:
            by_seed.setdefault(r["seed"], {})[r["method"]] = r["acc"]
        for seed, v in by_seed.items():  # --oracle-once: the true labels are the setting's too
            if "oracle" not in v:
                shared = [
                    r["acc"]
                    for r in runs
                    if (r["dataset"], r["seed"], r["method"]) == (ds, seed, "oracle")
                ]
                if shared:
                    v["oracle"] = shared[0]
        methods = sorted({r["method"] for r in rs}, key=_method_order)
        plain_cpu = np.mean([r["cpu_s"] for r in rs if r["method"] == "given"])
        for m in methods:
            accs = [v[m] for v in by_seed.values() if m in v]
            gaps = [
                (v[m] - v["given"]) / (v["oracle"] - v["given"])
                for v in by_seed.values()
                if m in v and "oracle" in v and "given" in v and v["oracle"] != v["given"]
            ]
            mine = [r for r in rs if r["method"] == m]
            cpu = np.mean([r["cpu_s"] + r.get("teacher_cpu_s", 0.0) for r in mine])
            cpu = math.nan if math.isnan(cpu) else cpu
            row = {
                "dataset": ds,
                "setting": st,
                "method": m,
                "n": len(accs),
                "acc": float(np.mean(accs)),
                "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "gap": float(np.mean(gaps)) if gaps else math.nan,
                "gap_min": float(np.min(gaps)) if gaps else math.nan,
                "cpu_ratio": float(cpu / plain_cpu) if plain_cpu else math.nan,
            }
            for k in ("f1", "noise_est", "noise_true"):
                vals = [r[k] for r in mine if k in r]
                if vals:
                    row[k] = float(np.mean(vals))
            rows.append(row)
    return rows


def _method_order(m: str) -> tuple:
    name, _, frac = m.split("[")[0].partition("@")
    order = [
        "given",
        "two_stage",
        "default_ensemble",
        "default_kept",
        "student_prune",
        "student_relabel",
        "student_soft",
        "student_soft_mix0.5",
        "ensemble",
        "prune",
        "relabel",
        "soft",
        "soft_mix0.5",
        "oracle",
    ]
    return (float(frac or 0), order.index(name) if name in order else 99, m)


def markdown(rows, meta) -> str:
    lines = [
        "# Which model to keep: students on the fold replicas' verdict",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- Date: {meta['date']}; machine: {meta['machine']}; "
        f"total wall {meta['wall_min']:.1f} min",
        f"- {meta['setup']}",
        "",
        "| data | noise | model | test acc. % (mean ± sd, n) | gap recovered (mean, min) "
        "| F1 | est./true noise % | CPU × plain |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        est = (
            f"{100 * r['noise_est']:.1f} / {100 * r['noise_true']:.1f}" if "noise_est" in r else "—"
        )
        gap = "—" if math.isnan(r["gap"]) else f"{100 * r['gap']:.0f} % ({100 * r['gap_min']:.0f})"
        f1 = f"{r['f1']:.3f}" if "f1" in r else "—"
        lines.append(
            f"| {r['dataset']} | {r['setting']} | {r['method']} | {100 * r['acc']:.1f} ± "
            f"{100 * r['sd']:.1f} ({r['n']}) | {gap} | {f1} | {est} | {_ratio(r['cpu_ratio'])} |"
        )
    lines += [
        "",
        "Model names: `given` = plain (one network, noisy labels); `oracle` = one network on the "
        "true labels; `ensemble@F` = the K fold replicas' mean softmax after a cleaning run of "
        "F x the recipe's epochs (the teacher); `RULE@F` = one network trained from scratch for "
        "the full recipe on that teacher's targets (dcloop.student). CPU x plain includes the "
        "teacher for students.",
        "",
    ]
    return "\n".join(lines)


def _ratio(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["fsdd", "agnews"])
    p.add_argument("--settings", nargs="+", default=["sym40", "asym30"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rules", nargs="+", default=list(RULES))
    p.add_argument("--teacher-epochs", nargs="*", type=float, default=[1.0, 0.5])
    p.add_argument("--teacher-extra", nargs="*", default=[], help="overrides of the teacher run")
    p.add_argument(
        "--defaults",
        nargs="*",
        default=[""],
        help="with rule 'default': variants of the default run, each a comma-separated list "
        "of overrides ('' = the shipped defaults)",
    )
    p.add_argument(
        "--plain",
        nargs="*",
        default=[""],
        help="with rule 'given': variants of the plain network beside it, each a "
        "comma-separated list of overrides (e.g. model.elr.lam=3; '' = none)",
    )
    p.add_argument("--epochs", type=int, default=None, help="recipe epochs (default: bench's)")
    p.add_argument(
        "--from-default",
        nargs="*",
        default=[],
        help="student rules also trained on the (first) default run's saved verdict",
    )
    p.add_argument(
        "--oracle-once",
        action="store_true",
        help="train the oracle (true labels) only in each dataset's first setting: it is the "
        "same network in every setting of a seed, and the others' gaps use it",
    )
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_kept")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        help="write --out's .md/.json from this partial results file (a run cut short) and exit",
    )
    p.add_argument("--note", default="", help="with --render: a line saying why it was cut")
    args = p.parse_args(argv)
    if args.render is not None:
        runs = json.loads(args.render.read_text())
        meta = json.loads(args.render.with_suffix(".meta.json").read_text())
        meta["setup"] += f". {args.note}" if args.note else ""
        rows = summarize(runs)
        payload = {**meta, "summary": rows, "runs": runs}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float))
        args.out.with_suffix(".md").write_text(markdown(rows, meta))
        print(markdown(rows, meta))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_kept_"))
    tasks = []
    for seed in args.seeds:  # every setting's first seed first: a cut run still covers all
        for ds in args.datasets:
            for st in args.settings:
                ov = data_overrides(ds, st, workdir, args.epochs)
                epochs = int(
                    next(o for o in ov if o.startswith("trainer.max_epochs=")).split("=")[1]
                )
                tasks.append(
                    {
                        "dataset": ds,
                        "setting": st,
                        "seed": seed,
                        "overrides": ov,
                        "epochs": epochs,
                        "rules": [
                            r
                            for r in args.rules
                            if not (args.oracle_once and r == "oracle" and st != args.settings[0])
                        ],
                        "teacher_epochs": args.teacher_epochs,
                        "teacher_extra": args.teacher_extra,
                        "defaults": [[o for o in v.split(",") if o] for v in args.defaults],
                        "from_default": args.from_default,
                        "plain": [[o for o in v.split(",") if o] for v in args.plain],
                        "run_dir": str(workdir / f"{ds}_{st}_{seed}"),
                    }
                )
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    early = {
        "command": "python scripts/bench_kept.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}",
        "setup": f"{args.jobs} tasks at a time, one process each with torch.set_num_threads(1)",
        "wall_min": math.nan,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".partial.meta.json").write_text(json.dumps(early) + "\n")
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        for fut in cf.as_completed([pool.submit(run_task, t) for t in tasks]):
            got = fut.result()
            runs += got
            args.out.parent.mkdir(parents=True, exist_ok=True)
            partial = args.out.with_suffix(".partial.json")
            partial.write_text(json.dumps(runs, default=float) + "\n")  # kept if a run dies
            print(f"done {got[0]['dataset']} {got[0]['setting']} seed {got[0]['seed']}", flush=True)
    meta = {
        "command": "python scripts/bench_kept.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}",
        "setup": (
            f"{args.jobs} tasks at a time, one process each with torch.set_num_threads(1); "
            "recipes of bench_real (fsdd: AudioCNN, 20 epochs), bench_text (agnews: TextBoW) and "
            "bench_cifar_recipe (cifar: experiment=cifar_resnet, 30 epochs; aggre/random1/worst = "
            "CIFAR-10N's human labels, noise=none, truth from the folder names); "
            f"K=5 unless a variant says folds=; teacher overrides: {args.teacher_extra or 'none'}"
        ),
        "wall_min": (time.perf_counter() - t0) / 60,
    }
    rows = summarize(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "summary": rows, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    text = markdown(rows, meta)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(text)


if __name__ == "__main__":
    main()
