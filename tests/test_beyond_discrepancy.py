import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dcloop.beyond.cli import main as beyond_main
from dcloop.beyond.discrepancy import (
    discrepancy_report,
    domain_auc,
    embedding_maps,
    find_test_only_patterns,
    penultimate,
    replica_features,
)
from dcloop.models import MLP, FoldEnsemble, SmallCNN


def _shifted(seed=0, n=300, m=90, new=20, d=6):
    """Train and test from two shared blobs; the last ``new`` test points form a third blob."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0] * d, [6.0] * d])
    train = centers[rng.integers(0, 2, n)] + rng.normal(size=(n, d))
    test = centers[rng.integers(0, 2, m)] + rng.normal(size=(m, d))
    test[-new:] = np.r_[[-6.0, 6.0], [0.0] * (d - 2)] + 0.5 * rng.normal(size=(new, d))
    return train, test


def test_test_cluster_absent_from_train_is_found():
    train, test = _shifted()
    table, summary = find_test_only_patterns(train, test, k=10)
    flagged = set(table.loc[table["flagged"], "test_index"])
    new = set(range(70, 90))
    assert len(flagged & new) >= 18 and len(flagged - new) <= 2
    assert summary["pattern_sizes"][0] >= 18  # the new blob is one pattern, the largest
    assert set(table.loc[table["pattern"] == 0, "test_index"]) <= new
    assert table.loc[0, "flagged"] and table.loc[0, "pattern"] == 0  # flagged first


def test_iid_test_set_flags_little_and_auc_near_half():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(300, 6)), rng.normal(size=(90, 6))
    table, summary = find_test_only_patterns(train, test, k=10)
    assert summary["num_flagged"] <= 2
    assert summary["base_rate"] == pytest.approx(89 / 389)
    auc = domain_auc(train, test)
    assert 0.35 <= auc["logistic"] <= 0.65 and 0.35 <= auc["knn"] <= 0.65
    shifted = domain_auc(*_shifted())
    assert shifted["knn"] >= 0.6 and shifted["knn"] > auc["knn"]
    far = domain_auc(train, test + 3.0)
    assert far["logistic"] >= 0.95


def test_bad_embeddings_are_named():
    with pytest.raises(ValueError, match="same width D; got 6 \\(train\\) and 5 \\(test\\)"):
        find_test_only_patterns(np.zeros((10, 6)), np.zeros((10, 5)))
    with pytest.raises(ValueError, match="2-D"):
        domain_auc(np.zeros(10), np.zeros((10, 2)))


def test_penultimate_of_the_builtin_nets_matches_their_forward():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 8, 8)
    for net in (MLP((1, 8, 8), 4), SmallCNN(1, 4, width=8)):
        net.eval()
        last = net[-1] if isinstance(net, MLP) else net.head[-1]
        emb = net.embed(x)
        assert torch.allclose(last(emb), net(x), atol=1e-6)
        assert torch.allclose(penultimate(net, x), emb)
    # a network without embed(): the input of its last Linear, through a hook
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 7), nn.Tanh(), nn.Linear(7, 3))
    assert torch.allclose(penultimate(plain, x), torch.tanh(plain[1](x.flatten(1))))


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_replica_features_are_the_mean_of_each_replica(vectorize):
    labels = np.arange(40) % 4
    model = FoldEnsemble(
        partial(MLP, (1, 8, 8), 4, hidden=(16, 8)), labels, num_folds=3, vectorize=vectorize
    )
    x = torch.randn(40, 1, 8, 8)
    loader = [(x[:25], None, None), (x[25:], None, None)]
    feats = replica_features(model, loader)
    params, buffers = model._stacked()
    expected = []
    for k in range(3):
        net = MLP((1, 8, 8), 4, hidden=(16, 8))
        net.load_state_dict({n: p[k] for n, p in params.items()})
        expected.append(net.embed(x).detach())
    assert feats.shape == (40, 8)
    assert np.allclose(feats, torch.stack(expected).mean(0).numpy(), atol=1e-5)
    cat = replica_features(model, loader, combine="concat")
    assert cat.shape == (40, 24)
    assert np.allclose(cat[:, 8:16], expected[1].numpy(), atol=1e-5)


def test_report_files_and_tsne_map(tmp_path):
    train, test = _shifted(n=150, m=50, new=12)
    res = discrepancy_report(
        train, test, tmp_path, maps=["tsne"], test_sources=[f"t{i}" for i in range(50)]
    )
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "discrepancy.json").read_text())
    assert saved["test_only"]["num_flagged"] == res["test_only"]["num_flagged"] >= 10
    csv = pd.read_csv(tmp_path / "test_only_patterns.csv")
    assert len(set(csv["source"]) & {f"t{i}" for i in range(38, 50)}) >= 10
    assert csv["flagged"].all() and len(csv) == res["test_only"]["num_flagged"]
    # fewer samples than the 50 PCA dimensions used before the map (a tiny run), subsampled
    rng = np.random.default_rng(0)
    tiny = embedding_maps(
        rng.random((30, 128)),
        rng.random((10, 128)),
        tmp_path / "t",
        methods=["tsne"],
        max_points=25,
    )
    assert tiny["tsne"].exists()


def test_cli_discrepancy_on_npy(tmp_path, capsys):
    train, test = _shifted()
    np.save(tmp_path / "a.npy", train)
    np.save(tmp_path / "b.npy", test)
    assert (
        beyond_main(
            [
                "discrepancy",
                "--train",
                str(tmp_path / "a.npy"),
                "--test",
                str(tmp_path / "b.npy"),
                "--no-maps",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "domain AUC" in out and "pattern" in out
    assert (tmp_path / "o" / "test_only_patterns.csv").exists()
    with pytest.raises(SystemExit, match="2"):
        beyond_main(["discrepancy", "--run-dir", str(tmp_path)])
    assert "discrepancy=true" in capsys.readouterr().err


@pytest.mark.slow
def test_discrepancy_in_the_loop(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import dcloop
    from dcloop.train import train

    GlobalHydra.instance().clear()
    conf = str(Path(dcloop.__file__).parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={tmp_path}",
                "logger=none",
                "checkpoint=false",
                "trainer.enable_progress_bar=false",
                "trainer.max_epochs=2",
                "cl.warmup_epochs=1",
                "folds=3",
                "model=mlp",
                "discrepancy=true",
            ],
        )
    train(cfg)
    d = tmp_path / "discrepancy"
    for name in (
        "umap.png",
        "tsne.png",
        "discrepancy.json",
        "test_only_patterns.csv",
        "train_embeddings.npy",
        "test_embeddings.npy",
    ):
        assert (d / name).exists(), name
    res = json.loads((d / "discrepancy.json").read_text())
    emb = np.load(d / "train_embeddings.npy")
    assert emb.shape[0] == res["num_train"]
    assert res["num_test"] == len(np.load(d / "test_embeddings.npy"))
    assert 0.3 <= res["domain_auc"]["logistic"] <= 0.8  # digits train/test are one distribution


def test_discrepancy_without_a_test_split_fails_before_training(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import dcloop
    from dcloop.train import train

    GlobalHydra.instance().clear()
    conf = str(Path(dcloop.__file__).parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"output_dir={tmp_path}", "discrepancy=true", "data.test_frac=0.0"]
            + ["logger=none", "trainer.enable_progress_bar=false"],
        )
    with pytest.raises(ValueError, match="test split has 0 sample"):
        train(cfg)  # the Discrepancy callback's setup, before the first epoch
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "oof_probs.npy").exists()


def test_domain_auc_subsample_keeps_both_domains():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(2000, 3)), rng.normal(size=(3, 3)) + 5.0
    auc = domain_auc(train, test, max_samples=500, folds=3)  # uniform subsampling drops test
    assert auc["logistic"] > 0.9  # the 3 test points are far away: clearly separable
