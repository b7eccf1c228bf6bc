"""Sequential mode: one fold per run, shards in a shared folder, merge, rounds."""

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcloop.cl import verdict
from dcloop.safety import CleaningPolicy, bound_flags
from dcloop.scale.fold_run import fingerprint, round_dir, run_fold
from dcloop.scale.merge import find_round_dir, main, merge_round
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET, "report=false"]


def cfg_for(tmp_path, *overrides):
    return compose_dcloop(
        tmp_path / "job",
        f"sequential.work_dir={tmp_path / 'work'}",
        *("mode=sequential", "model=mlp", "folds=2", "trainer.max_epochs=3"),
        *QUIET,
        *overrides,
    )


class TinyModule(L.LightningModule):
    """A user's own module: no dcloop base class, no per-sample weights."""

    def __init__(self, num_classes: int, in_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_folds_write_shards_and_the_last_one_merges(tmp_path, capsys):
    out0 = train(cfg_for(tmp_path, "fold=0"))  # train() dispatches on mode
    assert out0["merged"] is None and Path(out0["shard"]).is_file()
    out1 = run_fold(cfg_for(tmp_path, "fold=1"))
    merged = out1["merged"]
    assert merged is not None and merged["cleaning"]["mode"] == "sequential"
    d = Path(out1["shard"]).parent
    assert d == round_dir(cfg_for(tmp_path, "fold=1"))
    assert d.parent.name.startswith("seq-") and d.name == "round_0"
    for name in [
        "label_issues.csv",
        "class_report.csv",
        "noise_matrix.csv",
        "oof_probs.npy",
        "folds.npy",
        "metrics.json",
        "labels.csv",
        "sample_table.pt",
        "report.html",  # every run writes one, a merged round too
    ]:
        assert (d / name).is_file(), name
    probs = np.load(d / "oof_probs.npy")
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    # the files are confident learning on the merged shards (recomputed here)
    issues = pd.read_csv(d / "label_issues.csv").sort_values("index")
    labels = torch.as_tensor(issues["given_label"].to_numpy())
    folds = torch.as_tensor(np.load(d / "folds.npy"))
    # cl.calibrate=posterior (the default): the calibrated posterior's flags, one temperature
    # per fold, within the bounds
    direct = CleaningPolicy(calibrate="posterior").verdict(
        labels, torch.from_numpy(probs), folds=folds
    )
    bounded = bound_flags(
        direct.flags, direct.quality, labels, probs.shape[1], max_class_frac=0.5, max_flag_frac=0.5
    )
    np.testing.assert_array_equal(issues["flagged"].to_numpy(), bounded.numpy())
    cl_only = verdict(labels.numpy(), torch.from_numpy(probs)).flags
    assert not torch.equal(cl_only, bounded)  # the test tells the two verdicts apart
    det = merged["detection"]
    assert det["precision"] > 0.5 and det["recall"] > 0.5, det  # random flags: 0.2
    assert merged["test"]["accuracy"] > 0.8
    assert "dcloop: run finished" in capsys.readouterr().out
    # the merge released its lock: rerunning the last fold merges again
    assert not (d / ".merge.lock").exists()
    assert run_fold(cfg_for(tmp_path, "fold=1"))["merged"] is not None
    # the explicit command finds the round from the work folder and rewrites the same files
    main([str(tmp_path / "work")])
    again = pd.read_csv(d / "label_issues.csv").sort_values("index")
    np.testing.assert_array_equal(again["flagged"].to_numpy(), issues["flagged"].to_numpy())

    # the merge ran the loop's step: confidence gate and ramp (prune, 2 steps: 0.5 first)
    step = np.load(d / "step_state.npz")
    weights = issues["weight"].to_numpy()
    np.testing.assert_allclose(step["weights"], weights)
    assert set(np.unique(weights)) <= {0.5, 1.0} and (weights == 0.5).sum() > 0
    assert (weights[~issues["flagged"].to_numpy().astype(bool)] == 1).all()
    assert (step["flag_streak"] == (weights == 0.5)).all()
    # round 1 trains with those weights (the Classifier takes them; none is 0 yet)
    r1 = run_fold(cfg_for(tmp_path, "fold=0", "round=1"))
    info = pd.read_json(Path(r1["shard"]).parent / "fold0.json", typ="series")
    folds = np.load(d / "folds.npy")
    assert info["num_excluded"] == 0
    assert info["num_train"] == int((folds != 0).sum())
    assert info["num_held_out"] == int((folds == 0).sum())


def test_rounds_ramp_to_the_action_and_prune_from_the_step_state(tmp_path):
    """Without the gate and with a one-step ramp, round 1 leaves round 0's flags out."""
    raw = ("cl.ramp_steps=1", "cl.min_confidence=0")
    run_fold(cfg_for(tmp_path, "fold=0", *raw))
    d = Path(run_fold(cfg_for(tmp_path, "fold=1", *raw))["shard"]).parent
    issues = pd.read_csv(d / "label_issues.csv").sort_values("index")
    flagged = issues["flagged"].to_numpy().astype(bool)
    np.testing.assert_array_equal(np.load(d / "step_state.npz")["weights"], ~flagged)
    r1 = run_fold(cfg_for(tmp_path, "fold=0", "round=1", *raw))
    info = pd.read_json(Path(r1["shard"]).parent / "fold0.json", typ="series")
    folds = np.load(d / "folds.npy")
    assert info["num_excluded"] == int((flagged & (folds != 0)).sum()) > 0
    assert info["num_train"] == int(((folds != 0) & ~flagged).sum())


def test_users_own_module_and_merge_errors(tmp_path, capsys):
    own = [
        "+sequential.module._target_=test_scale_sequential.TinyModule",
        "+sequential.module._partial_=true",
        "trainer.max_epochs=2",
    ]
    out = run_fold(cfg_for(tmp_path, "fold=1", *own))
    d = Path(out["shard"]).parent
    assert pd.read_json(d / "fold1.json", typ="series")["module"] == "TinyModule"
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[0\]"):
        merge_round(d)
    with pytest.raises(SystemExit) as exc:
        main([str(d)])
    assert exc.value.code == 2
    assert "dcloop-merge: error: " in (err := capsys.readouterr().err) and "fold(s) [0]" in err
    # another config is another group folder; fold/round do not change the group
    a, b = cfg_for(tmp_path, "fold=0"), cfg_for(tmp_path, "fold=1", "round=2")
    assert fingerprint(a) == fingerprint(b) != fingerprint(cfg_for(tmp_path, "fold=0", "seed=1"))
    assert find_round_dir(d.parent) == d


def test_bad_cl_setting_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="filter_by must be one of"):
        run_fold(cfg_for(tmp_path, "fold=0", "cl.filter_by=typo"))
    assert not list((tmp_path / "work").rglob("oof_fold*.npz"))


def test_label_file_rows_people_confirmed_are_not_flagged_in_sequential_mode(tmp_path):
    out = run_fold(cfg_for(tmp_path, "fold=0"))
    d = Path(out["shard"]).parent
    run_fold(cfg_for(tmp_path, "fold=1"))
    issues = pd.read_csv(d / "label_issues.csv")
    flagged = issues[issues["flagged"]]["index"].to_numpy()[:5]
    assert flagged.size == 5
    given = pd.read_csv(d / "labels.csv")
    rows = given[given["index"].isin(flagged)]
    label_file = tmp_path / "labels_v1.csv"
    pd.DataFrame(
        {"index": rows["index"], "label": rows["given_label"], "status": "confirmed"}
    ).to_csv(label_file, index=False)
    second = tmp_path / "with_labels"  # its own work folder
    run_fold(cfg_for(second, "fold=0", f"data.labels={label_file}"))
    out = run_fold(cfg_for(second, "fold=1", f"data.labels={label_file}"))
    assert out["merged"] is not None
    d2 = Path(out["shard"]).parent
    again = pd.read_csv(d2 / "label_issues.csv").set_index("index")
    assert not again.loc[flagged, "flagged"].any()
    assert again["flagged"].sum() > 0  # the others are still judged


def test_bad_fold_round_and_missing_previous_round_fail_early(tmp_path):
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 2\).*got fold=2"):
        run_fold(cfg_for(tmp_path, "fold=2"))
    with pytest.raises(ValueError, match="needs fold="):
        run_fold(cfg_for(tmp_path))
    with pytest.raises(ValueError, match="mode must be one of"):
        train(cfg_for(tmp_path, "fold=0", "mode=sequentail"))
    with pytest.raises(FileNotFoundError, match="round_0"):
        run_fold(cfg_for(tmp_path, "fold=0", "round=1"))
    with pytest.raises(ValueError, match="weights"):
        run_fold(
            cfg_for(
                tmp_path,
                "fold=0",
                "round=1",
                "cl.action=downweight",
                f"sequential.issues={make_issue_table(tmp_path)}",
                "+sequential.module._target_=test_scale_sequential.TinyModule",
                "+sequential.module._partial_=true",
            )
        )


def make_issue_table(tmp_path):
    from dcloop.data import LabelNoiseDataModule

    dm = LabelNoiseDataModule("digits", noise={"kind": "symmetric", "rate": 0.2}, seed=0)
    dm.setup()
    n = dm.num_train
    path = tmp_path / "issues.csv"
    pd.DataFrame(
        {"index": np.arange(n), "flagged": np.arange(n) % 7 == 0, "quality": np.full(n, 0.3)}
    ).to_csv(path, index=False)
    return path


def test_a_merged_round_near_chance_says_it_is_too_weak_to_judge(tmp_path):
    """A sequential round gets the parallel run's weak-run check on its merged OOF pass."""
    import json

    from dcloop.console import run_summary

    frozen = ("model.optimizer.lr=0", "trainer.max_epochs=1")  # replicas stay at their init
    run_fold(cfg_for(tmp_path, "fold=0", *frozen))
    merged = run_fold(cfg_for(tmp_path, "fold=1", *frozen))["merged"]
    d = find_round_dir(tmp_path / "work")
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["weak_run"] == merged["weak_run"] and "near chance" in merged["weak_run"]["reason"]
    assert "too weak to judge" in run_summary(merged, d, [])
