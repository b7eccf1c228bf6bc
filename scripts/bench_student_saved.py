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

A rule may carry student options: ``relabel,unlabelled=1,view=perturb``; ``flags=truth``
trains it on perfect detection instead of the run's flags (an upper bound, for diagnosis);
other flags and ``evidence=infold``: :meth:`SavedRun.flags`, :meth:`SavedRun.probs`.
Each row also gives how right the rule's targets are against the true labels.
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


class SavedRun:
    """A finished run folder's config, sample table, evidence and rebuilt data module, and
    the students trained on its saved verdict with the run's own recipe and seed."""

    def __init__(self, run: Path) -> None:
        import lightning as L
        import numpy as np
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        torch.set_num_threads(1)
        self.run = run
        self.cfg = OmegaConf.load(run / "config.yaml")
        self.metrics = json.loads((run / "metrics.json").read_text())
        self.table = torch.load(run / "sample_table.pt")
        self.evidence = torch.from_numpy(np.load(run / "oof_probs_smoothed.npy")).float()
        fit = run / "in_fold_probs.npy"  # written by student.targets=auto runs
        self.in_fold = torch.from_numpy(np.load(fit)).float() if fit.exists() else None
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)
        self.dm = instantiate(self.cfg.data)
        self.dm.setup("fit")
        assert len(self.table["labels"]) == len(self.dm.train_dataset), "the data changed"

    def flags(self, which: str = "run"):
        """The flags a student trains on: ``run`` (the run's verdict), ``truth`` (every
        sample whose given label is wrong, from the data's true labels: perfect detection,
        an upper bound for the rule, not something a run can do), ``disagree`` (every sample
        whose evidence's top class is not its given label), ``belowT`` (e.g. ``below0.5``:
        every sample whose evidence gives its given label less than T), ``infold`` (the
        replicas that trained on it disagree with its label), ``student`` (the run's flags
        and every label the relabel student disagrees with on its own training samples) or
        ``cl:E`` (confident learning, :func:`dcloop.cl.find_label_issues`, on evidence ``E``
        of :meth:`probs`, e.g. ``cl:blend``). ``disagree`` and ``belowT`` read the held-out
        softmax, or evidence ``E`` with a suffix (``disagree:knn``, ``below0.5:knn``); ``A+B``
        is the union of two flag sets (``run+disagree:knn``), ``A&B`` their intersection
        (binds tighter: ``run+disagree&disagree:knn``)."""
        if "+" in which:
            first, rest = which.split("+", 1)
            return self.flags(first).bool() | self.flags(rest).bool()
        if "&" in which:
            first, rest = which.split("&", 1)
            return self.flags(first).bool() & self.flags(rest).bool()
        if which == "run":
            return self.table["flagged"]
        if which.startswith("cl:"):
            from dcloop.cl import find_label_issues

            return find_label_issues(self.table["labels"].long(), self.probs(which[3:]))
        which, _, source = which.partition(":")
        evidence = self.probs(source) if source else self.evidence
        given = evidence.gather(1, self.table["labels"].long().view(-1, 1)).squeeze(1)
        if which == "disagree":
            return evidence.argmax(1) != self.table["labels"]
        if which == "infold":
            return self.probs("infold").argmax(1) != self.table["labels"]
        if which == "student":  # the run's flags, and the labels a relabel student disagrees with
            return self.table["flagged"] | (self.probs("student").argmax(1) != self.table["labels"])
        if which.startswith("below"):
            return given < float(which[len("below") :])
        if which == "truth":
            if self.true_labels() is None:
                raise ValueError(f"{self.run}: flags=truth needs a run with true labels")
            return self.table["labels"] != self.true_labels()
        raise ValueError(
            f"flags={which!r}: expected run, truth, disagree, belowT (e.g. below0.5), infold "
            "or student"
        )

    def probs(self, which: str = "oof"):
        """The evidence the rule reads: ``oof`` (held-out, the run's), ``infold`` (the
        replicas that trained on each sample: ``in_fold_probs.npy``), ``mean`` (of the two) or
        ``student`` (:meth:`student_probs`), ``knn`` (:meth:`knn_probs`; ``knnK``: with K
        neighbours) or ``blend`` (the mean of ``oof`` and ``knn``)."""
        if which == "oof":
            return self.evidence
        if which == "knn" or (which.startswith("knn") and which[3:].isdigit()):
            return self.knn_probs(int(which[3:] or 10))  # knnK: K neighbours
        if which == "blend":
            return (self.evidence + self.knn_probs()) / 2
        if which == "student":
            return self.student_probs()
        if which in ("infold", "mean"):
            if self.in_fold is None:
                raise ValueError(f"{self.run}: no in_fold_probs.npy (a student.targets=auto run)")
            return self.in_fold if which == "infold" else (self.in_fold + self.evidence) / 2
        raise ValueError(
            f"evidence={which!r}: expected 'oof', 'infold', 'mean', 'student', 'knn' or 'blend'"
        )

    def knn_probs(self, k: int = 10):
        """``(N, C)``: the given labels of each sample's ``k`` nearest other training samples
        in the replicas' mean embedding (the run's ``data_issues/features_train.npy``,
        cosine), as shares smoothed by one pseudo-count spread over the classes (deep kNN,
        Bahri et al. 2020)."""
        import numpy as np
        import torch

        from dcloop.health import knn

        k = min(k, len(self.table["labels"]) - 1)
        cache = getattr(self, "_knn", None)
        if not isinstance(cache, dict):
            self._knn = cache = {}
        if k not in cache:
            feats = torch.from_numpy(np.load(self.run / "data_issues" / "features_train.npy"))
            labels = self.table["labels"].long()
            nb = knn(feats.float(), k=k, metric="cosine")
            votes = torch.nn.functional.one_hot(labels[nb.index], self.dm.num_classes).sum(1)
            cache[k] = (votes.float() + 1.0 / self.dm.num_classes) / (k + 1.0)
        return cache[k]

    def student_probs(self):
        """``(N, C)``: the softmax, on its own training samples (in eval mode), of the student
        that the run kept (``relabel`` on the run's flags); trained once and cached."""
        import torch

        from dcloop.student import StudentPolicy

        if getattr(self, "_student_probs", None) is None:
            model, _ = self.student(StudentPolicy("relabel"))
            model.eval()
            out = torch.zeros(len(self.table["labels"]), self.dm.num_classes)
            with torch.no_grad():
                for x, _, index in self.dm.oof_dataloader():
                    out[index] = model(x).float().softmax(-1)
            self._student_probs = out
        return self._student_probs

    def true_labels(self):
        """The data's true labels, or ``None`` where the run has none (its table holds -1)."""
        true = self.table.get("true_labels")
        return None if true is None or bool((true < 0).any()) else true

    def target_quality(self, policy, flags: str = "run", evidence: str = "oof") -> dict:
        """How right the student's targets are, against the true labels
        (:func:`dcloop.student.target_quality`: the share of the samples it trains on, and
        among them the share whose target's top class is the true label), and the same share
        among the flagged ones. Empty where the rule's targets are not label distributions
        (forward rules, posterior) or the run has no true labels."""
        from dcloop.student import FORWARD_RULES, student_targets, target_quality

        true = self.true_labels()
        if true is None or policy.targets in FORWARD_RULES or policy.targets == "posterior":
            return {}
        flagged = self.flags(flags)
        t, w = student_targets(
            self.table["labels"],
            self.probs(evidence),
            flagged,
            policy,
            weights=self.table["weights"],
        )
        q = target_quality(t, w, true)
        on_flagged = (w > 0) & flagged
        return {
            "trained_share": q["trained_share"],
            "target_acc": q["targets_right"],
            "flagged_target_acc": float((t.argmax(1) == true)[on_flagged].float().mean())
            if bool(on_flagged.any())
            else None,
        }

    def student(self, policy, flags: str = "run", evidence: str = "oof"):
        """A fitted student of ``policy`` (:class:`dcloop.student.StudentPolicy`) on the
        ``flags`` (:meth:`flags`) and its test accuracy."""
        import lightning as L
        from hydra.utils import instantiate

        from dcloop.train import _net, build_student

        cfg, dm, table = self.cfg, self.dm, self.table
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = build_student(
            cfg,
            _net(cfg, dm),
            dm.num_classes,
            policy,
            labels=table["labels"],
            evidence=self.probs(evidence),
            flags=self.flags(flags),
            weights=table["weights"],
            folds=table["folds"],
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
        return model, acc


def one_run(job: dict) -> list[dict]:
    from dcloop.student import StudentPolicy

    saved = SavedRun(Path(job["run"]))
    metrics, rows = saved.metrics, []
    for rule in job["rules"]:
        t0 = time.process_time()
        opts = parse_rule(rule)
        flags, evidence = opts.pop("flags", "run"), opts.pop("evidence", "oof")
        policy = StudentPolicy(**opts)
        _, acc = saved.student(policy, flags, evidence)
        rows.append(
            {
                "run": str(saved.run),
                "rule": rule,
                "acc": acc,
                **saved.target_quality(policy, flags, evidence),
                "cpu_s": time.process_time() - t0,
                "run_kept": metrics["kept"]["test_accuracy"],
                "run_kept_targets": metrics["kept"].get("targets"),
                "f1": (metrics.get("detection") or {}).get("f1"),
                "noise_est": metrics["noise"]["rate"],
            }
        )
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Mean test accuracy per setting (the run folder's parent, seed suffix dropped) and rule,
    beside the runs' own kept models and the per-seed difference to them."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        setting = Path(r["run"]).parent.name.rsplit("_", 1)[0]
        groups.setdefault((setting, r["rule"]), []).append(r)
    out = [
        "| setting | rule | n | student % (mean ± sd) | run's kept % | student - kept (mean, "
        "per seed) | trained on | targets right |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for (setting, rule), rs in sorted(groups.items()):
        acc = 100 * np.array([r["acc"] for r in rs])
        kept = 100 * np.array([r["run_kept"] for r in rs])
        diff = acc - kept
        q = [
            "—"
            if any(r.get(k) is None for r in rs)
            else f"{100 * np.mean([r[k] for r in rs]):.1f} %"
            for k in ("trained_share", "target_acc")
        ]
        out.append(
            f"| {setting} | {rule} | {len(rs)} | {acc.mean():.1f} ± {acc.std():.1f} | "
            f"{kept.mean():.1f} | {diff.mean():+.1f} ({', '.join(f'{d:+.1f}' for d in diff)}) | "
            f"{q[0]} | {q[1]} |"
        )
    return out


def parse_rule(rule: str) -> dict:
    """``"relabel,unlabelled=1,view=perturb"`` -> StudentPolicy's keyword arguments: the
    rule, then ``key=value`` options (numbers parsed as floats)."""
    name, *opts = rule.split(",")
    out: dict = {"targets": name}
    for opt in opts:
        key, _, value = opt.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


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
        "- Targets: the share of samples the student trains on (weight > 0), and the share of "
        "those (and of the flagged ones among them) whose target's top class is the true label.",
        "",
        "| run | rule | student test acc. % | the run's kept model % (its rule) "
        "| run's F1 | trained on | targets right | flagged targets right | CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f1 = "—" if r["f1"] is None else f"{r['f1']:.3f}"
        q = [r.get(k) for k in ("trained_share", "target_acc", "flagged_target_acc")]
        q = ["—" if v is None else f"{100 * v:.1f} %" for v in q]
        lines.append(
            f"| {r['run']} | {r['rule']} | {100 * r['acc']:.1f} | {100 * r['run_kept']:.1f} "
            f"({r['run_kept_targets']}) | {f1} | {' | '.join(q)} | {r['cpu_s']:.0f} |"
        )
    lines += ["", *summary(rows)]
    write_result(args.out, lines, command, rows)


def write_result(out: Path, lines: list[str], command: str, rows: list[dict]) -> None:
    """``out``.md (the lines) and ``out``.json (the command and rows), and the lines printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
