import warnings
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset

from dcloop.data.digits import load_digits_full
from dcloop.models import MLP, Classifier, FoldEnsemble, fold_masked_loss, module_kwargs, optim
from dcloop.models import fold_ensemble as fe
from dcloop.models.fold_ensemble import RUN_KEY

LABELS = np.repeat(np.arange(3), 10)
FLAT = {
    "optim": {"lr": 0.003, "weight_decay": 0.0001, "scheduler": "cosine", "label_smoothing": 0.1}
}
PARTIALS = {
    "optimizer": {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "lr": 0.003,
        "weight_decay": 0.0001,
    },
    "scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True},
    "loss": {"label_smoothing": 0.1},
}


def trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kw,
    )


def digits(n=300):
    ds = load_digits_full()
    return Subset(ds, range(n)), np.asarray(ds.labels[:n])


@pytest.mark.parametrize("module", ["ensemble", "classifier"])
def test_partials_give_the_same_numbers_as_the_flat_keys(module, tmp_path):
    ds, labels = digits()
    params = {}
    for name, cfg in (("flat", FLAT), ("partials", PARTIALS)):
        net = partial(MLP, (1, 8, 8), 10, hidden=(32,))
        if module == "ensemble":
            kw = module_kwargs(OmegaConf.create(cfg))
            model = FoldEnsemble(net, labels, num_folds=3, num_classes=10, seed=0, **kw)
        else:
            kw = module_kwargs(OmegaConf.create(cfg), Classifier)
            model = Classifier(net, 10, seed=0, **kw)
        trainer(tmp_path, max_epochs=3).fit(model, DataLoader(ds, batch_size=64))
        params[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if module == "ensemble":
            params[name + "_info"] = model.optim_info
    for k, v in params["flat"].items():  # bit for bit (NaN: per-sample scores not yet computed)
        torch.testing.assert_close(v, params["partials"][k], rtol=0, atol=0, equal_nan=True)
    if module == "ensemble":  # resume checks see one setting, written either way
        assert params["flat_info"] == params["partials_info"]
        assert params["flat_info"] == {
            "lr": 0.003,
            "weight_decay": 0.0001,
            "scheduler": "cosine",
            "label_smoothing": 0.1,
        }


@pytest.mark.parametrize("cls", [torch.optim.LBFGS, torch.optim.Adafactor])
def test_coupling_optimisers_raise(cls):
    net, match = partial(MLP, (1, 4, 4), 3, hidden=(8,)), f"{cls.__name__} couples the K"
    with pytest.raises(ValueError, match=match):
        FoldEnsemble(net, LABELS, optimizer=partial(cls))  # at construction
    with pytest.raises(ValueError, match=match):  # a factory that is not a partial of the class
        FoldEnsemble(net, LABELS, optimizer=lambda p: cls(p)).configure_optimizers()
    Classifier(partial(MLP, (1, 4, 4), 3), 3, optimizer=partial(cls)).configure_optimizers()


class Custom(torch.optim.SGD):
    pass


def test_unknown_optimiser_warns_and_elementwise_ones_pass():
    net = partial(MLP, (1, 4, 4), 3, hidden=(8,))
    with pytest.warns(UserWarning, match="Custom is not known to be elementwise"):
        FoldEnsemble(net, LABELS, optimizer=partial(Custom, lr=0.1)).configure_optimizers()
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    out = FoldEnsemble(net, LABELS, optimizer=sgd, scheduler="none").configure_optimizers()
    assert isinstance(out, torch.optim.SGD)


def test_scheduler_partials_get_lengths_from_the_trainer():
    params = [nn.Parameter(torch.zeros(3))]
    fake = SimpleNamespace(max_epochs=7, estimated_stepping_batches=30)
    cos = partial(torch.optim.lr_scheduler.CosineAnnealingLR)
    out = optim.configure_optimizers(
        params, optimizer=None, scheduler=cos, lr=0.1, weight_decay=0.0, trainer=fake
    )
    assert out["lr_scheduler"]["scheduler"].T_max == 7
    assert out["lr_scheduler"]["interval"] == "epoch"
    one = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
    out = optim.configure_optimizers(
        params, optimizer=None, scheduler=one, lr=0.1, weight_decay=0.0, trainer=fake
    )
    assert out["lr_scheduler"]["scheduler"].total_steps == 30
    assert out["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="scheduler must be"):
        FoldEnsemble(partial(MLP, (1, 4, 4), 3), LABELS, scheduler="linear")


def test_loss_partial_equals_label_smoothing():
    logits, y, folds = torch.randn(3, 8, 4), torch.randint(0, 4, (8,)), torch.arange(8) % 3
    cfg = {"loss": {"_target_": "torch.nn.functional.cross_entropy", "label_smoothing": 0.2}}
    loss = optim.per_sample_loss(module_kwargs(OmegaConf.create(cfg))["loss"], 0.0)
    a = fold_masked_loss(logits, y, folds, label_smoothing=0.2)
    b = fold_masked_loss(logits, y, folds, loss_fn=loss)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not both"):
        optim.per_sample_loss(loss, 0.1)


def _ensemble(k=2):
    model = FoldEnsemble(partial(MLP, (1, 4, 4), 3, hidden=(8,)), LABELS, num_folds=k)
    torch.manual_seed(0)
    for p in model.replica_params.values():
        p.grad = torch.randn_like(p)
    return model


def test_norm_clipping_is_per_replica():
    a, b = _ensemble(), _ensemble()
    for p in b.replica_params.values():
        p.grad[1] *= 1000.0  # replica 1's gradient is huge in b, not in a
    alone = []  # replica 0 as if it trained alone
    for p in a.replica_params.values():
        g = nn.Parameter(p.detach()[0].clone())
        g.grad = p.grad[0].clone()
        alone.append(g)
    torch.nn.utils.clip_grad_norm_(alone, 0.5)
    for m in (a, b):
        m.configure_gradient_clipping(None, 0.5, "norm")
    for p_a, p_b, g in zip(
        a.replica_params.values(), b.replica_params.values(), alone, strict=True
    ):
        torch.testing.assert_close(p_a.grad[0], p_b.grad[0])  # unaffected by replica 1's scale
        torch.testing.assert_close(p_a.grad[0], g.grad)
    norms = [
        torch.linalg.vector_norm(torch.stack([p.grad[k].norm() for p in b.replica_params.values()]))
        for k in range(2)
    ]
    torch.testing.assert_close(torch.stack(norms), torch.full((2,), 0.5), rtol=1e-4, atol=0)


def test_trainer_norm_clipping_goes_through_the_per_replica_hook(tmp_path, monkeypatch):
    calls = []
    real = fe.clip_grad_norm_per_replica
    monkeypatch.setattr(
        fe, "clip_grad_norm_per_replica", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    ds, labels = digits(100)
    for algorithm in (None, "norm", "value"):
        model = FoldEnsemble(partial(MLP, (1, 8, 8), 10, hidden=(8,)), labels, num_classes=10)
        kw = {} if algorithm is None else {"gradient_clip_algorithm": algorithm}
        trainer(tmp_path, max_epochs=1, gradient_clip_val=0.25, **kw).fit(
            model, DataLoader(ds, batch_size=30)
        )
    assert calls == [0.25] * 8  # 4 steps each with the default ("norm") and "norm"; none by value


def test_resume_compares_the_optimiser_written_either_way():
    flat = FoldEnsemble(partial(MLP, (1, 4, 4), 3), LABELS, lr=0.003, weight_decay=0.0001)
    sgd = FoldEnsemble(
        partial(MLP, (1, 4, 4), 3), LABELS, optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    saved = {RUN_KEY: {**flat.run_info, "optim": flat.optim_info, "max_epochs": None}}
    kw = module_kwargs(OmegaConf.create({k: v for k, v in PARTIALS.items() if k != "loss"}))
    same = FoldEnsemble(partial(MLP, (1, 4, 4), 3), LABELS, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.on_load_checkpoint(dict(saved))
    with pytest.warns(UserWarning, match=r"optimizer None -> 'torch.optim.sgd.SGD\(lr=0.1\)'"):
        sgd.on_load_checkpoint(dict(saved))


def test_adam_and_adamw_take_the_fused_step_unless_the_user_chose_one():
    """configure_optimizers builds Adam/AdamW with fused=True (one pass per step; 5x less CPU
    on AG News's stacked embeddings, scripts/results/bench_fused_adam.md) when the user set
    neither fused nor foreach and every parameter is a float tensor on the CPU or CUDA."""
    import functools

    from dcloop.models.optim import _fused, configure_optimizers

    params = [torch.nn.Parameter(torch.zeros(3, 2))]
    kw = dict(scheduler="none", lr=1e-3, weight_decay=0.0)
    assert configure_optimizers(params, optimizer=None, **kw).defaults["fused"] is True
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    assert configure_optimizers(params, optimizer=adam, **kw).defaults["fused"] is True
    chosen = functools.partial(torch.optim.AdamW, lr=1e-2, fused=False)
    assert not configure_optimizers(params, optimizer=chosen, **kw).defaults["fused"]
    assert _fused(functools.partial(torch.optim.AdamW, foreach=True), params) == {}
    assert _fused(functools.partial(torch.optim.SGD, lr=0.1), params) == {}
    assert _fused(None, [torch.nn.Parameter(torch.zeros(2, device="meta"))]) == {}
    assert _fused(None, [{"params": params}]) == {"fused": True}  # parameter groups
    # the same update as the per-tensor step, to float tolerance
    a, b = (torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4)) for _ in range(2))
    opts = [torch.optim.AdamW([a], lr=0.1, fused=False), torch.optim.AdamW([b], lr=0.1, fused=True)]
    for step in range(5):
        for p, opt in zip((a, b), opts, strict=True):
            p.grad = torch.full_like(p, 0.3) * (step + 1) - p.detach()
            opt.step()
    torch.testing.assert_close(a, b)
