import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dcloop.data.sampling import EpochShuffleSampler


class BlobsDataModule(L.LightningDataModule):
    """Gaussian blobs with 15% of labels flipped; items are (x, y, index)."""

    def __init__(self, n=240, c=3, d=8, seed=0, noise=0.15):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.true = rng.integers(0, c, n)
        centers = rng.normal(scale=3.0, size=(c, d))
        self.x = torch.tensor(centers[self.true] + rng.normal(size=(n, d)), dtype=torch.float32)
        self.labels = self.true.copy()
        flip = rng.random(n) < noise
        self.labels[flip] = (self.true[flip] + 1) % c
        self.num_classes, self.n = c, n
        self.ds = TensorDataset(self.x, torch.from_numpy(self.labels), torch.arange(n))

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=32, sampler=EpochShuffleSampler(self.n, seed=0))

    def oof_dataloader(self):
        return DataLoader(self.ds, batch_size=64)


@pytest.fixture
def blobs():
    return BlobsDataModule()


def fast_trainer(tmp_path, callbacks, max_epochs=3, **kw):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kw,
    )
