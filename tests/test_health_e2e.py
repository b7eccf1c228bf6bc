"""Data health in a run: the OOF pass keeps held-out embeddings, and a run on an image folder
with a planted duplicate names it in data_issues/near_duplicates.csv and report.html."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dcloop.callbacks import ConfidentLearning, DataHealth, OOFCollector
from dcloop.models import FoldEnsemble
from dcloop.models.nets import MLP

from conftest import RUN_QUIET, compose_dcloop, fast_trainer

CLASSES = ("cat", "dog", "frog")


def test_oof_pass_keeps_held_out_embeddings_of_its_own_replica(blobs, tmp_path):
    net = MLP((8,), 3, hidden=(16,))
    model = FoldEnsemble.from_module(net, blobs.labels, num_folds=3)
    oof = OOFCollector()
    fast_trainer(tmp_path, [ConfidentLearning(oof=oof)], max_epochs=1).fit(model, blobs)
    assert oof.features is not None and oof.features.shape == (blobs.n, 16)
    params, buffers = model._stacked()
    row = 5
    k = int(model.samples.folds[row])
    one = ({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()})
    from dcloop.health import replica_outputs

    model.eval()
    _, f = replica_outputs(model._skeleton[0], one[0], one[1], blobs.x[row : row + 1])
    assert torch.allclose(oof.features[row], f[0], atol=1e-5)


def test_oof_pass_without_features_leaves_no_buffer(blobs, tmp_path):
    net = MLP((8,), 3, hidden=(16,))
    model = FoldEnsemble.from_module(net, blobs.labels, num_folds=3)
    oof = OOFCollector(keep_features=False)
    fast_trainer(tmp_path, [ConfidentLearning(oof=oof)], max_epochs=1).fit(model, blobs)
    assert oof.features is None


def test_data_health_options_are_checked():
    with pytest.raises(ValueError, match="health.metric"):
        DataHealth(metric="manhattan")
    with pytest.raises(ValueError, match=r"health.index must be one of .*'annoy'"):
        DataHealth(index="annoy")
    assert DataHealth.when(False) is None


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(24):
            base = np.zeros((16, 16, 3))
            base[..., c] = 0.6
            img = np.clip(base + rng.normal(0, 0.25, base.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    shutil.copy(root / "dog" / "3.png", root / "dog" / "3_copy.png")  # the planted duplicate
    return root


@pytest.mark.slow
def test_a_run_names_a_planted_duplicate(folder, tmp_path):
    run = tmp_path / "run"
    cfg = compose_dcloop(
        run,
        *RUN_QUIET,
        "data=folder",
        f"data.source.root={folder}",
        "data.source.image_size=16",
        "data.num_workers=0",
        "data.test_frac=0.2",
        "data.val_frac=0.0",
        "model=mlp",
        "folds=2",
        "trainer.max_epochs=2",
        "cl.warmup_epochs=1",
        "kept=ensemble",
        "callbacks.data_health.pixels=true",
    )
    from dcloop.train import train

    metrics = train(cfg)
    from dcloop.console import summarize

    line = summarize(run, metrics)  # the CLI's one health line
    assert re.search(r"\b1 near-duplicate pair\b|[02-9] near-duplicate pairs", line)
    assert re.search(r"outliers? \(by pixels\)", line)  # 16 px images: pixels, by default
    pairs = pd.read_csv(run / "data_issues" / "near_duplicates.csv")
    assert list(pairs.columns[:5]) == ["split_a", "source_a", "split_b", "source_b", "distance"]
    first = {pairs.loc[0, "source_a"], pairs.loc[0, "source_b"]}
    assert first == {str(folder / "dog" / "3.png"), str(folder / "dog" / "3_copy.png")}
    assert pairs["distance"].is_monotonic_increasing
    summary = json.loads((run / "data_issues" / "summary.json").read_text())
    assert {"outliers", "near_duplicate_pairs", "leakage", "test_only_patterns"} <= set(summary)
    for name in ("outliers", "underperforming_groups", "class_imbalance", "leakage", "test_only"):
        assert (run / "data_issues" / f"{name}.csv").exists(), name
    html = (run / "report.html").read_text()
    assert "Near-duplicates" in html and "3_copy.png" in html
    from dcloop.people.export import relabel_queue

    queue = relabel_queue(run, health=True)  # dcloop-export --health
    dup = pairs.loc[0]
    train_rows = {int(dup[f"index_{s}"]) for s in "ab" if dup[f"split_{s}"] == "train"}
    queued = dict(zip(queue["index"], queue["issue"], strict=True))
    assert train_rows and all("near_duplicate" in queued[i] for i in train_rows)
    assert "issue" not in relabel_queue(run).columns  # the plain queue is unchanged


def test_the_pixel_signal_flags_a_moved_copy_the_embedding_misses(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.nn.functional.avg_pool2d(torch.rand(40, 3, 36, 36, generator=g), 5, 1)
    train, test = imgs[:30], imgs[30:].clone()
    test[2] = torch.roll(train[7], shifts=(2, -1), dims=(1, 2)) * 0.8 + 0.1  # moved, darker
    cb = DataHealth(tmp_path, pixels=True, pixel_ratio=0.3, leakage_ratio=0.0)
    cb._images = {"train": [train], "test": [test]}
    emb_train, emb_test = torch.randn(30, 16, generator=g), torch.randn(10, 16, generator=g)
    cb._test_issues(
        None, emb_train, emb_test, [f"tr{i}" for i in range(30)], [f"te{i}" for i in range(10)]
    )
    leak = pd.read_csv(tmp_path / "data_issues" / "leakage.csv")
    assert leak[["source_a", "source_b", "signal"]].values.tolist() == [["te2", "tr7", "pixel"]]
    pairs = pd.read_csv(tmp_path / "data_issues" / "near_duplicates.csv")
    assert pairs[["split_a", "source_a", "source_b"]].values.tolist() == [["test", "te2", "tr7"]]


def test_the_pixel_signal_adds_a_moved_training_copy_to_near_duplicates(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.avg_pool2d(torch.rand(30, 3, 36, 36, generator=g), 5, 1)
    train[12] = torch.roll(train[4], shifts=(1, 2), dims=(1, 2)) * 1.2  # moved, brighter
    emb = torch.randn(30, 16, generator=g)  # an embedding that sees no pair at all
    labels = torch.arange(30) % 3
    probs = torch.full((30, 3), 1 / 3)
    sources = [f"tr{i}" for i in range(30)]
    plain = DataHealth(tmp_path / "plain", pixels=False)
    plain._train_issues(None, emb, labels, probs, sources)
    assert len(pd.read_csv(tmp_path / "plain" / "data_issues" / "near_duplicates.csv")) == 0
    cb = DataHealth(tmp_path / "px", pixels=True)
    cb._images = {"train": [train], "test": []}
    cb._train_issues(None, emb, labels, probs, sources)
    pairs = pd.read_csv(tmp_path / "px" / "data_issues" / "near_duplicates.csv")
    assert pairs[["split_a", "source_a", "split_b", "source_b"]].values.tolist() == [
        ["train", "tr4", "train", "tr12"]
    ]
    assert (
        json.loads((tmp_path / "px" / "data_issues" / "summary.json").read_text())[
            "near_duplicate_pairs"
        ]
        == 1
    )
    with pytest.raises(ValueError, match="health.pixel_duplicate_ratio"):
        DataHealth(pixel_duplicate_ratio=1.5)
