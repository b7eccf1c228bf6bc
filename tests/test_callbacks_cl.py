from functools import partial

import cleanlab
import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.callbacks import ConfidentLearning, EpochCheckpoint, OOFCollector
from dcloop.models import MLP, FoldEnsemble

from conftest import BlobsDataModule, fast_trainer


def model_for(dm, **kw):
    return FoldEnsemble(
        partial(MLP, (8,), 3, hidden=(32,)),
        dm.labels,
        num_folds=4,
        true_labels=dm.true,
        lr=1e-2,
        **kw,
    )


#: The engine alone: fixed start, last-epoch evidence, no bounds, the action at once.
RAW = dict(
    ready="fixed",
    smoothing=0.0,
    max_class_frac=1.0,
    max_flag_frac=1.0,
    min_confidence=0.0,
    ramp_steps=1,
    guard=False,
)


def fit(tmp_path, dm, epochs=4, **cl_kw):
    model = model_for(dm)
    oof = OOFCollector()
    clcb = ConfidentLearning(warmup_epochs=2, output_dir=tmp_path, **cl_kw)
    fast_trainer(tmp_path, [oof, clcb], max_epochs=epochs).fit(model, datamodule=dm)
    return model, oof, clcb


@pytest.mark.parametrize("backend", ["torch", "cleanlab"])
def test_callback_equals_direct_cleanlab_call(tmp_path, blobs, backend):
    model, oof, clcb = fit(tmp_path, blobs, backend=backend, **RAW)
    probs = oof.probs.numpy()
    ref = cleanlab.filter.find_label_issues(blobs.labels, probs)
    np.testing.assert_array_equal(model.samples.flagged.numpy(), ref)
    assert ref.sum() > 10  # the blobs carry ~15% flipped labels
    assert [h["epoch"] for h in clcb.history] == [2, 3, 4]  # warm-up 2, epochs 1-based
    assert {"precision", "recall", "f1", "auroc", "num_flagged"} <= set(clcb.history[-1])
    table = pd.read_csv(tmp_path / "label_issues.csv")
    assert len(table) == blobs.n and table["flagged"].sum() == ref.sum()
    assert table["flagged"].iloc[: ref.sum()].all()  # flagged first, worst first
    assert table.loc[table.flagged, "quality"].is_monotonic_increasing


@pytest.mark.parametrize("action", ["prune", "downweight", "detect"])
def test_actions_set_weights(tmp_path, blobs, action):
    model, _, _ = fit(tmp_path, blobs, action=action, downweight_floor=0.2, **RAW)
    s = model.samples
    assert (s.weights[~s.flagged] == 1).all()
    flagged_w = s.weights[s.flagged]
    if action == "prune":
        assert (flagged_w == 0).all()
    elif action == "detect":
        assert (flagged_w == 1).all()
    else:
        expected = s.quality[s.flagged].clamp_min(0.2)
        torch.testing.assert_close(flagged_w, expected)
        assert (flagged_w < 1).all()


def test_default_prune_ramps_and_judges_on_smoothed_evidence(tmp_path, blobs):
    model, oof, clcb = fit(tmp_path, blobs, epochs=6)
    s = model.samples
    assert set(s.weights.unique().tolist()) <= {0.0, 0.5, 1.0}  # ramp of 2 steps
    assert (s.weights[s.flag_streak >= 2] == 0).all() and (
        s.weights[s.flag_streak == 1] == 0.5
    ).all()
    assert (s.weights[~s.flagged] == 1).all()
    assert not torch.equal(clcb.evidence, oof.probs)  # an EMA over epochs, not the last one
    assert [r["epoch"] for r in clcb.epochs] == [1, 2, 3, 4, 5, 6]
    assert all("state" in r and "oof_acc" in r for r in clcb.epochs)


def test_pruned_sample_comes_back_when_cleared(tmp_path, blobs):
    """A sample pruned by one step and not flagged by the next trains again (weight 1)."""
    model = model_for(blobs)
    clcb = ConfidentLearning(warmup_epochs=2, **RAW)
    real, weights_before = clcb.run, []

    def scripted(labels, probs, confirmed=None, folds=None):  # step 1 flags sample 0 only
        result = real(labels, probs, confirmed=confirmed, folds=folds)
        result.flags = torch.zeros_like(result.flags)
        result.flags[0] = not weights_before
        weights_before.append(model.samples.weights.clone())
        return result

    clcb.run = scripted
    fast_trainer(tmp_path, [clcb], max_epochs=4).fit(model, datamodule=blobs)
    assert len(weights_before) == 3  # steps at epochs 2, 3, 4
    assert weights_before[1][0] == 0.0  # pruned after the first step
    assert model.samples.weights[0] == 1.0 and not model.samples.flagged[0]  # back


def test_unknown_safety_option_is_named():
    with pytest.raises(ValueError, match=r"unknown confident-learning option\(s\) \['smoothin'\]"):
        ConfidentLearning(smoothin=0.5)


def _run_in_order(tmp_path, dm, order: str):
    """A 4-epoch run whose callback list is ``order``: o = a listed OOFCollector, c = CL."""
    torch.manual_seed(0)
    model = model_for(dm)
    clcb = ConfidentLearning(warmup_epochs=2, **RAW)
    made = {"o": OOFCollector(), "c": clcb}
    fast_trainer(tmp_path / order, [made[k] for k in order], max_epochs=4).fit(model, datamodule=dm)
    return model, clcb


@pytest.mark.parametrize("order", ["co", "c"])
def test_callback_order_does_not_matter(tmp_path, blobs, order):
    """After or before a listed collector, or with its own: the same verdicts and weights."""
    ref_model, ref = _run_in_order(tmp_path, blobs, "oc")
    model, clcb = _run_in_order(tmp_path, blobs, order)
    assert [h["epoch"] for h in clcb.history] == [h["epoch"] for h in ref.history] == [2, 3, 4]
    assert [h["num_flagged"] for h in clcb.history] == [h["num_flagged"] for h in ref.history]
    torch.testing.assert_close(clcb.collector.probs, ref.collector.probs)
    torch.testing.assert_close(model.samples.weights, ref_model.samples.weights)
    assert clcb.owns_oof == (order == "c")


def test_own_collector_skips_passes_nobody_reads(tmp_path, blobs):
    """ready=fixed and no smoothing: the pass runs only on the epochs a step is due."""
    model = model_for(blobs)
    clcb = ConfidentLearning(warmup_epochs=3, every_n_epochs=2, **RAW)
    passes = []
    real = clcb.oof.collect
    clcb.oof.collect = lambda trainer, pl: (
        passes.append(trainer.current_epoch + 1),
        real(trainer, pl),
    )
    fast_trainer(tmp_path, [clcb], max_epochs=6).fit(model, datamodule=blobs)
    assert passes == [3, 5, 6]  # due at 3 and 5; 6 is the last epoch (the run's OOF matrix)
    assert [h["epoch"] for h in clcb.history] == [3, 5]
    smoothing = ConfidentLearning(warmup_epochs=3, **{**RAW, "smoothing": 0.5})
    assert smoothing.policy.smoothing > 0  # the EMA reads every epoch, so every pass runs


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"action must be one of"):
        ConfidentLearning(action="drop")
    with pytest.raises(ValueError, match="warmup_epochs"):
        ConfidentLearning(warmup_epochs=0)
    with pytest.raises(ValueError, match="filter_by"):
        ConfidentLearning(filter_by="nope")


class StopAfter(L.Callback):
    """Ends fit after ``epochs`` epochs (the checkpoint of the last one is written)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def run_with_checkpoints(tmp_path, max_epochs, ckpt_path=None, stop_after=None):
    L.seed_everything(0)
    dm = BlobsDataModule()
    model = model_for(dm)
    oof, clcb = OOFCollector(), ConfidentLearning(warmup_epochs=2)
    ckpt = EpochCheckpoint(tmp_path / "ckpt")
    stop = [StopAfter(stop_after)] if stop_after else []
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        callbacks=[oof, clcb, ckpt, *stop],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, oof, clcb


def test_resume_gives_the_same_flags(tmp_path):
    full, full_oof, full_cl = run_with_checkpoints(tmp_path / "a", 6)
    run_with_checkpoints(tmp_path / "b", 6, stop_after=3)  # stopped after epoch 3 of 6
    resumed, res_oof, res_cl = run_with_checkpoints(
        tmp_path / "c", 6, tmp_path / "b" / "ckpt" / "last.ckpt"
    )
    torch.testing.assert_close(res_oof.probs, full_oof.probs)
    assert torch.equal(resumed.samples.flagged, full.samples.flagged)
    assert torch.equal(resumed.samples.first_flagged, full.samples.first_flagged)
    assert torch.equal(resumed.samples.weights, full.samples.weights)
    assert [h["epoch"] for h in res_cl.history] == [h["epoch"] for h in full_cl.history]
    assert res_cl.epochs == full_cl.epochs  # readiness and guard state carried over
    torch.testing.assert_close(res_cl.evidence, full_cl.evidence)
