"""The OOF pass through each sample's held-out replica only (fold-grouped batches)."""

from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dcloop.callbacks import OOFCollector
from dcloop.data.fold_batches import FoldBatchSampler, fold_grouped_loader
from dcloop.folds import assign_folds
from dcloop.models import MLP, FoldEnsemble, SmallCNN

from conftest import fast_trainer


def check_batches(folds, batch_size, batches, batch_folds):
    sizes = {len(b) for b in batches}
    assert len(sizes) == 1 and sizes.pop() <= batch_size  # one static shape
    for b, k in zip(batches, batch_folds, strict=True):
        assert (folds[b] == k).all()  # never straddles folds


@pytest.mark.parametrize(("n", "k", "bs"), [(240, 4, 64), (1168, 5, 512), (6000, 10, 256)])
def test_fold_batches_cover_every_row_once_per_fold_with_one_shape(n, k, bs):
    folds = assign_folds(np.arange(n) % 7, k, seed=0)
    s = FoldBatchSampler(folds, bs)
    batches = list(s)
    check_batches(folds, bs, batches, s.batch_folds)
    rows = np.concatenate(batches)
    assert set(rows.tolist()) == set(range(n))
    assert len(rows) - n < len(batches)  # padding: under one row per batch here
    assert len(s) == len(batches)


def test_fold_batches_under_ddp_split_evenly_and_cover_everything():
    folds = assign_folds(np.arange(1000) % 3, 5, seed=1)
    one = FoldBatchSampler(folds, 96)
    ranks = [FoldBatchSampler(folds, 96, num_replicas=3, rank=r) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every rank runs as many batches
    assert {r.batch_rows for r in ranks} == {one.batch_rows}  # ... of one shape
    for r in ranks:
        check_batches(folds, 96, list(r), r.batch_folds)
    got = sorted(tuple(b) for r in ranks for b in r)
    assert set(got) == {tuple(b) for b in one}  # together: the one-process batches


def test_fold_batches_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        FoldBatchSampler(np.zeros(4, dtype=int), 0)
    with pytest.raises(ValueError, match="rank"):
        FoldBatchSampler(np.zeros(4, dtype=int), 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="integer"):
        FoldBatchSampler(np.zeros(4), 2)
    with pytest.raises(ValueError, match="mode"):
        OOFCollector(mode="fast")


def test_loaders_that_cannot_be_regrouped_keep_their_own_batches():
    ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10), torch.arange(10))
    folds = np.arange(10) % 2
    assert fold_grouped_loader(DataLoader(ds, batch_size=4), folds[:9]) is None
    own = DataLoader(ds, batch_sampler=[[0, 1], [2, 3]])
    assert fold_grouped_loader(own, folds) is None
    assert fold_grouped_loader(DataLoader(ds, batch_size=4), folds).batch_sampler.batch_rows == 3


def images(n=200, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    y[:c] = torch.arange(c)
    return x, y


class CountRows(torch.nn.Module):
    """Counts the rows a wrapped network sees (per replica call)."""

    seen = 0

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        type(self).seen += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize(
    "net",
    [
        partial(SmallCNN, 1, 3, width=8),  # conv: vmap batches replicas as grouped convs
        partial(SmallCNN, 1, 3, width=8, batch_norm=True),  # loop fallback, eval-mode BN
        partial(MLP, (1, 8, 8), 3, hidden=(16,)),
    ],
)
def test_held_out_pass_equals_the_all_replica_pass_on_one_trained_model(tmp_path, net):
    x, y = images()
    ds = TensorDataset(x, y, torch.arange(len(y)))
    model = FoldEnsemble(net, y.numpy(), num_folds=5, seed=3)
    old = OOFCollector(dataloader=DataLoader(ds, batch_size=64), mode="all")
    trainer = fast_trainer(tmp_path, [old], max_epochs=2)
    trainer.fit(model, DataLoader(ds, batch_size=32, shuffle=True))
    new = OOFCollector(dataloader=DataLoader(ds, batch_size=64))
    new.setup(trainer, model, "fit")
    new.collect(trainer, model)
    assert new._misrouted is not None and not new._misrouted  # the fast path ran
    assert old.seen.all() and new.seen.all()
    torch.testing.assert_close(new.probs, old.probs)
    assert not torch.equal(old.probs, torch.zeros_like(old.probs))


def test_held_out_pass_runs_each_sample_through_one_replica(tmp_path):
    x, y = images(n=240)
    ds = TensorDataset(x, y, torch.arange(len(y)))
    model = FoldEnsemble(lambda: CountRows(MLP((1, 8, 8), 3)), y.numpy(), num_folds=4)
    trainer = fast_trainer(tmp_path, [], max_epochs=1)
    trainer.fit(model, DataLoader(ds, batch_size=60))
    model._mode = "loop"  # count per replica call (vmap would see the rows once for all K)
    for mode, rows in (("all", 4 * 240), ("held_out", 240)):
        oof = OOFCollector(dataloader=DataLoader(ds, batch_size=64), mode=mode)
        oof.setup(trainer, model, "fit")
        CountRows.seen = 0
        oof.collect(trainer, model)
        assert rows <= CountRows.seen < rows + 4 * 4  # + under one padded row per batch


class Shuffled(Dataset):
    """Row i carries another sample's index: fold-grouped batching cannot apply."""

    def __init__(self, ds, order):
        self.ds, self.order = ds, order

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        return self.ds[int(self.order[i])]


def test_rows_not_carrying_their_position_fall_back_to_every_replica(tmp_path, caplog):
    x, y = images()
    ds = TensorDataset(x, y, torch.arange(len(y)))
    perm = np.random.default_rng(0).permutation(len(y))
    model = FoldEnsemble(partial(MLP, (1, 8, 8), 3), y.numpy(), num_folds=5)
    oof = OOFCollector(dataloader=DataLoader(Shuffled(ds, perm), batch_size=50))
    trainer = fast_trainer(tmp_path, [oof], max_epochs=1)
    with caplog.at_level("WARNING", logger="dcloop.callbacks.oof"):
        trainer.fit(model, DataLoader(ds, batch_size=50))
    assert "mode='all'" in caplog.text
    model.eval()
    with torch.no_grad():
        direct = model.oof_probs(x, torch.arange(len(y)))
    torch.testing.assert_close(oof.probs, direct)


def test_on_digits_the_default_network_gives_the_same_matrix_both_ways(tmp_path):
    from dcloop.data import LabelNoiseDataModule

    dm = LabelNoiseDataModule("digits", noise={"kind": "symmetric", "rate": 0.2}, seed=0)
    dm.setup()
    model = FoldEnsemble(partial(SmallCNN, 1, 10), dm.given_labels, num_folds=5, vectorize="vmap")
    new = OOFCollector()
    trainer = fast_trainer(tmp_path, [new], max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert model.vectorized and new._misrouted is not None  # vmap training, fast OOF pass
    old = OOFCollector(mode="all")
    old.setup(trainer, model, "fit")
    old.collect(trainer, model)
    torch.testing.assert_close(new.probs, old.probs)
    assert old._misrouted is None
