"""cl.relabel: the weight the loop's action takes from a given label goes to the suggested one."""

from functools import partial

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dcloop.callbacks import ConfidentLearning
from dcloop.errors import UserInputError
from dcloop.models import MLP, FoldEnsemble
from dcloop.models.classifier import Classifier
from dcloop.step import StepPolicy

LABELS = np.repeat(np.arange(3), 10)
NET = partial(MLP, (1, 4, 4), 3, hidden=(16,))


def acted_on(model):
    """Rows 0-3 acted on by the loop: 0 pruned, 1 half-way down the ramp, 2 pruned with a
    label file's prior weight 0.5, 3 pruned but with no suggestion yet; 4 untouched."""
    s = model.samples
    s.weights[:4] = torch.tensor([0.0, 0.5, 0.0, 0.0])
    s.prior_weights[2] = 0.5
    s.suggested[:5] = torch.tensor([2, 1, 1, -1, 2])
    return torch.arange(5)


def test_off_trains_on_given_labels_and_the_loops_weights():
    model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
    index = acted_on(model)
    targets, weights = model.train_targets(index)
    assert targets.tolist() == [0, 0, 0, 0, 0]
    assert weights.tolist() == [0.0, 0.5, 0.0, 0.0, 1.0]


def test_on_moves_the_lowered_weight_to_the_suggested_label():
    model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
    model.relabel = True
    targets, weights = model.train_targets(acted_on(model))
    expect = torch.tensor(
        [
            [0.0, 0.0, 1.0],  # pruned: the suggested label, at full weight
            [0.5, 0.5, 0.0],  # half-way: half each
            [0.0, 1.0, 0.0],  # pruned, prior 0.5: suggested, at the prior weight
            [1.0, 0.0, 0.0],  # no suggestion: given label, weight as the loop left it (0)
            [1.0, 0.0, 0.0],  # untouched (suggested 2 but nothing lowered): given label
        ]
    )
    torch.testing.assert_close(targets, expect)
    assert weights.tolist() == [1.0, 1.0, 0.5, 0.0, 1.0]


def test_vmap_and_loop_agree_on_relabelled_soft_targets():
    x, index = torch.randn(30, 1, 4, 4), torch.arange(30)
    grads = []
    for mode in ("vmap", "loop"):
        model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
        model.train()
        model.relabel = True
        acted_on(model)
        model._mode = mode
        model.training_step((x, model.samples.labels, index), 0).backward()
        grads.append([p.grad.clone() for p in model.replica_params.values()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_relabel_changes_the_gradient_only_through_acted_on_rows():
    x = torch.randn(30, 1, 4, 4)
    losses = []
    for relabel in (False, True):
        model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
        model.train()
        model.relabel = relabel
        model.samples.suggested[:] = 1  # a suggestion everywhere, but no row acted on
        losses.append(model.training_step((x, model.samples.labels, torch.arange(30)), 0))
    torch.testing.assert_close(losses[0], losses[1])


def test_callback_sets_the_module_and_refuses_what_cannot_relabel():
    model = FoldEnsemble(NET, LABELS, num_folds=5, seed=0)
    ConfidentLearning(relabel=True)._set_relabel(model)
    assert model.relabel is True
    ConfidentLearning()._set_relabel(model)
    assert model.relabel is False
    with pytest.raises(UserInputError, match="cl.relabel=true needs the fold replicas"):
        ConfidentLearning(relabel=True)._set_relabel(Classifier(NET, 3))
    hard_only = FoldEnsemble(
        NET, LABELS, num_folds=5, loss=lambda z, y: torch.nn.functional.nll_loss(z, y)
    )
    with pytest.raises(UserInputError, match="cl.relabel trains on soft"):
        ConfidentLearning(relabel=True)._set_relabel(hard_only)


def test_option_is_checked_and_sequential_mode_refuses_it():
    with pytest.raises(UserInputError, match="relabel"):
        StepPolicy.from_options({"relabel": "yes"})
    assert StepPolicy.from_options({"relabel": True}).cleaning.relabel is True
    from dcloop.scale.fold_run import step_policy

    with pytest.raises(UserInputError, match="mode=parallel"):
        step_policy(OmegaConf.create({"cl": {"relabel": True}}))
