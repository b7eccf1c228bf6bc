import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dcloop.models import FoldEnsemble

LABELS = np.repeat(np.arange(3), 10)


class UserModel(L.LightningModule):
    """A user's own LightningModule: a body, a head and an SGD with a slower body."""

    def __init__(self, d=6, c=3, scheduler=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, c)
        self.scheduler = scheduler

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):  # not used by the ensemble
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            [{"params": self.body.parameters(), "lr": 0.01}, {"params": self.head.parameters()}],
            lr=0.1,
            momentum=0.9,
        )
        if self.scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]
        return opt


def test_forward_and_optimizer_groups_are_reused():
    user = UserModel()
    ens = FoldEnsemble.from_module(user, LABELS, num_folds=3, scheduler="none")
    opt = ens.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    body = {id(p) for n, p in ens.replica_params.items() if n.startswith("body")}
    assert {id(p) for p in opt.param_groups[0]["params"]} == body
    assert all(p.shape[0] == 3 for g in opt.param_groups for p in g["params"])


def test_fresh_replicas_differ_copied_ones_equal_the_module():
    user = UserModel().eval()
    x = torch.randn(5, 6)
    fresh = FoldEnsemble.from_module(user, LABELS, num_folds=3).eval()
    w = fresh.replica_params["head__weight"]
    assert not torch.equal(w[0], w[1])
    assert not torch.equal(w[0], user.head.weight)
    copied = FoldEnsemble.from_module(user, LABELS, num_folds=3, init="copy").eval()
    out = copied(x)
    for k in range(3):
        torch.testing.assert_close(out[k], user(x))


def test_trains_fold_parallel_and_says_what_is_not_reused(tmp_path):
    n = len(LABELS)
    ds = TensorDataset(torch.randn(n, 6), torch.from_numpy(LABELS), torch.arange(n))
    with pytest.warns(UserWarning, match="LR scheduler .* is not reused"):
        ens = FoldEnsemble.from_module(
            UserModel(scheduler=True), LABELS, num_folds=3, vectorize="vmap"
        )
        before = ens.replica_params["head__weight"].detach().clone()
        L.Trainer(
            accelerator="cpu",
            max_epochs=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
        ).fit(ens, DataLoader(ds, batch_size=10))
    assert ens.vectorized
    assert not torch.equal(ens.replica_params["head__weight"], before)


class NeedsTrainer(UserModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1 * self.trainer.max_epochs)


class Coupled(UserModel):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters())


def test_boundary_errors():
    with pytest.raises(ValueError, match="pass optimizer="):
        FoldEnsemble.from_module(NeedsTrainer(), LABELS)
    ens = FoldEnsemble.from_module(
        NeedsTrainer(), LABELS, optimizer=lambda p: torch.optim.Adam(p), scheduler="none"
    )
    assert isinstance(ens.configure_optimizers(), torch.optim.Adam)
    with pytest.raises(ValueError, match="LBFGS couples"):
        FoldEnsemble.from_module(Coupled(), LABELS).configure_optimizers()
    manual = UserModel()
    manual.automatic_optimization = False
    with pytest.raises(ValueError, match="manual optimisation"):
        FoldEnsemble.from_module(manual, LABELS)
