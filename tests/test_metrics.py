import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from dcloop.metrics import auroc, detection_metrics


def test_detection_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    noisy = rng.random(500) < 0.2
    flags = noisy ^ (rng.random(500) < 0.1)
    quality = np.where(noisy, rng.random(500) * 0.7, rng.random(500) * 0.7 + 0.3).round(2)
    m = detection_metrics(
        torch.from_numpy(flags), torch.from_numpy(noisy), torch.from_numpy(quality)
    )
    assert np.isclose(m["precision"], precision_score(noisy, flags))
    assert np.isclose(m["recall"], recall_score(noisy, flags))
    assert np.isclose(m["f1"], f1_score(noisy, flags))
    assert np.isclose(m["auroc"], roc_auc_score(noisy, -quality))  # ties (rounded) count half
    assert m["num_flagged"] == flags.sum() and m["num_noisy"] == noisy.sum()


def test_degenerate_cases():
    none = torch.zeros(4, dtype=torch.bool)
    m = detection_metrics(none, none)
    assert m["precision"] == 0 and m["recall"] == 0 and m["f1"] == 0
    assert np.isnan(auroc(torch.rand(4), none))
