import lightning as L
import pandas as pd
import pytest
import torch

from dcloop.augment import Augmenter, PolicySampler
from dcloop.data import AudioSynth, LabelNoiseDataModule
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET, "++report=false"]


def cfg_for(tmp_path, *overrides):
    return compose_dcloop(tmp_path, *QUIET, *overrides)


def test_augment_none_keeps_todays_loader_and_targeted_uses_the_policy_sampler():
    plain = LabelNoiseDataModule("digits", augment=Augmenter.from_config({"kind": "none"}))
    plain.setup()
    assert plain.augmenter is None
    assert not isinstance(plain.train_dataloader().sampler, PolicySampler)
    dm = LabelNoiseDataModule(
        "digits", augment=Augmenter.from_config({"kind": "targeted", "level": 0})
    )
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, PolicySampler) and dm.augmenter.modality == "image"
    x, y, index = next(iter(loader))
    assert torch.equal(x, torch.stack([dm.train_dataset[int(i)][0] for i in index]))  # level 0


def test_audio_batch_augmentation_follows_the_levels_by_index():
    dm = LabelNoiseDataModule(
        AudioSynth(num_per_class=4, clip_seconds=0.5),
        augment=Augmenter.from_config({"kind": "targeted", "level": 0, "p": 1.0}),
    )
    dm.setup()
    policy = dm.augmenter.policy
    policy.set_classes(torch.arange(10) == 3, level=3)
    x, y, index = next(iter(dm.train_dataloader()))
    out, y2, index2 = dm.augmenter.on_batch((x, y, index))
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert torch.equal(changed, torch.as_tensor(dm.given_labels)[index] == 3)
    assert out.shape == x.shape and out.abs().max() <= 1 and torch.equal(index2, index)


class Spy(L.LightningModule):
    """Records the training batches as the training step receives them."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, _, index = batch
        self.seen.append((x.clone(), index.clone()))
        return self.lin(x.mean(-1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_calls_the_device_batch_augmentation_in_training_only(tmp_path):
    dm = LabelNoiseDataModule(
        AudioSynth(num_per_class=4, clip_seconds=0.25),
        augment=Augmenter.from_config(
            {"kind": "uniform", "level": 2, "p": 1.0, "audio_ops": ["noise"]}
        ),
        batch_size=8,
    )
    spy = Spy()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(spy, datamodule=dm)
    assert len(spy.seen) == 2
    for x, index in spy.seen:
        raw = torch.stack([dm.train_dataset[int(i)][0] for i in index])
        assert x.shape == raw.shape and not torch.allclose(x, raw)  # noise added on the batch
    batch = next(iter(dm.oof_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0)[0] is batch[0]  # not training: untouched


@pytest.mark.slow
def test_audio_end_to_end_with_targeted_augmentation(tmp_path):
    cfg = cfg_for(
        tmp_path,
        "data=audio_synth",
        "model=audio_cnn",
        "augment=targeted",
        "data.source.num_per_class=12",
        "data.source.clip_seconds=0.5",
        "folds=3",
        "trainer.max_epochs=2",
        "cl.warmup_epochs=1",
        "cl.ready=fixed",  # a step every epoch: this tests the augmentation, not readiness
        "cl.guard=false",  # 12 clips a class, 2 epochs: some class is never predicted yet
        "augment.weak.k=2",
        "model.vectorize=vmap",  # (auto loops on CPU) the audio front end batches under vmap
    )
    metrics = train(cfg)
    assert metrics["augment"]["modality"] == "audio" and metrics["cleaning"]["vectorized"]
    assert [h["epoch"] for h in metrics["augment"]["weak_history"]] == [1, 2]
    report = pd.read_csv(tmp_path / "class_report.csv")
    assert (report["weak"] >= 0).sum() >= 2 and set(report["weak"]) <= {-1, 1, 2}
    assert metrics["data"]["num_skipped_files"] == 0


@pytest.mark.slow
def test_digits_targeted_with_two_persistent_workers(tmp_path):
    cfg = cfg_for(
        tmp_path,
        "augment=targeted",
        "model=mlp",
        "data.num_workers=2",
        "trainer.max_epochs=3",
        "cl.warmup_epochs=1",
        "cl.ready=fixed",
        "augment.weak.k=1",
        "augment.oversample=3",
    )
    metrics = train(cfg)
    hist = metrics["augment"]["weak_history"]
    assert len(hist) == 3 and all(len(h["weak"]) == 1 for h in hist)
    report = pd.read_csv(tmp_path / "class_report.csv")
    first = {int(r["class"]): int(r["weak"]) for _, r in report.iterrows() if r["weak"] >= 0}
    assert first[hist[0]["weak"][0]] == 1  # epochs are 1-based
    assert metrics["test"]["accuracy"] > 0.5


def test_the_data_module_takes_an_augmenter_not_a_config():
    # the data layer does not import dcloop.augment: a config is built above it first
    with pytest.raises(ValueError, match=r"augment must be None or an augmenter.*from_config"):
        LabelNoiseDataModule("digits", augment={"kind": "targeted", "level": 0})
    with pytest.raises(ValueError, match=r"augment must be None.*got 3: it has no"):
        LabelNoiseDataModule("digits", augment=3)
