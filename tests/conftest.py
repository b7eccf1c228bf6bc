import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dcloop
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


#: The package's config folder (``conf`` at the repository root links to it).
CONF = str(Path(dcloop.__file__).parent / "conf")
SCRIPTS = Path(__file__).parent.parent / "scripts"


def load_script(name: str):
    """``scripts/NAME.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Overrides that keep a test run quiet and light.
QUIET = ("logger=none", "trainer.enable_progress_bar=false")
#: What the end-to-end tests add for a run: no logger, no checkpoints, no progress bar.
RUN_QUIET = (*QUIET, "checkpoint=false")


def compose_dcloop(output_dir, *overrides: str, hydra: bool = False):
    """The composed dcloop config with ``output_dir`` set (the one copy of this code; test
    files call it with their own quiet/fast overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "config",
            overrides=[f"output_dir={output_dir}", *overrides],
            return_hydra_config=hydra,
        )


@pytest.fixture
def compose_config(tmp_path):
    """``compose_config(*overrides, quiet=True, hydra=False)``: :func:`compose_dcloop` in the
    test's folder, with :data:`QUIET` unless ``quiet=False``."""

    def make(*overrides: str, quiet: bool = True, hydra: bool = False):
        return compose_dcloop(tmp_path, *(QUIET if quiet else ()), *overrides, hydra=hydra)

    return make
