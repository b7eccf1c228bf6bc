"""The student's left-out samples as unlabelled data (student.unlabelled, dcloop.models.coguess)."""

import pytest
import torch
from torch import nn

from dcloop.models import Classifier
from dcloop.models.coguess import CoGuess, perturb, sharpen
from dcloop.student import StudentPolicy, student_targets, unlabelled_rows


def test_sharpen_raises_the_top_class_and_keeps_rows_distributions():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    q = sharpen(p, 0.5)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert (q.argmax(1) == p.argmax(1)).all() and (q.max(1).values > p.max(1).values).all()
    assert torch.allclose(sharpen(p, 1.0), p)


def test_perturb_keeps_shape_changes_floats_and_drops_only_real_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 800)
    y = perturb(x, g)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(
        perturb(x, torch.Generator().manual_seed(1)), perturb(x, torch.Generator().manual_seed(1))
    )
    ids = torch.randint(1, 50, (8, 64))
    ids[:, 40:] = 0  # padding
    out = perturb(ids, g)
    assert out.dtype == ids.dtype and (out[:, 40:] == 0).all()
    dropped = (out != ids).float().mean().item()
    assert 0.02 < dropped < 0.2  # about 10 % of the 40 real tokens per row


def test_unlabelled_rows_are_the_flagged_rows_the_rule_leaves_out():
    labels = torch.tensor([0, 1, 1, 0])
    ev = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.95, 0.05], [0.6, 0.4]])
    flags = torch.tensor([False, True, True, False])
    ev = torch.cat([ev, torch.zeros(4, 1)], 1)
    _, w = student_targets(labels, ev, flags, StudentPolicy("relabel", min_confidence=0.7))
    assert unlabelled_rows(flags, w).tolist() == [False, True, False, False]


def _batch():
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    return x, torch.tensor([0, 1, 2, 3, 4, 5])


def test_coguess_loss_pulls_towards_the_sharpened_co_guess_and_ramps_in():
    x, index = _batch()
    net = nn.Linear(3, 2)
    ev = torch.tensor([[0.9, 0.1]] * 6)
    rows = torch.tensor([True, True, True, False, False, False])
    cg = CoGuess(ev, rows, weight=2.0, temperature=0.5)
    logits = net(x)
    assert cg.loss(net, x, logits, index, progress=0.0).item() == 0.0  # the ramp starts at 0
    full = cg.loss(net, x, logits, index, progress=0.5)
    half = cg.loss(net, x, logits, index, progress=0.25)
    assert full.item() > 0 and half.item() == pytest.approx(full.item() / 2, rel=1e-5)
    # by hand: the guess averages the evidence and the detached own softmax, then sharpens
    own = logits[:3].detach().softmax(-1)
    guess = sharpen((ev[:3] + own) / 2, 0.5)
    want = 2.0 * -(guess * logits[:3].log_softmax(-1)).sum(-1).mean()
    assert full.item() == pytest.approx(want.item(), rel=1e-5)
    full.backward()  # gradient flows through the student's logits only
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    none = CoGuess(ev, torch.zeros(6, dtype=torch.bool))
    assert none.loss(net, x, net(x), index, progress=1.0).item() == 0.0


def test_coguess_perturbed_view_runs_an_extra_forward_of_the_unlabelled_rows():
    x, index = _batch()
    seen = []

    class Spy(nn.Linear):
        def forward(self, inp):
            seen.append(inp.shape[0])
            return super().forward(inp)

    net = Spy(3, 2)
    rows = torch.tensor([True, False, True, False, False, False])
    cg = CoGuess(torch.full((6, 2), 0.5), rows, view="perturb")
    loss = cg.loss(net, x, net(x), index, progress=1.0, generator=torch.Generator())
    assert seen == [6, 2] and loss.item() > 0


def test_coguess_refuses_bad_options_and_shapes():
    ev = torch.full((4, 2), 0.5)
    rows = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="student.unlabelled"):
        CoGuess(ev, rows, weight=0.0)
    with pytest.raises(ValueError, match="student.sharpen"):
        CoGuess(ev, rows, temperature=1.5)
    with pytest.raises(ValueError, match="student.view"):
        CoGuess(ev, rows, view="strong")
    with pytest.raises(ValueError, match=r"\(N,\)"):
        CoGuess(ev, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="student.mixup"):
        StudentPolicy("relabel", unlabelled=1.0, mixup=0.4)
    with pytest.raises(ValueError, match="student.view"):
        StudentPolicy("relabel", unlabelled=1.0, view="strong")


def test_a_classifier_with_coguess_trains_the_left_out_rows(tmp_path):
    """The unlabelled rows (weight 0) change the student's training only with the term on."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    n = 64
    x = torch.randn(n, 4)
    y = (x[:, 0] > 0).long()
    w = torch.ones(n)
    w[:16] = 0  # left out
    rows = torch.zeros(n, dtype=torch.bool)
    rows[:16] = True
    ev = torch.nn.functional.one_hot(y, 2).float()
    loader = DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=16)

    def fit(coguess):
        model = Classifier(lambda: nn.Linear(4, 2), 2, weights=w, seed=0, coguess=coguess)
        trainer = L.Trainer(
            max_epochs=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(model, loader)
        return model.net.weight.detach().clone()

    plain, with_term = fit(None), fit(CoGuess(ev, rows))
    assert not torch.allclose(plain, with_term)
    with pytest.raises(Exception, match="mixup"):
        Classifier(lambda: nn.Linear(4, 2), 2, weights=w, mixup=0.4, coguess=CoGuess(ev, rows))


def test_perturb_shifts_each_row_circularly_by_at_most_an_eighth(monkeypatch):
    """Without the noise, every row is a torch.roll of itself by up to 1/8 of the last axis."""
    monkeypatch.setattr(torch, "randn", lambda *shape, **kw: torch.zeros(*shape))
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).view(2, 3, 16)
    y = perturb(x, torch.Generator().manual_seed(3))
    for row, out in zip(x, y, strict=True):
        shifts = [s for s in range(-2, 3) if torch.equal(torch.roll(row, s, dims=-1), out)]
        assert len(shifts) == 1, out
