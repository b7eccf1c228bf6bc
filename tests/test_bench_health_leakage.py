"""scripts/bench_health_leakage.py: the missed true pairs it lists (constructed images)."""

import numpy as np
import torch

from conftest import load_script


def test_missed_pairs_lists_wrong_picks_and_pairs_below_the_cutoff(tmp_path):
    mod = load_script("bench_health_leakage")
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (4, 3, 32, 32), generator=g).float()
    test = torch.randint(0, 256, (4, 3, 32, 32), generator=g).float()
    # test 0 -> train 0 found at rank 1; test 1 -> train 1, but the signal picked train 2
    # (a copy of train 1); test 2 -> train 3, right pick but ranked after two false pairs
    train[2] = train[1] + 1.0
    truth = {(0, 0): 1, (1, 1): 1, (2, 3): 2}
    pick = np.array([0, 2, 3, 1])
    score = np.array([0.1, 0.2, 0.9, 0.3])  # ranks: 0, 1, 3, 2
    rows = mod.missed_pairs(pick, score, truth, test, train, max_shift=3)
    # cutoff: precision 1/1 at rank 1, 1/2, 1/3, 2/4 -> recall at p >= 0.8 is test 0 alone
    assert [(r["test"], r["listed"], r["pick"], r["rank"]) for r in rows] == [
        (1, 1, 2, 2),
        (2, 3, 3, 4),
    ]
    assert rows[0]["d_listed_pick"] < 1e-3  # the pick is a copy of the listed image
    mod.montage(rows, test, train, tmp_path / "m.png")
    assert (tmp_path / "m.png").exists()
