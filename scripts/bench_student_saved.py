"""Student rules trained on a finished run's saved verdict: the same replicas' evidence and
flags, several ways to teach the kept network.

For each run folder (a default run that wrote ``config.yaml``, ``sample_table.pt`` and
``oof_probs_smoothed.npy``), rebuild its data from its own config, then train one student
per rule (:func:`dcloop.student.student_targets`; ``forward`` and ``relabel_forward`` with
:func:`dcloop.models.losses.forward_nll`, ``posterior``/``forward`` rules calibrated per fold
as a run does) with the run's recipe, and report each student's test accuracy beside the
run's own kept model and detection F1. One process per run folder, one thread each.

Usage:

    python scripts/bench_student_saved.py --runs RUN [RUN ...] --rules relabel forward \\
        --out scripts/results/NAME
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def one_run(job: dict) -> list[dict]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dcloop.calibrate import calibrate
    from dcloop.models import Classifier
    from dcloop.models.factory import module_kwargs
    from dcloop.models.losses import forward_nll
    from dcloop.student import FORWARD_RULES, StudentPolicy, student_targets
    from dcloop.train import _net

    run = Path(job["run"])
    cfg = OmegaConf.load(run / "config.yaml")
    metrics = json.loads((run / "metrics.json").read_text())
    table = torch.load(run / "sample_table.pt")
    evidence = torch.from_numpy(np.load(run / "oof_probs_smoothed.npy")).float()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    labels, folds = table["labels"].long(), table["folds"].long()
    assert len(labels) == len(dm.train_dataset), "the run's data changed since it was made"
    cal = calibrate(evidence, labels, folds)
    rows = []
    for rule in job["rules"]:
        policy = StudentPolicy(targets=rule)
        targets, weights = student_targets(
            labels,
            evidence,
            table["flagged"].bool(),
            policy,
            weights=table["weights"].float(),
            posterior=cal.posterior,
            noise_matrix=cal.noise_matrix,
        )
        kwargs = module_kwargs(cfg.model, Classifier)
        if rule in FORWARD_RULES:
            kwargs.pop("label_smoothing", None)
            kwargs["loss"] = forward_nll
        t0 = time.process_time()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = Classifier(
            _net(cfg, dm),
            dm.num_classes,
            targets=targets,
            weights=weights,
            seed=cfg.seed,
            **kwargs,
        )
        with tempfile.TemporaryDirectory() as tmp:
            trainer = instantiate(
                cfg.trainer,
                callbacks=[],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
            )
            trainer.fit(model, datamodule=dm)
            acc = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"])
        rows.append(
            {
                "run": str(run),
                "rule": rule,
                "acc": acc,
                "cpu_s": time.process_time() - t0,
                "run_kept": metrics["kept"]["test_accuracy"],
                "run_kept_targets": metrics["kept"].get("targets"),
                "f1": (metrics.get("detection") or {}).get("f1"),
                "noise_est": metrics["noise"]["rate"],
            }
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--rules", nargs="+", default=["relabel", "forward"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    jobs = [{"run": r, "rules": args.rules} for r in args.runs]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = [r for part in pool.map(one_run, jobs) for r in part]
    command = "python scripts/bench_student_saved.py " + " ".join(sys.argv[1:])
    lines = [
        "# Student rules on a finished run's saved verdict",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU, "
        f"{args.jobs} processes, one thread each; {(time.perf_counter() - t0) / 60:.1f} min.",
        "- Each student: the run's own recipe (net, optimiser, schedule, epochs, seed), trained "
        "from scratch on the rule's targets from the run's saved evidence and flags.",
        "",
        "| run | rule | student test acc. % | the run's kept model % (its rule) "
        "| run's F1 | CPU s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        f1 = "—" if r["f1"] is None else f"{r['f1']:.3f}"
        lines.append(
            f"| {r['run']} | {r['rule']} | {100 * r['acc']:.1f} | {100 * r['run_kept']:.1f} "
            f"({r['run_kept_targets']}) | {f1} | {r['cpu_s']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
