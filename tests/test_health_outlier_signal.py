"""Which rule fills outliers.csv: the data's own signal (pixels for images, token rarity for
text) by default, the embedding's kNN rule with ``outlier_signal="embedding"``; and the host
memory guard of the pixel signal."""

import json

import pandas as pd
import pytest
import torch

from dcloop.callbacks import DataHealth
from dcloop.callbacks.data_health import MIN_PIXEL_SIDE, HostInputs


def test_host_images_keeps_batches_within_its_limits():
    keep = HostInputs(max_bytes=4 * 3 * 16 * 16 * 4, min_side=16)
    keep.add(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    keep.add(torch.ones(2, 3, 16, 16))
    assert keep.dropped is None and len(keep) == 2 and keep[0].dtype == torch.float32
    keep.add(torch.ones(1, 3, 16, 16))  # one image past the budget: all dropped
    assert keep.dropped is not None and "MB" in keep.dropped and len(keep) == 0
    keep.add(torch.ones(1, 3, 16, 16))  # stays dropped
    assert len(keep) == 0
    small = HostInputs(max_bytes=1 << 30, min_side=16)
    small.add(torch.zeros(4, 1, 8, 8))  # the embedded digits' size
    assert small.dropped is not None and "8, 8" in small.dropped and len(small) == 0


def test_auto_pixels_keep_only_images_large_enough():
    assert DataHealth(pixels="auto")._keeper().min_side == MIN_PIXEL_SIDE
    assert DataHealth(pixels=True)._keeper().min_side == 1
    assert DataHealth(pixels=False)._keeper() is None


def _images_and_embedding():
    """40 images of 4 smooth patterns (+ small noise) and one pure-noise image (row 5); an
    embedding where row 9 is far from every other row and row 5 is ordinary."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    patterns = torch.stack(
        [
            ramp[None, :, None].expand(3, 32, 32),
            ramp[None, None, :].expand(3, 32, 32),
            1 - ramp[None, :, None].expand(3, 32, 32),
            (ramp[:, None] * ramp[None, :])[None].expand(3, 32, 32),
        ]
    )
    images = patterns[torch.arange(40) % 4] + 0.02 * torch.randn(40, 3, 32, 32, generator=g)
    images[5] = torch.rand(3, 32, 32, generator=g)
    emb = torch.randn(40, 8, generator=g) * 0.05 + torch.eye(8)[torch.arange(40) % 4]
    emb[9] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 5.0])
    return images, emb


@pytest.mark.parametrize("signal", ["auto", "embedding"])
def test_outliers_come_from_the_pixels_by_default(tmp_path, signal):
    images, emb = _images_and_embedding()
    labels = torch.arange(40) % 4
    probs = torch.full((40, 4), 0.25)
    cb = DataHealth(tmp_path, pixels="auto", outlier_signal=signal)
    cb._images = {"train": [images], "test": []}
    cb._train_issues(None, emb, labels, probs, [f"img{i}" for i in range(40)])
    out = pd.read_csv(tmp_path / "data_issues" / "outliers.csv")
    summary = json.loads((tmp_path / "data_issues" / "summary.json").read_text())
    if signal == "auto":
        assert out.loc[0, "source"] == "img5"  # the noise image, by its pixels
        assert "img9" not in set(out["source"])  # far in the embedding only: not flagged
        assert list(out.columns) == ["index", "source", "score", "pixels", "signal"]
        assert out.loc[0, "signal"] in ("pixels", "both")
        assert summary["outlier_signal"] == "pixels" and summary["pixel_outliers"] >= 1
    else:
        assert out.loc[0, "source"] == "img9"  # the embedding's rule, as before
        assert list(out.columns) == ["index", "source", "score"]
        assert summary["outlier_signal"] == "embedding"
    assert summary["outliers"] == len(out)


def test_without_kept_inputs_auto_falls_back_to_the_embedding(tmp_path):
    _, emb = _images_and_embedding()
    cb = DataHealth(tmp_path, pixels="auto")  # no images kept (e.g. audio, or too small)
    cb._train_issues(
        None, emb, torch.arange(40) % 4, torch.full((40, 4), 0.25), [f"r{i}" for i in range(40)]
    )
    out = pd.read_csv(tmp_path / "data_issues" / "outliers.csv")
    assert out.loc[0, "source"] == "r9"
    summary = json.loads((tmp_path / "data_issues" / "summary.json").read_text())
    assert summary["outlier_signal"] == "embedding"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"pixels": "sometimes"}, "health.pixels"),
        ({"pixels": 2}, "health.pixels"),
        ({"outlier_signal": "pixels"}, "health.outlier_signal"),
    ],
)
def test_bad_options_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataHealth(**kwargs)


def test_a_skipped_pixel_signal_is_logged_by_how_much_it_was_asked_for(caplog):
    small = HostInputs(max_bytes=1 << 30, min_side=MIN_PIXEL_SIDE)
    small.add(torch.zeros(2, 1, 8, 8))
    full = HostInputs(max_bytes=16, min_side=1)
    full.add(torch.zeros(2, 3, 16, 16))
    with caplog.at_level("DEBUG", logger="dcloop.callbacks.data_health"):
        assert DataHealth(pixels="auto")._kept_inputs(small, "training") == []
        assert DataHealth(pixels="auto")._kept_inputs(full, "training") == []
        assert DataHealth(pixels=True)._kept_inputs(full, "test") == []
    levels = [(r.levelname, "px" in r.getMessage()) for r in caplog.records]
    assert levels == [("DEBUG", True), ("INFO", False), ("WARNING", False)]
