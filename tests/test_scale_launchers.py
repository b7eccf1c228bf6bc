"""``dcloop -m mode=sequential fold=0,1`` through a real Hydra launcher (submitit_local)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.safety import CleaningPolicy, bound_flags


@pytest.mark.slow
def test_submitit_local_multirun_trains_every_fold_and_merges(tmp_path):
    exe = Path(sys.executable).parent / "dcloop"
    sweep = tmp_path / "multirun"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            str(exe),
            "-m",
            "hydra/launcher=submitit_local",
            "mode=sequential",
            "fold=0,1",
            "folds=2",
            "model=mlp",
            "trainer.max_epochs=2",
            "logger=none",
            "checkpoint=false",
            "report=false",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (group,) = sweep.glob("seq-*")  # both jobs wrote into one shared folder
    d = group / "round_0"
    assert sorted(p.name for p in d.glob("oof_fold*.npz")) == ["oof_fold0.npz", "oof_fold1.npz"]
    metrics = json.loads((d / "metrics.json").read_text())  # merged by the last fold to end
    assert metrics["cleaning"]["mode"] == "sequential" and metrics["cleaning"]["num_folds"] == 2
    assert metrics["detection"]["precision"] > 0.5  # 20 % injected noise; random gives 0.2
    probs = np.load(d / "oof_probs.npy")
    issues = pd.read_csv(d / "label_issues.csv").sort_values("index")
    assert len(issues) == probs.shape[0] and np.allclose(probs.sum(1), 1, atol=1e-4)
    labels = torch.as_tensor(issues["given_label"].to_numpy())
    folds = torch.as_tensor(np.load(d / "folds.npy"))
    direct = CleaningPolicy(calibrate="posterior").verdict(  # the default cl.calibrate
        labels, torch.from_numpy(probs), folds=folds
    )
    bounded = bound_flags(
        direct.flags, direct.quality, labels, probs.shape[1], max_class_frac=0.5, max_flag_frac=0.5
    )
    np.testing.assert_array_equal(issues["flagged"].to_numpy(), bounded.numpy())
