from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from dcloop.models import MLP, FoldEnsemble, SmallCNN, fold_masked_loss
from dcloop.models.audio import AudioCNN

LABELS = np.repeat(np.arange(3), 10)


def make(net=None, **kw):
    net = net or partial(MLP, (1, 4, 4), 3, hidden=(16,))
    return FoldEnsemble(net, LABELS, num_folds=5, seed=0, **kw)


def test_replica_gets_no_gradient_from_its_own_fold():
    model = make()
    model.train()
    index = torch.from_numpy(np.flatnonzero(model.samples.folds.numpy() == 2))
    x = torch.randn(len(index), 1, 4, 4)
    s = model.samples
    loss, per_replica = fold_masked_loss(model(x), s.labels[index], s.folds[index])
    loss.backward()
    for name, p in model.replica_params.items():
        grads = p.grad.flatten(1).abs().sum(1)
        assert grads[2] == 0, name
        assert (grads[[0, 1, 3, 4]] > 0).all(), name
    assert per_replica[2] == 0


def test_weights_zero_remove_a_sample_from_the_loss():
    logits = torch.randn(2, 4, 3)
    y = torch.tensor([0, 1, 2, 0])
    folds = torch.tensor([0, 0, 1, 1])
    w = torch.tensor([1.0, 0.0, 1.0, 1.0])
    _, per = fold_masked_loss(logits, y, folds, w)
    ce = torch.nn.functional.cross_entropy(logits[1, :2], y[:2], reduction="none")
    torch.testing.assert_close(per[1], ce[0])  # replica 1 trains on fold 0 minus the pruned one


@pytest.mark.parametrize(
    "net",
    [partial(MLP, (1, 4, 4), 3, hidden=(16,)), partial(SmallCNN, 1, 3, width=4, batch_norm=True)],
)
def test_vmap_and_loop_agree(net):
    model = make(net)
    model.eval()
    x = torch.randn(6, 1, 4, 4)
    model._mode = "vmap"
    a = model(x)
    model._mode = "loop"
    b = model(x)
    assert a.shape == (5, 6, 3)
    torch.testing.assert_close(a, b)


def test_replicas_differ_and_init_is_seeded():
    a, b = make(), make()
    p = next(iter(a.replica_params.values()))
    assert not torch.equal(p[0], p[1])
    torch.testing.assert_close(p, next(iter(b.replica_params.values())))


class NotVmappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        if self.lin.weight.sum().item() > 1e9:  # vmap cannot batch .item() on a replica
            return self.lin(x.flatten(1)) * 0
        return self.lin(x.flatten(1))


def test_auto_falls_back_to_loop():
    model = make(NotVmappable)
    out = model(torch.randn(4, 1, 4, 4))
    assert out.shape == (5, 4, 3) and not model.vectorized
    strict = make(NotVmappable, vectorize="vmap")
    with pytest.raises(RuntimeError):
        strict(torch.randn(4, 1, 4, 4))


def test_oof_probs_take_the_held_out_replica():
    model = make()
    model.eval()
    x = torch.randn(30, 1, 4, 4)
    index = torch.arange(30)
    probs = model.oof_probs(x, index)
    all_probs = model(x).softmax(-1)
    for i in range(30):
        torch.testing.assert_close(probs[i], all_probs[model.samples.folds[i], i])


def test_bad_arguments():
    with pytest.raises(ValueError, match="vectorize"):
        make(vectorize="fast")
    with pytest.raises(ValueError, match="callable"):
        FoldEnsemble(3, LABELS)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        FoldEnsemble(partial(MLP, (16,), 2), LABELS, num_classes=2)


def test_loop_skips_held_out_and_pruned_rows_with_the_same_gradients():
    """The loop's training loss runs replica k on its own training rows only (not its held-out
    fold, not the pruned rows) and gives the masked loss's value and gradients."""
    x = torch.randn(30, 1, 4, 4)
    index = torch.arange(30)
    weights = torch.ones(30)
    weights[:4] = 0.0  # pruned
    weights[4:8] = 0.5  # down-weighted
    grads = []
    for mode in ("vmap", "loop"):
        model = make()
        model.train()
        model.samples.weights.copy_(weights)
        model._mode = mode
        seen: list[int] = []
        hook = model._skeleton[0].register_forward_pre_hook(
            lambda m, a, seen=seen: seen.append(len(a[0]))
        )
        loss = model.training_step((x, model.samples.labels, index), 0)
        hook.remove()
        loss.backward()
        grads.append([p.grad.clone() for p in model.replica_params.values()])
        if mode == "loop":
            folds = model.samples.folds
            kept = weights > 0
            assert seen == [int(((folds != k) & kept).sum()) for k in range(5)]
            assert sum(seen) < 4 * 30  # each replica skips its held-out fifth and the pruned
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_auto_loops_on_cpu_at_fit_start():
    model = make()
    assert model.vectorized  # before fit: vmap, with the loop as fallback
    model.on_fit_start()
    assert not model.vectorized
    pinned = make(vectorize="vmap")
    pinned.on_fit_start()
    assert pinned.vectorized


def test_the_loop_runs_a_shared_front_end_once_per_batch_with_the_same_loss_and_gradients():
    """AudioCNN's log-mel front end has no parameters (``prepare_input``): the loop over replicas
    computes it once per training batch and per forward, not once per replica, and the loss,
    gradients and logits are those of each replica running its own front end."""
    labels = np.repeat(np.arange(3), 10)
    x = torch.randn(30, 1, 2000)
    index = torch.arange(30)
    runs = []
    for shared in (True, False):
        model = FoldEnsemble(
            partial(AudioCNN, 1, 3, sample_rate=8000, width=4), labels, num_folds=5, seed=0
        )
        model.train()
        model._mode = "loop"
        net = model._skeleton[0]
        if not shared:  # the instance attribute hides the method: no shared front end
            net.prepare_input = None
        calls: list[int] = []
        real = net.logmel
        net.logmel = lambda w, real=real, calls=calls: calls.append(len(w)) or real(w)
        loss = model.training_step((x, model.samples.labels, index), 0)
        loss.backward()
        n_train = len(calls)
        with torch.no_grad():
            logits = model(x)
        runs.append((loss.detach(), [p.grad.clone() for p in model.replica_params.values()]))
        runs[-1] += (logits, n_train, len(calls) - n_train)
    (l1, g1, o1, train1, fwd1), (l2, g2, o2, train2, fwd2) = runs
    assert (train1, fwd1) == (1, 1)  # once per batch, whatever K
    assert (train2, fwd2) == (5, 5)  # once per replica
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(o1, o2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
