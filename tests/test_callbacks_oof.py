from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from dcloop.callbacks import OOFCollector
from dcloop.callbacks.oof import dedup_last
from dcloop.models import MLP, FoldEnsemble

from conftest import fast_trainer


class IndexEcho(L.LightningModule):
    """A user's own module whose logits identify the sample (x holds its index)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].long() % self.c, self.c).float() * 10 + self.w

    def training_step(self, batch, _):
        return self(batch[0]).sum() * 0 + self.w.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_buffer_rows_are_placed_by_index(tmp_path):
    n, c = 50, 7
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    ds = TensorDataset(x, torch.zeros(n, dtype=torch.long), torch.arange(n))
    held_out = list(range(0, n, 3))  # sequential mode: one fold, shuffled order
    order = np.random.default_rng(0).permutation(held_out).tolist()
    loader = DataLoader(Subset(ds, order), batch_size=4)
    oof = OOFCollector(n, c, dataloader=loader, require_full_coverage=False)
    trainer = fast_trainer(tmp_path, [oof], max_epochs=1)
    trainer.fit(IndexEcho(c), DataLoader(ds, batch_size=10))
    index, probs = oof.shard()
    assert index.tolist() == held_out
    assert (probs.argmax(1) == np.array(held_out) % c).all()
    assert not oof.seen[1] and oof.probs[1].sum() == 0
    path = oof.save_shard(tmp_path / "shard_0.npz")
    np.testing.assert_array_equal(np.load(path)["index"], held_out)


def test_fold_parallel_buffer_equals_held_out_replica(tmp_path, blobs):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=4)
    oof = OOFCollector()
    fast_trainer(tmp_path, [oof], max_epochs=2).fit(model, datamodule=blobs)
    model.eval()
    with torch.no_grad():
        direct = model.oof_probs(blobs.x, torch.arange(blobs.n))
    torch.testing.assert_close(oof.probs, direct)
    assert oof.seen.all() and oof.last_epoch == 1
    torch.testing.assert_close(oof.probs.sum(1), torch.ones(blobs.n))


def test_missing_index_is_a_clear_error(tmp_path, blobs):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=4)
    two = DataLoader(TensorDataset(blobs.x, torch.from_numpy(blobs.labels)), batch_size=64)
    oof = OOFCollector(dataloader=two)
    with pytest.raises(ValueError, match=r"items \(x, y, index\)"):
        fast_trainer(tmp_path, [oof], max_epochs=1).fit(model, datamodule=blobs)


def test_incomplete_coverage_is_an_error(tmp_path, blobs):
    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=4)
    part = DataLoader(Subset(blobs.ds, range(100)), batch_size=64)
    with pytest.raises(RuntimeError, match="140 of 240 rows unwritten"):
        fast_trainer(tmp_path, [OOFCollector(dataloader=part)], max_epochs=1).fit(
            model, datamodule=blobs
        )


def test_dedup_drops_padded_repeats():
    index = torch.tensor([3, 1, 2, 3, 1])
    probs = torch.arange(5.0).unsqueeze(1)
    i, p = dedup_last(index, probs)
    assert i.tolist() == [1, 2, 3] and p.flatten().tolist() == [1.0, 2.0, 0.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        OOFCollector(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_classes"):
        OOFCollector(10, 0)
