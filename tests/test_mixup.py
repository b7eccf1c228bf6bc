"""Mixup (``model.mixup`` / ``student.mixup``, :mod:`dcloop.mixup`): the mixing functions, the
Classifier's training step, resume, the checks at config time and a run with a mixing student."""

import json
import os
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dcloop
from dcloop import mixup
from dcloop.errors import PREFIX, UserInputError
from dcloop.models import Classifier, FoldEnsemble
from dcloop.models.factory import module_kwargs
from dcloop.models.losses import gce_loss
from dcloop.models.nets import MLP
from dcloop.models.text import TextBoW, TextCNN
from dcloop.train import student_policy, train

from conftest import RUN_QUIET, compose_dcloop


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- pure functions
def test_targets_and_weights_are_mixed_with_the_inputs_lam_and_partners():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    t = mixup.as_distribution(labels, 3)
    x = t.clone() * 10  # each input encodes its own target
    w = torch.linspace(0.5, 1.0, 8)
    lam, perm = mixup.draw(8, 1.0, weights=w, generator=_gen(3))
    assert sorted(perm.tolist()) == list(range(8)) and perm.tolist() != list(range(8))
    xm, tm, wm = mixup.mix(x, t, w, lam, perm)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(xm, tm * 10)  # the targets follow the inputs exactly
    torch.testing.assert_close(tm, lam * t + (1 - lam) * t[perm])
    torch.testing.assert_close(tm.sum(1), torch.ones(8))
    torch.testing.assert_close(wm, lam * w + (1 - lam) * w[perm])
    torch.testing.assert_close(wm.sum(), w.sum())
    assert not torch.equal(xm, x)


def test_zero_weight_rows_are_never_mixed_into_a_kept_row():
    w = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0, 1.0, 1.0, 0.0, 0.7, 1.0])
    kept = set((w > 0).nonzero().flatten().tolist())
    moved = 0
    for seed in range(50):
        lam, perm = mixup.draw(10, 0.4, weights=w, generator=_gen(seed))
        assert sorted(perm.tolist()) == list(range(10))
        for i, j in enumerate(perm.tolist()):
            assert (j in kept) == (i in kept)  # kept with kept only
            if i not in kept:
                assert j == i  # a dropped row is its own partner
            moved += i != j
        x = torch.eye(10)
        xm, _, wm = mixup.mix(x, x, w, lam, perm)
        dropped = [i for i in range(10) if i not in kept]
        assert wm[dropped].eq(0).all()
        assert xm[sorted(kept)][:, dropped].eq(0).all()  # no dropped input inside a kept row
    assert moved > 0


def test_draws_come_from_the_generator_only():
    a = mixup.draw(16, 0.4, generator=_gen(7))
    torch.manual_seed(123)
    b = mixup.draw(16, 0.4, generator=_gen(7))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    c = mixup.draw(16, 0.4, generator=_gen(8))
    assert a[0] != c[0]


@pytest.mark.parametrize("bad", [-1, "x", float("nan"), True])
def test_a_bad_alpha_is_one_clear_error(bad):
    with pytest.raises(UserInputError, match=r"model\.mixup must be a number >= 0"):
        mixup.check_alpha(bad)
    assert mixup.check_alpha(0) == 0.0 and mixup.check_alpha(0.4) == 0.4


def test_token_ids_mix_at_the_embedding_or_are_refused():
    ids = torch.tensor([3, 4, 0])
    assert mixup.mix_point(MLP((1, 4, 4), 3), torch.zeros(1, 4, 4)) == "input"
    assert mixup.mix_point(TextBoW(10, 3), ids) == "embedding"
    with pytest.raises(UserInputError, match=r"student\.mixup .*token ids cannot be mixed"):
        mixup.mix_point(NoHookText(), ids, "student.mixup")


@pytest.mark.parametrize("net", [TextBoW(50, 3, dropout=0.5), TextCNN(50, 3, dropout=0.5)])
def test_text_nets_forward_is_classify_of_embed(net):
    ids = torch.randint(1, 50, (4, 7))
    net.eval()
    torch.testing.assert_close(net(ids), net.classify(net.embed(ids)))


class NoHookText(nn.Module):
    """Token ids in, logits out, but no embed / classify pair."""

    def __init__(self, vocab_size: int = 10000, num_classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, ids):
        return self.head(self.embedding(ids))


# --------------------------------------------------------------------- the training step
def _batch(n=16, c=3, seed=0):
    g = _gen(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, c, (n,), generator=g)


def _step_loss(model, x, y, epoch=0):
    model._mix_generator = torch.Generator().manual_seed(epoch)
    with torch.no_grad():
        return float(model.training_step((x, y, torch.arange(len(y))), 0))


def test_alpha_zero_is_the_plain_step_and_alpha_changes_it():
    x, y = _batch()
    plain = Classifier(partial(MLP, (1, 4, 4), 3), 3, seed=0)
    off = Classifier(partial(MLP, (1, 4, 4), 3), 3, seed=0, mixup=0.0)
    on = Classifier(partial(MLP, (1, 4, 4), 3), 3, seed=0, mixup=1.0)
    assert _step_loss(off, x, y) == _step_loss(plain, x, y)
    assert _step_loss(on, x, y) != pytest.approx(_step_loss(plain, x, y), abs=1e-4)


def test_the_step_mixes_targets_and_weights_as_the_inputs():
    x, y = _batch(12)
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    model = Classifier(partial(MLP, (1, 4, 4), 3), 3, seed=0, weights=w, mixup=0.4)
    model._mix_generator = _gen(5)
    got = _step_loss(model, x, y, epoch=5)
    lam, perm = mixup.draw(12, 0.4, weights=w, generator=_gen(5))
    t = mixup.as_distribution(y, 3)
    xm, tm, wm = mixup.mix(x, t, w, lam, perm)
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model(xm), tm, reduction="none")
    assert got == pytest.approx(float((wm * ce).sum() / wm.sum()), rel=1e-6)


def test_mixup_at_the_embedding_for_token_ids():
    ids = torch.randint(1, 50, (8, 6), generator=_gen(1))
    y = torch.arange(8) % 3
    net = partial(TextBoW, 50, 3)
    plain, on = Classifier(net, 3, seed=0), Classifier(net, 3, seed=0, mixup=1.0)
    a = _step_loss(plain, ids, y)
    b = _step_loss(on, ids, y)
    assert b == b and b != pytest.approx(a, abs=1e-5)


def test_a_loss_that_cannot_take_soft_targets_is_refused_at_construction():
    def ids_only(logits, targets, reduction="none"):
        return nn.functional.nll_loss(logits.log_softmax(-1), targets, reduction=reduction)

    Classifier(partial(MLP, (1, 4, 4), 3), 3, loss=ids_only)  # no mixup: fine
    with pytest.raises(UserInputError, match=r"model\.mixup trains on mixed \(soft\) targets"):
        Classifier(partial(MLP, (1, 4, 4), 3), 3, loss=ids_only, mixup=0.4)
    Classifier(partial(MLP, (1, 4, 4), 3), 3, loss=gce_loss, mixup=0.4)  # gce takes them


def _fit(tmp_path, epochs, resume=None):
    x, y = _batch(64, seed=2)
    data = DataLoader(TensorDataset(x, y, torch.arange(64)), batch_size=16)
    # (no schedule: a cosine's length would follow max_epochs)
    model = Classifier(partial(MLP, (1, 4, 4), 3), 3, seed=0, mixup=0.4, scheduler="none")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(model, data, ckpt_path=resume)
    return model


def test_resume_draws_the_same_mixes(tmp_path):
    whole = _fit(tmp_path / "whole", 3)
    _fit(tmp_path / "cut", 2)
    resumed = _fit(tmp_path / "cut", 3, resume=tmp_path / "cut" / "last.ckpt")
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------- config
def test_model_mixup_reaches_the_single_network_only():
    model = OmegaConf.create({"loss": {"label_smoothing": 0.1}, "mixup": 0.4})
    assert module_kwargs(model, Classifier)["mixup"] == 0.4
    assert "mixup" not in module_kwargs(model, FoldEnsemble)


def test_student_mixup_defaults_to_model_mixup_and_is_checked(tmp_path):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET)
    assert student_policy(cfg).mixup == 0.0
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "student.mixup=0.4")
    assert student_policy(cfg).mixup == 0.4
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "mode=sequential", "model.mixup=0.2")
    assert student_policy(cfg).mixup == 0.2
    cfg = compose_dcloop(
        tmp_path, *RUN_QUIET, "mode=sequential", "model.mixup=0.2", "student.mixup=0"
    )
    assert student_policy(cfg).mixup == 0.0
    for bad in ("-1", "x"):
        cfg = compose_dcloop(tmp_path, *RUN_QUIET, f"student.mixup={bad}")
        with pytest.raises(UserInputError, match=rf"student\.mixup=.?{bad}"):
            student_policy(cfg)


def test_the_fold_replicas_refuse_model_mixup(tmp_path):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "model.mixup=0.4")
    with pytest.raises(UserInputError, match=r"model\.mixup=0\.4.*set student\.mixup=0\.4"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_token_ids_without_a_hook_fail_before_training(tmp_path):
    cfg = compose_dcloop(
        tmp_path,
        *RUN_QUIET,
        "data=text_synth",
        "model=text_bow",
        "model.net._target_=test_mixup.NoHookText",
        "~model.net.dim",
        "~model.net.hidden",
        "~model.net.dropout",
        "student.mixup=0.4",
    )
    with pytest.raises(UserInputError, match=r"student\.mixup mixes inputs.*NoHookText"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_a_bad_alpha_on_the_command_line_is_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "dcloop", "model.mixup=x", *RUN_QUIET, f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert lines[-1].startswith(PREFIX) and "model.mixup" in lines[-1] and "'x'" in lines[-1]


@pytest.mark.slow
def test_a_run_with_a_mixing_student_saves_its_model(tmp_path):
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "trainer.max_epochs=2", "student.mixup=0.4")
    metrics = train(cfg)
    kept = json.loads((tmp_path / "metrics.json").read_text())["kept"]
    assert kept["model"] == "student" == metrics["kept"]["model"]
    assert kept["policy"]["mixup"] == 0.4
    model = dcloop.load_model(tmp_path)
    assert model.test_accuracy == pytest.approx(kept["test_accuracy"])
    assert kept["test_accuracy"] > 0.3  # digits: it learned through the mixing
