"""Early-learning regularisation (dcloop.models.elr) for the fold replicas and one network."""

from functools import partial

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dcloop.errors import UserInputError
from dcloop.models import MLP, FoldEnsemble
from dcloop.models.classifier import Classifier
from dcloop.models.elr import EarlyLearning, check_options, reconcile_checkpoint
from dcloop.models.factory import module_kwargs

LABELS = np.repeat(np.arange(3), 10)
NET = partial(MLP, (1, 4, 4), 3, hidden=(16,))


def reference_penalty(logits_steps, lam, beta):
    """The paper's code, step by step, for one network and the same rows each step."""
    target = torch.zeros_like(logits_steps[0])
    out = []
    for logits in logits_steps:
        p = logits.softmax(-1).clamp(1e-4, 1 - 1e-4)
        target = beta * target + (1 - beta) * p / p.sum(-1, keepdim=True)
        out.append(lam * (1 - (target * p).sum(-1)).log())
    return out


def test_penalty_is_the_papers_running_average_term():
    torch.manual_seed(0)
    steps = [torch.randn(4, 3) for _ in range(3)]
    elr = EarlyLearning(10, 3, lam=3.0, beta=0.7)
    index = torch.tensor([7, 2, 5, 0])
    got = [elr.penalty(z, index) for z in steps]
    for a, b in zip(got, reference_penalty(steps, 3.0, 0.7), strict=True):
        torch.testing.assert_close(a, b)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[index] = False
    assert (elr.targets[0, untouched] == 0).all()


def test_penalty_is_lower_where_the_prediction_agrees_with_its_running_target():
    elr = EarlyLearning(2, 3, lam=3.0, beta=0.9)
    with torch.no_grad():
        elr.targets[0] = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    agree = torch.tensor([[4.0, 0.0, 0.0]])
    disagree = torch.tensor([[0.0, 4.0, 0.0]])
    assert elr.penalty(agree, torch.tensor([0])) < elr.penalty(disagree, torch.tensor([1]))
    # and its gradient pushes a disagreeing prediction towards the target class
    z = disagree.clone().requires_grad_(True)
    elr.penalty(z, torch.tensor([1])).sum().backward()
    assert z.grad[0, 0] < 0  # descending the loss raises the target class's logit


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_replica_targets_skip_held_out_and_pruned_rows(mode):
    model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0, elr={"lam": 3.0, "beta": 0.7})
    model.train()
    model._mode = mode
    model.samples.weights[:3] = 0.0
    x, index = torch.randn(30, 1, 4, 4), torch.arange(30)
    model.training_step((x, model.samples.labels, index), 0)
    touched = model.elr.targets.abs().sum(-1) > 0  # (K, N)
    folds = model.samples.folds
    for k in range(5):
        expect = (folds != k) & (model.samples.weights > 0)
        assert torch.equal(touched[k], expect), k


def test_vmap_and_loop_give_the_same_loss_gradients_and_targets_with_elr():
    x, index = torch.randn(30, 1, 4, 4), torch.arange(30)
    weights = torch.ones(30)
    weights[:4] = 0.0
    out = []
    for mode in ("vmap", "loop"):
        model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0, elr={"lam": 3.0, "beta": 0.7})
        model.train()
        model.samples.weights.copy_(weights)
        model._mode = mode
        for _ in range(2):  # the second step uses the first step's targets
            model.zero_grad()
            loss = model.training_step((x, model.samples.labels, index), 0)
            loss.backward()
        grads = [p.grad.clone() for p in model.replica_params.values()]
        out.append((loss.detach(), grads, model.elr.targets.clone()))
    (la, ga, ta), (lb, gb, tb) = out
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ta, tb)


def test_elr_changes_the_loss_and_off_leaves_it_alone():
    x, index = torch.randn(30, 1, 4, 4), torch.arange(30)
    losses = {}
    for name, elr in (("off", None), ("zero", {"lam": 0.0}), ("on", {"lam": 3.0})):
        model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0, elr=elr)
        model.train()
        losses[name] = model.training_step((x, model.samples.labels, index), 0).item()
        assert (model.elr is None) == (name != "on")
    assert losses["off"] == losses["zero"]
    assert losses["on"] < losses["off"]  # log(1 - <t, p>) < 0


def test_classifier_elr_trains_on_its_rows_and_refuses_mixup():
    model = Classifier(NET, 3, num_samples=30, elr={"lam": 3.0, "beta": 0.7})
    x, y, index = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6) * 5
    model.training_step((x, y, index), 0).backward()
    touched = model.elr.targets[0].abs().sum(-1) > 0
    assert touched.nonzero().squeeze(1).tolist() == index.tolist()
    weighted = Classifier(NET, 3, weights=torch.ones(30), elr={"lam": 3.0})
    assert weighted.elr.targets.shape == (1, 30, 3)
    with pytest.raises(UserInputError, match="model.elr and mixup"):
        Classifier(NET, 3, num_samples=30, elr={"lam": 3.0}, mixup=0.2)
    with pytest.raises(ValueError, match="num_samples"):
        Classifier(NET, 3, elr={"lam": 3.0})


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("yes", "must be a mapping"),
        ({"lam": 3.0, "momentum": 0.9}, r"unknown keys \['momentum'\]"),
        ({"lam": -1.0}, "lam must be >= 0"),
        ({"lam": "big"}, "lam must be a number; got 'big'"),
        ({"beta": 1.0}, r"beta must be in \[0, 1\); got 1.0"),
    ],
)
def test_bad_options_name_the_value(value, match):
    with pytest.raises(UserInputError, match=match):
        check_options(value)


def test_options_defaults_and_off():
    assert check_options(None) is None
    assert check_options({"lam": 0.0, "beta": 0.7}) is None
    assert check_options({"lam": 3}) == {"lam": 3.0, "beta": 0.7}


def test_too_large_a_buffer_is_refused_before_allocating():
    with pytest.raises(UserInputError, match="GiB"):
        EarlyLearning(2_000_000, 1000, replicas=5)


def test_model_config_reaches_both_modules():
    cfg = OmegaConf.create({"loss": {"label_smoothing": 0.1}, "elr": {"lam": 3.0, "beta": 0.8}})
    kw = module_kwargs(cfg, FoldEnsemble)
    assert kw["elr"] == {"lam": 3.0, "beta": 0.8}
    model = FoldEnsemble(NET, LABELS, num_folds=5, **kw)
    assert model.elr.beta == 0.8 and model.hparams.elr == {"lam": 3.0, "beta": 0.8}
    assert module_kwargs(cfg, Classifier)["elr"] == {"lam": 3.0, "beta": 0.8}


def test_targets_travel_in_the_state_dict_and_a_changed_setting_is_reconciled():
    a = FoldEnsemble(NET, LABELS, num_folds=5, seed=0, elr={"lam": 3.0})
    a.train()
    a.training_step((torch.randn(30, 1, 4, 4), a.samples.labels, torch.arange(30)), 0)
    b = FoldEnsemble(NET, LABELS, num_folds=5, seed=0, elr={"lam": 3.0})
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.elr.targets, b.elr.targets)
    state = {k: v for k, v in a.state_dict().items() if k != "elr.targets"}
    with pytest.warns(UserWarning, match="start from zero"):
        reconcile_checkpoint(b.elr, state, "ckpt")
    b.load_state_dict(state)
    off = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
    state = dict(a.state_dict())
    with pytest.warns(UserWarning, match="dropped"):
        reconcile_checkpoint(off.elr, state, "ckpt")
    off.load_state_dict(state)
