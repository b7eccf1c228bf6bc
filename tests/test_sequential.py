from functools import partial

import lightning as L
import numpy as np
import pytest
from torch.utils.data import DataLoader

from dcloop.callbacks import OOFCollector
from dcloop.cl import verdict
from dcloop.data import LabelNoiseDataModule
from dcloop.models import MLP, Classifier
from dcloop.scale.sequential import fold_subsets, merge_shards


@pytest.mark.slow
def test_sequential_folds_with_a_plain_module_cover_every_index(tmp_path):
    # The README's "your own LightningModule" recipe, on digits with 20 % noise.
    dm = LabelNoiseDataModule("digits", noise={"kind": "symmetric", "rate": 0.2}, seed=0)
    dm.setup()
    n, c, k = dm.num_train, dm.num_classes, 3
    shards = []
    for fold in range(k):
        train_part, held_out = fold_subsets(dm.train_dataset, dm.given_labels, k, fold)
        oof = OOFCollector(
            n, c, dataloader=DataLoader(held_out, batch_size=256), require_full_coverage=False
        )
        trainer = L.Trainer(
            max_epochs=8,
            callbacks=[oof],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        module = Classifier(partial(MLP, (1, 8, 8), c), c, seed=fold)
        trainer.fit(module, DataLoader(train_part, batch_size=64, shuffle=True))
        shards.append(oof.save_shard(tmp_path / f"oof_fold{fold}.npz"))
    probs = merge_shards(shards, n)
    assert probs.shape == (n, c) and np.allclose(probs.sum(1), 1, atol=1e-4)
    res = verdict(dm.given_labels, probs)
    flags = res.flags.numpy()
    precision = (flags & dm.is_noisy).sum() / flags.sum()
    recall = (flags & dm.is_noisy).sum() / dm.is_noisy.sum()
    assert precision > 0.7 and recall > 0.7, (precision, recall)


def test_merge_checks_coverage():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="in no shard"):
        merge_shards([(np.array([0, 1]), p)], 3)
    with pytest.raises(ValueError, match="already covered"):
        merge_shards([(np.array([0, 1]), p), (np.array([1, 2]), p)], 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        merge_shards([(np.array([0, 5]), p)], 3)
    out = merge_shards([(np.array([2, 0]), p), (np.array([1]), p[:1])], 3)
    assert out.shape == (3, 3)


def test_fold_subsets_are_disjoint_and_complete():
    labels = np.repeat(np.arange(3), 10)
    data = list(range(30))
    seen = []
    for f in range(5):
        train_part, held = fold_subsets(data, labels, 5, f)
        assert set(train_part.indices).isdisjoint(held.indices)
        seen += held.indices
    assert sorted(seen) == list(range(30))
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 5\); got fold=5"):
        fold_subsets(data, labels, 5, 5)
