import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dcloop
from dcloop.cl import verdict
from dcloop.console import summarize
from dcloop.safety import CleaningPolicy, bound_flags
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET]


def cfg_for(tmp_path, *overrides):
    return compose_dcloop(tmp_path, *QUIET, *overrides)


@pytest.mark.slow
def test_digits_end_to_end_finds_injected_noise(tmp_path, capsys):
    # 20 % symmetric noise, 12 epochs (the CLI default is 30). Flagging at random would
    # give precision 0.20 (the noise rate); at 12 epochs the 5-fold CNN measured 0.88
    # precision / 0.97 recall (0.96 / 0.96 at 30 epochs), so 0.85 / 0.90 leaves room for
    # run-to-run variation while still failing for a broken OOF buffer or mask.
    cfg = cfg_for(tmp_path, "trainer.max_epochs=12", "cl.warmup_epochs=4", "noise.rate=0.2")
    metrics = train(cfg)
    det = metrics["detection"]
    assert det["precision"] >= 0.85 and det["recall"] >= 0.9, det
    assert det["auroc"] >= 0.97
    assert metrics["test"]["accuracy"] >= 0.95
    assert abs(metrics["noise"]["rate"] - 0.2) < 0.05
    for name in [
        "label_issues.csv",
        "class_report.csv",
        "noise_matrix.csv",
        "oof_probs.npy",
        "folds.npy",
        "metrics.json",
        "labels.csv",
    ]:
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"precision", "recall", "f1"} <= set(saved["detection"])
    assert "accuracy" in saved["test"] and "rate" in saved["noise"]
    issues = pd.read_csv(tmp_path / "label_issues.csv")
    assert {
        "index",
        "given_label",
        "suggested_label",
        "quality",
        "flagged",
        "source",
        "first_flagged_epoch",
        "last_flagged_epoch",
    } <= set(issues.columns)
    assert issues["source"].str.startswith("digits:").all()
    report = pd.read_csv(tmp_path / "class_report.csv")
    assert len(report) == 10 and report["flagged"].sum() == issues["flagged"].sum()
    assert report.loc[0, "noise_rate_true"] == pytest.approx(0.2, abs=0.02)
    # the files agree with a direct confident-learning call on the saved (smoothed) evidence,
    # bounded as the loop bounds it
    probs = torch.from_numpy(np.load(tmp_path / "oof_probs_smoothed.npy"))
    labels = torch.from_numpy(issues.sort_values("index")["given_label"].to_numpy())
    folds = torch.load(tmp_path / "sample_table.pt", weights_only=True)["folds"]
    direct = CleaningPolicy(calibrate="posterior").verdict(labels, probs, folds=folds)
    assert not torch.equal(direct.flags, verdict(labels, probs).flags)  # cl.calibrate counts
    bounded = bound_flags(
        direct.flags, direct.quality, labels, 10, max_class_frac=0.5, max_flag_frac=0.5
    )
    assert bounded.sum() == issues["flagged"].sum()
    out = summarize(tmp_path, metrics)  # what the CLI prints (train() itself prints nothing)
    assert capsys.readouterr().out == ""
    assert "likely label errors" in out and "test        accuracy" in out


def test_bad_folds_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=">= 2"):
        train(cfg_for(tmp_path, "folds=1"))
    with pytest.raises(ValueError, match="samples of every class"):
        train(cfg_for(tmp_path, "folds=500"))
    assert not (tmp_path / "oof_probs.npy").exists()


def test_missing_data_path_names_it(tmp_path):
    missing = tmp_path / "no_such_images"
    with pytest.raises(FileNotFoundError, match="no_such_images"):
        train(cfg_for(tmp_path, "data=folder", f"data.source.root={missing}"))


def test_nan_probabilities_are_rejected():
    probs = torch.full((6, 2), 0.5)
    probs[3, 0] = float("nan")
    with pytest.raises(ValueError, match="(?i)nan"):
        verdict(torch.tensor([0, 1, 0, 1, 0, 1]), probs)


@pytest.mark.slow
def test_console_script_runs_from_any_directory(tmp_path):
    exe = Path(sys.executable).parent / "dcloop"
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [
            str(exe),
            "model=mlp",
            "trainer.max_epochs=2",
            "cl.warmup_epochs=1",
            "refit=true",
            *QUIET,
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dcloop: run finished" in res.stdout and "refit       accuracy" in res.stdout
    assert (out / "metrics.json").exists()
    mod = subprocess.run(
        [sys.executable, "-m", "dcloop", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert mod.returncode == 0 and "noise" in mod.stdout


@pytest.mark.slow
def test_installed_wheel_finds_its_configs(tmp_path):
    root = Path(dcloop.__file__).parent.parent
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(root),
        "-w",
        str(wheels),
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("dcloop-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import dcloop, sys; print(dcloop.__file__); sys.argv=['dcloop','--cfg','job']; "
        "from dcloop.cli import main; main()"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert str(target) in res.stdout.splitlines()[0]
    assert "warmup_epochs" in res.stdout and "SmallCNN" in res.stdout


@pytest.mark.slow
def test_the_kept_student_is_trained_after_shorter_replicas(tmp_path, capsys):
    """kept=student (the default): the K replicas run replica_epochs of the schedule, then one
    network trains for trainer.max_epochs on the cleaned data; metrics.json names it."""
    from dcloop.train import replica_epochs

    cfg = cfg_for(tmp_path, "trainer.max_epochs=4", "replica_epochs=0.5", "cl.warmup_epochs=2")
    assert replica_epochs(cfg) == 2
    metrics = train(cfg)
    kept = metrics["kept"]
    assert kept["model"] == "student" and kept["targets"] == "relabel"
    assert (
        metrics["test"]["accuracy"] == kept["test_accuracy"] == metrics["test"]["student_accuracy"]
    )
    assert 0.5 < metrics["test"]["ensemble_accuracy"] <= 1.0
    assert metrics["timing"]["student"] > 0
    cost = metrics["cost"]  # the student is one plain run: the yardstick of the whole run
    assert cost["cpu_s"] > cost["plain_cpu_s"] > 0 and cost["cpu_ratio"] > 1
    assert (tmp_path / "model" / "model.json").is_file() and metrics["kept"]["path"] == "model"
    assert [e["epoch"] for e in metrics["safety"]["epochs"]] == [1, 2]  # the replicas' epochs
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["kept"]["model"] == "student"
    # Injected noise: the truth is known, so the run says how right the student's targets were.
    assert 0.5 < kept["targets_right"] <= 1 and 0.5 < kept["trained_share"] <= 1
    text = summarize(tmp_path, saved)
    assert "the kept model: student" in text and "ensemble: mean softmax" in text
    assert "its targets, against the true labels:" in text
    assert "x the CPU seconds of one plain training run" in text


@pytest.mark.slow
def test_a_student_from_replica_zero_trains_its_share_of_the_epochs(tmp_path, monkeypatch):
    """student.init=replica starts the student from fold replica 0's final weights (not a
    fresh network) and student.epochs=0.5 trains it for half the schedule; the run's cost
    is still measured against one full plain run (the student's seconds x 2)."""
    import dcloop.train as tr

    seen = {}
    real_fit = tr.L.Trainer.fit

    def fit(trainer, model, *args, **kwargs):
        if isinstance(model, tr.Classifier):  # the student, before it trains
            seen["start"] = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
            seen["max_epochs"] = trainer.max_epochs
        return real_fit(trainer, model, *args, **kwargs)

    captured = {}
    real_nets = tr.replica_nets

    def nets(model, factory, **kwargs):
        out = real_nets(model, factory, **kwargs)
        if kwargs.get("only") == 0:
            captured["replica0"] = {k: v.clone() for k, v in out[0].state_dict().items()}
        return out

    monkeypatch.setattr(tr.L.Trainer, "fit", fit)
    monkeypatch.setattr(tr, "replica_nets", nets)
    cfg = cfg_for(
        tmp_path,
        "trainer.max_epochs=4",
        "student.init=replica",
        "student.epochs=0.5",
        "model.replica_net.width=null",  # replicas the student's size (cnn's: half)
    )
    metrics = tr.train(cfg)
    assert seen["max_epochs"] == 2
    assert captured["replica0"].keys() == seen["start"].keys()
    for name, value in captured["replica0"].items():
        assert torch.equal(value, seen["start"][name]), name
    assert metrics["kept"]["policy"]["init"] == "replica"
    assert metrics["kept"]["policy"]["epochs"] == 0.5
    cost = metrics["cost"]  # plain = the student's 2 epochs scaled to 4
    assert cost["plain_cpu_s"] > 0 and cost["cpu_ratio"] == pytest.approx(
        cost["cpu_s"] / cost["plain_cpu_s"], rel=1e-2
    )


@pytest.mark.slow
def test_a_student_with_unlabelled_rows_trains_them_on_co_guesses(tmp_path, monkeypatch):
    """student.unlabelled=1: the flagged rows relabel leaves out reach the student as the
    unlabelled set of its CoGuess term, with the replicas' evidence; the run ends as usual."""
    import dcloop.train as tr

    seen = {}
    real_fit = tr.L.Trainer.fit

    def fit(trainer, model, *args, **kwargs):
        if isinstance(model, tr.Classifier):
            seen["coguess"] = model.coguess
            seen["weights"] = model.weights.clone()
        return real_fit(trainer, model, *args, **kwargs)

    monkeypatch.setattr(tr.L.Trainer, "fit", fit)
    cfg = cfg_for(
        tmp_path,
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "noise.rate=0.4",
        "student.unlabelled=1",
        "student.min_confidence=0.9",
    )
    metrics = tr.train(cfg)
    cg = seen["coguess"]
    assert cg is not None and cg.unlabelled.sum() > 0
    assert (seen["weights"][cg.unlabelled] == 0).all()
    assert torch.allclose(cg.evidence.sum(1), torch.ones(len(cg.evidence)), atol=1e-4)
    assert metrics["kept"]["policy"]["unlabelled"] == 1.0
    assert 0 < metrics["kept"]["test_accuracy"] <= 1


def test_replica_epochs_and_student_options_are_checked(tmp_path):
    from dcloop.errors import UserInputError
    from dcloop.train import replica_epochs, student_policy

    assert replica_epochs(cfg_for(tmp_path, "trainer.max_epochs=10", "replica_epochs=0.3")) == 3
    assert replica_epochs(cfg_for(tmp_path, "trainer.max_epochs=10", "kept=ensemble")) == 10
    with pytest.raises(ValueError, match="replica_epochs"):
        replica_epochs(cfg_for(tmp_path, "replica_epochs=1.5"))
    with pytest.raises(UserInputError, match="student.targets"):
        student_policy(cfg_for(tmp_path, "student.targets=magic"))
    with pytest.raises(UserInputError, match="unknown student option"):
        student_policy(cfg_for(tmp_path, "+student.temperature=2"))
    with pytest.raises(UserInputError, match="student.init"):
        student_policy(cfg_for(tmp_path, "student.init=teacher"))
    with pytest.raises(UserInputError, match="student.view"):
        student_policy(cfg_for(tmp_path, "student.unlabelled=1", "student.view=strong"))
    with pytest.raises(UserInputError, match="student.mixup"):
        student_policy(cfg_for(tmp_path, "student.unlabelled=1", "student.mixup=0.4"))
    for bad in ("0", "1.5"):
        with pytest.raises(UserInputError, match="student.epochs"):
            student_policy(cfg_for(tmp_path, f"student.epochs={bad}"))
    from dcloop.train import student_epochs

    cfg = cfg_for(tmp_path, "trainer.max_epochs=10", "student.epochs=0.25")
    assert student_epochs(cfg, student_policy(cfg)) == 3
    cfg = cfg_for(tmp_path, "trainer.max_epochs=10", "student.epochs=0.01")
    assert student_epochs(cfg, student_policy(cfg)) == 1


def test_a_forward_student_says_it_replaces_the_models_loss(tmp_path, caplog):
    """student.targets=forward trains on forward_nll; a model.loss / label smoothing the user
    set is not used by the student, and the log says so."""
    import logging

    from dcloop.models.losses import forward_nll
    from dcloop.train import build_student, student_policy

    cfg = cfg_for(tmp_path, "student.targets=forward", "model.loss.label_smoothing=0.1")
    n, c = 12, 10
    labels = torch.arange(n) % c
    evidence = torch.full((n, c), 1.0 / c)
    with caplog.at_level(logging.WARNING, logger="dcloop.train"):
        model = build_student(
            cfg,
            lambda: torch.nn.Linear(4, c),
            c,
            student_policy(cfg),
            labels=labels,
            evidence=evidence,
            flags=torch.zeros(n, dtype=torch.bool),
            weights=torch.ones(n),
            folds=torch.arange(n) % 3,
        )
    assert model.hparams.label_smoothing == 0.0
    assert "forward-corrected loss" in caplog.text
    # the student's loss is forward_nll: -log <target row, softmax>
    logits, rows = torch.randn(3, c), torch.full((3, c), 1.0 / c)
    assert torch.allclose(model._loss_fn(logits, rows), forward_nll(logits, rows))


def test_in_fold_probs_average_only_the_replicas_that_trained_on_each_sample(monkeypatch):
    """Replica k predicts class k everywhere: a sample of fold f then gets 0 for class f and
    1 / (K - 1) for every other replica's class."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    import dcloop.train as tr

    k, n = 3, 7
    folds = torch.tensor([0, 1, 2, 0, 1, 2, 0])

    class Const(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), self.c), k).float() * 50

    model = torch.nn.Linear(1, 1)
    model.samples = SimpleNamespace(folds=folds)
    loader = DataLoader(TensorDataset(torch.zeros(n, 1), torch.zeros(n), torch.arange(n)), 3)
    dm = SimpleNamespace(num_classes=k, oof_dataloader=lambda: loader)
    monkeypatch.setattr(tr, "replica_nets", lambda m, f: [Const(c) for c in range(k)])
    monkeypatch.setattr(tr, "_net", lambda cfg, dm, replica=False: None)
    out = tr.in_fold_probs(None, SimpleNamespace(model=model, dm=dm, trainer=None))
    for i in range(n):
        want = torch.full((k,), 0.5)
        want[folds[i]] = 0.0
        assert torch.allclose(out[i], want, atol=1e-4), (i, out[i])


@pytest.mark.slow
def test_student_targets_auto_names_the_rule_it_chose(tmp_path):
    """student.targets=auto: the student's rule is chosen on the replicas' fit of the flagged
    labels; metrics.json's kept block names the rule and the fit."""
    from dcloop.student import AUTO_FIT_THRESHOLD

    cfg = cfg_for(
        tmp_path,
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "noise.rate=0.3",
        "student.targets=auto",
    )
    metrics = train(cfg)
    kept = metrics["kept"]
    auto = kept["auto"]
    assert kept["targets"] == auto["rule"] in ("relabel", "forward")
    assert auto["threshold"] == AUTO_FIT_THRESHOLD and 0.0 <= auto["flagged_fit"] <= 1.0
    assert auto["rule"] == ("relabel" if auto["flagged_fit"] >= AUTO_FIT_THRESHOLD else "forward")
    assert kept["policy"]["targets"] == "auto"
    probs = np.load(tmp_path / "in_fold_probs.npy")  # what the fit was read from
    assert probs.shape == np.load(tmp_path / "oof_probs.npy").shape
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    from dcloop.console import test_line

    line = test_line(metrics)
    assert "chosen by student.targets=auto" in line and "the replicas fit" in line


@pytest.mark.slow
def test_student_evidence_auto_skips_the_replicas_pass_for_a_rule_that_reads_none(tmp_path):
    """student.targets=drop reads no evidence: evidence=auto (the default) is oof without the
    in-fold pass that decides it, and metrics keep the policy as configured."""
    cfg = cfg_for(
        tmp_path,
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "noise.rate=0.3",
        "student.targets=drop",
    )
    kept = train(cfg)["kept"]
    assert kept["targets"] == "drop" and kept["evidence"] == "oof" and "auto" not in kept
    assert kept["policy"]["evidence"] == "auto"
    assert not (tmp_path / "in_fold_probs.npy").exists()


@pytest.mark.slow
def test_student_evidence_knn_without_an_embedding_relabels_from_oof(tmp_path, caplog):
    """A net with no embedding (no features hook, no nn.Linear head): student.evidence=knn
    cannot vote, so the student relabels from the held-out softmax, and metrics and the log
    say so."""
    cfg = cfg_for(
        tmp_path,
        "model=mlp",
        "~model.net.hidden",
        "~model.net.dropout",
        "model.net._target_=weaknets.NoLinearNet",
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "noise.rate=0.3",
        "student.evidence=knn",
    )
    with caplog.at_level(logging.WARNING, logger="dcloop"):
        metrics = train(cfg)
    assert metrics["kept"]["evidence"] == "oof"  # as used
    assert metrics["kept"]["policy"]["evidence"] == "knn"  # as configured
    assert "student.evidence=knn: no embedding" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("health", ["true", "false"])
def test_student_evidence_knn_and_auto_name_what_relabelled(tmp_path, health):
    """student.evidence: the flagged samples relabelled from their neighbours' labels in the
    replicas' mean embedding (data health's, or one pass of its own without it); auto picks
    knn where the replicas do not fit the flagged labels."""
    from dcloop.console import test_line
    from dcloop.student import AUTO_FIT_THRESHOLD

    evidence = "auto" if health == "true" else "knn"
    cfg = cfg_for(
        tmp_path,
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "noise.rate=0.3",
        f"student.evidence={evidence}",
        f"health={health}",
    )
    metrics = train(cfg)
    kept = metrics["kept"]
    if evidence == "auto":
        fit = kept["auto"]["flagged_fit"]
        assert kept["evidence"] == kept["auto"]["evidence"]
        assert kept["evidence"] == ("oof" if fit is None or fit >= AUTO_FIT_THRESHOLD else "knn")
        assert kept["policy"]["evidence"] == "auto" and "student.evidence=auto" in test_line(
            metrics
        )
    else:
        assert kept["evidence"] == "knn" and "auto" not in kept
        assert "their nearest neighbours' labels" in test_line(metrics)
        assert metrics["timing"]["student_evidence"] > 0  # its own pass over the training set
