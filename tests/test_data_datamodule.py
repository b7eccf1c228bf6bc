"""Tests for LabelNoiseDataModule."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dcloop.data import (
    CsvManifest,
    Digits,
    ImageFolder,
    LabelNoiseDataModule,
    Torchvision,
    check_item,
    decode_files,
    image_folder,
)
from dcloop.data.digits import load_digits_full
from dcloop.data.sources import legacy_source

NOISE = {"kind": "symmetric", "rate": 0.2}


@pytest.fixture(scope="module")
def dm():
    module = LabelNoiseDataModule(
        noise=NOISE, batch_size=100, eval_batch_size=300, train_transform=lambda x: x + 100.0
    )
    module.setup("fit")
    return module


def test_setup_is_idempotent(dm):
    train, noise = dm.train_dataset, dm.noise
    dm.setup("test")
    dm.setup()
    assert dm.train_dataset is train and dm.noise is noise


def test_attributes(dm):
    assert dm.num_classes == 10 and dm.class_names == [str(k) for k in range(10)]
    assert dm.num_train == len(dm.train_dataset) == dm.given_labels.shape[0]
    assert dm.input_shape == (1, 8, 8)
    assert dm.given_labels.dtype == np.int64 and dm.is_noisy.dtype == bool
    assert np.array_equal(dm.is_noisy, dm.given_labels != dm.true_labels)
    assert dm.has_ground_truth and dm.is_noisy.sum() > 0
    assert dm.source_of(0).startswith("digits:")


def test_train_loader_items_and_epoch_order(dm):
    loader = dm.train_dataloader()
    seen = []
    for x, y, idx in loader:
        assert x.dtype == torch.float32 and float(x.min()) >= 100.0  # augmented
        assert torch.equal(y, torch.as_tensor(dm.given_labels[idx.numpy()]))
        seen.append(idx)
    order0 = torch.cat(seen)
    assert sorted(order0.tolist()) == list(range(dm.num_train))
    assert order0.tolist() != list(range(dm.num_train))
    loader.sampler.set_epoch(1)
    order1 = torch.cat([b[2] for b in loader])
    assert order1.tolist() != order0.tolist()
    again = dm.train_dataloader()
    assert torch.cat([b[2] for b in again]).tolist() == order0.tolist()


def test_oof_loader_is_unshuffled_and_unaugmented(dm):
    batches = list(dm.oof_dataloader())
    assert len(batches[0][2]) == 300
    idx = torch.cat([b[2] for b in batches])
    assert idx.tolist() == list(range(dm.num_train))
    x = torch.cat([b[0] for b in batches])
    assert float(x.max()) <= 1.0
    y = torch.cat([b[1] for b in batches])
    assert np.array_equal(y.numpy(), dm.given_labels)


def test_noise_only_in_train(dm):
    full = load_digits_full()
    original = dict(zip(full.sources, full.labels.tolist(), strict=True))
    train_true = [original[s] for s in dm.train_dataset.sources]
    assert dm.true_labels.tolist() == train_true
    for ds in (dm.val_dataset, dm.test_dataset):
        assert ds.labels.tolist() == [original[s] for s in ds.sources]
    for loader, ds in (
        (dm.val_dataloader(), dm.val_dataset),
        (dm.test_dataloader(), dm.test_dataset),
    ):
        x, y, idx = next(iter(loader))
        check_item((x[0], int(y[0]), int(idx[0])))
        assert idx.tolist() == list(range(len(idx)))
        assert y.tolist() == ds.labels[: len(y)].tolist()


def test_clean_run_has_no_ground_truth():
    dm = LabelNoiseDataModule(noise={"kind": "none"})
    dm.setup()
    assert not dm.has_ground_truth and not dm.is_noisy.any()
    assert np.array_equal(dm.given_labels, dm.true_labels)


def test_save(dm, tmp_path):
    dm.save(tmp_path)
    df = pd.read_csv(tmp_path / "labels.csv")
    assert np.array_equal(df["given_label"], dm.given_labels)
    assert df["source"].tolist() == dm.train_dataset.sources
    assert (tmp_path / "noise_matrix_true.csv").exists()


def _tiny_tree(root, counts):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for k in range(n):
            Image.new("L", (5, 7), 20 * k).save(root / cls / f"{k}.png")


def test_folder_source_splits_and_noise(tmp_path):
    _tiny_tree(tmp_path, {"a": 10, "b": 10, "c": 10})
    dm = LabelNoiseDataModule(
        ImageFolder(tmp_path, image_size=4, mode="RGB"), noise={"kind": "asymmetric", "rate": 0.5}
    )
    dm.setup()
    assert dm.class_names == ["a", "b", "c"] and dm.input_shape == (3, 4, 4)
    sizes = len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset)
    assert sizes == 30 and dm.source_of(0).endswith(".png")
    assert dm.is_noisy.sum() > 0
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 4, 4)
    assert torch.equal(y, torch.as_tensor(dm.given_labels[idx.numpy()]))


def test_empty_class_is_named(tmp_path):
    _tiny_tree(tmp_path, {"a": 3})
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"a/{k}.png,{2 * (k % 2)}\n" for k in range(3)))
    dm = LabelNoiseDataModule(CsvManifest(tmp_path, manifest), val_frac=0.0, test_frac=0.0)
    with pytest.raises(ValueError, match=r"1 \('1'\)"):
        dm.setup()
    dm12 = LabelNoiseDataModule(num_classes=12)
    with pytest.raises(ValueError, match=r"10 \('10'\), 11 \('11'\)"):
        dm12.setup()


def test_digits_image_size():
    dm = LabelNoiseDataModule(Digits(image_size=16))
    dm.setup()
    assert dm.input_shape == (1, 16, 16)
    assert dm.test_dataset[0][0].shape == (1, 16, 16)


def test_constructor_errors(tmp_path):
    with pytest.raises(ValueError, match="digits.*audio_synth.*ImageFolder, CsvManifest"):
        LabelNoiseDataModule("imagenet")
    with pytest.raises(ValueError, match=r"source='folder' needs its files.*ImageFolder\(root"):
        LabelNoiseDataModule("folder")
    with pytest.raises(ValueError, match="needs root=<a folder with one sub-folder of images"):
        ImageFolder(None)
    with pytest.raises(ValueError, match="needs manifest="):
        CsvManifest(tmp_path, None)
    with pytest.raises(ValueError, match="flip"):
        LabelNoiseDataModule(noise={"kind": "flip"})
    with pytest.raises(ValueError, match="noise rate"):
        LabelNoiseDataModule(noise={"kind": "symmetric", "rate": 1.5})
    with pytest.raises(ValueError, match="batch_size"):
        LabelNoiseDataModule(batch_size=0)
    with pytest.raises(RuntimeError, match="setup"):
        _ = LabelNoiseDataModule().num_classes
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        LabelNoiseDataModule(Torchvision("cifar10", tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        LabelNoiseDataModule(ImageFolder(tmp_path / "missing_dir")).setup()


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(64, 10)
        self.epochs_seen = []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        if batch_idx == 0:
            self.epochs_seen.append(self.trainer.train_dataloader.sampler.epoch)
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_runs_under_lightning_and_epoch_is_set():
    dm = LabelNoiseDataModule(noise=NOISE, batch_size=256)
    model = _Tiny()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert model.epochs_seen == [0, 1]


def _loaded(dm, split):
    ds = getattr(dm, f"{split}_dataset")
    return torch.stack([ds[i][0] for i in range(len(ds))]), [dm.source_of(i) for i in range(3)]


def test_cache_decodes_once_and_gives_the_same_pixels(tmp_path):
    _tiny_tree(tmp_path, {"a": 10, "b": 10, "c": 10})
    kw = dict(noise=NOISE, seed=3)
    cached = LabelNoiseDataModule(ImageFolder(tmp_path, image_size=4), **kw)
    lazy = LabelNoiseDataModule(ImageFolder(tmp_path, image_size=4, cache=False), **kw)
    cached.setup()
    lazy.setup()
    assert type(cached.train_dataset).__name__ == "IndexedTensorDataset"
    assert type(lazy.train_dataset).__name__ == "FileDataset"
    for split in ("train", "val", "test"):
        (xc, sc), (xl, sl) = _loaded(cached, split), _loaded(lazy, split)
        assert torch.equal(xc, xl) and sc == sl  # bit-identical, same files
    assert np.array_equal(cached.given_labels, lazy.given_labels)
    with pytest.raises(ValueError, match="cache must be true or false"):
        ImageFolder(tmp_path, cache="yes")


def test_test_root_is_the_test_split_with_classes_mapped_by_name(tmp_path):
    _tiny_tree(tmp_path / "train", {"a": 10, "b": 10, "c": 10})
    _tiny_tree(tmp_path / "test", {"b": 4, "c": 2})  # a subset of the classes, in its own order
    dm = LabelNoiseDataModule(
        ImageFolder(tmp_path / "train", test_root=tmp_path / "test", image_size=4), val_frac=0.2
    )
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 30  # all of root: train + val
    assert len(dm.test_dataset) == 6
    labels = [int(dm.test_dataset[i][1]) for i in range(6)]
    assert sorted(labels) == [1, 1, 1, 1, 2, 2]  # b -> 1, c -> 2 as in the training folder
    _tiny_tree(tmp_path / "bad", {"z": 2})
    bad = LabelNoiseDataModule(ImageFolder(tmp_path / "train", test_root=tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"has class\(es\) \['z'\] that the training data"):
        bad.setup()


def test_asymmetric_noise_with_a_class_mapping_by_name(tmp_path):
    _tiny_tree(tmp_path, {"cat": 10, "dog": 10, "truck": 10})
    noise = {"kind": "asymmetric", "rate": 0.4, "mapping": {"cat": "dog", "dog": "cat"}}
    dm = LabelNoiseDataModule(ImageFolder(tmp_path), noise=noise, val_frac=0.0, test_frac=0.0)
    dm.setup()
    true, given = dm.true_labels, dm.given_labels
    assert (given[true == 2] == 2).all()  # truck is not in the mapping: clean
    assert set(given[(true == 0) & dm.is_noisy]) == {1} and set(
        given[(true == 1) & dm.is_noisy]
    ) == {0}
    assert dm.is_noisy.sum() == 8  # round(0.4 * 10) in each mapped class
    bad = {"kind": "asymmetric", "rate": 0.4, "mapping": {"cat": "horse"}}
    dm = LabelNoiseDataModule(ImageFolder(tmp_path), noise=bad, val_frac=0.0, test_frac=0.0)
    with pytest.raises(ValueError, match="noise mapping names class 'horse'"):
        dm.setup()


class _TokenSource:
    """A source object: token-id inputs, its own split, net keywords for the model."""

    name = "tokens"

    def __init__(self, n: int = 60) -> None:
        self.n = n
        self.net_kwargs: dict = {}

    def load(self, *, seed, val_frac, test_frac):
        from dcloop.data import IndexedTensorDataset

        g = torch.Generator().manual_seed(seed)
        x = torch.randint(1, 50, (self.n, 7), generator=g)
        y = np.arange(self.n) % 3
        ds = IndexedTensorDataset(x, y, sources=[f"row:{i}" for i in range(self.n)])
        self.net_kwargs = {"vocab_size": 50, "pad_id": 0}
        idx = np.arange(self.n)
        return {
            "train": ds.subset(idx[:40]),
            "val": ds.subset(idx[40:50]),
            "test": ds.subset(idx[50:]),
        }, ["a", "b", "c"]


def test_source_object_loads_its_own_splits_and_gives_net_kwargs():
    dm = LabelNoiseDataModule(source=_TokenSource(), noise={"kind": "symmetric", "rate": 0.2})
    dm.setup()
    assert dm.source == "tokens" and dm.num_train == 40 and dm.num_classes == 3
    assert dm.net_kwargs == {"vocab_size": 50, "pad_id": 0}
    x, y, i = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.int64 and x.shape[1] == 7  # token ids are not turned into floats
    assert dm.source_of(0).startswith("row:")


def test_source_that_is_neither_name_nor_object_is_refused():
    with pytest.raises(ValueError, match="object with a str .name"):
        LabelNoiseDataModule(source=object())


def test_test_manifest_is_the_test_split_with_the_training_classes(tmp_path):
    _tiny_tree(tmp_path, {"a": 10, "b": 10})
    train = tmp_path / "train.csv"
    train.write_text("path,label\n" + "".join(f"{c}/{k}.png,{c}\n" for c in "ab" for k in range(8)))
    test = tmp_path / "test.csv"
    test.write_text("path,label\n" + "".join(f"b/{k}.png,b\n" for k in (8, 9)))  # only class b
    dm = LabelNoiseDataModule(CsvManifest(tmp_path, train, test_manifest=test), val_frac=0.25)
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 16 and len(dm.test_dataset) == 2
    assert [dm.test_dataset[i][1] for i in range(2)] == [1, 1]  # b is class 1 of the training data


def test_decode_keeps_files_lazy_when_they_do_not_fit(tmp_path, caplog):
    _tiny_tree(tmp_path, {"a": 3, "b": 3})
    ds, _ = image_folder(tmp_path, image_size=4)
    cached, skipped = decode_files(ds)
    assert type(cached).__name__ == "IndexedTensorDataset" and skipped == []
    with caplog.at_level("WARNING"):
        lazy, _ = decode_files(ds, max_bytes=6 * 3 * 4 * 4 - 1)  # one byte short
    assert lazy is ds and "memory budget" in caplog.text
    assert torch.equal(cached[5][0], lazy[5][0])


def test_run_folders_from_before_source_objects_still_load(tmp_path):
    _tiny_tree(tmp_path, {"a": 4, "b": 4})
    old = {"source": "folder", "root": str(tmp_path), "image_size": 4, "mode": "L", "seed": 1}
    src, rest = legacy_source(old["source"], old)
    assert isinstance(src, ImageFolder) and src.image_size == (4, 4) and src.mode == "L"
    assert rest == {"seed": 1}
    dm = LabelNoiseDataModule(src, val_frac=0.0, test_frac=0.0, **rest)
    dm.setup()
    assert dm.num_train == 8 and dm.input_shape == (1, 4, 4)
