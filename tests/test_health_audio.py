"""The audio signal of data health (:mod:`dcloop.health.audio`): outliers from log-mel
spectrograms, copies and leakage from waveforms, and the callback using them on audio runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dcloop.callbacks import DataHealth
from dcloop.callbacks.data_health import HostInputs
from dcloop.errors import UserInputError
from dcloop.health import audio_leakage, audio_signature, find_outliers, waveform_distance

SR = 8000


def _voiced(n: int, seed: int = 0, t: int = 4000) -> torch.Tensor:
    """``(n, t)`` clips of a voiced sound: three harmonics of a distinct f0 (100-250 Hz)
    under a Hann envelope of 0.15-0.3 s at a random start, zero padded."""
    g = np.random.default_rng(seed)
    out = np.zeros((n, t), np.float32)
    for i, f0 in enumerate(np.linspace(100, 250, n)):
        size = int(SR * g.uniform(0.15, 0.3))
        start = int(g.integers(0, t - size))
        s = np.arange(size) / SR
        wave = sum(g.uniform(0.2, 1) * np.sin(2 * np.pi * h * f0 * s) for h in (1, 2, 3))
        out[i, start : start + size] = 0.3 * np.hanning(size) * wave / 3
    return torch.from_numpy(out)


def _copy(x: torch.Tensor, move: int, gain: float, seed: int = 1) -> torch.Tensor:
    """``x`` moved later by ``move`` samples, at ``gain``, with noise 30 dB below it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(move), x[: x.shape[0] - move]]) * gain
    return y + 10 ** (-30 / 20) * y.pow(2).mean().sqrt() * torch.randn(y.shape, generator=g)


def test_waveform_distance_ignores_moves_gain_and_polarity():
    clips = _voiced(6)
    ref = torch.stack([_copy(clips[0], 240, 0.7), -clips[1], clips[2], torch.zeros(4000)])
    d = waveform_distance(clips[:3], ref, torch.tensor([[0, 2], [1, 2], [3, 0]]))
    assert d[0, 0] < 0.01 and d[1, 0] < 1e-4  # moved, quieter, noisy copy; inverted copy
    assert d[0, 1] > 0.3  # another clip
    assert d[2, 0] == 1.0  # silence matches nothing
    with pytest.raises(UserInputError, match=r"candidates must be \(M, k\)"):
        waveform_distance(clips[:3], ref, torch.tensor([[0, 1]]))
    with pytest.raises(UserInputError, match="index the 4 reference clips"):
        waveform_distance(clips[:1], ref, torch.tensor([[4]]))
    with pytest.raises(UserInputError, match="float clips"):
        waveform_distance(torch.zeros(2, 3, 4, 5), ref, torch.tensor([[0], [1]]))


def test_audio_leakage_finds_a_moved_copy_inside_a_set_and_across_sets():
    clips = _voiced(40)
    clips[7] = _copy(clips[3], move=300, gain=1.2)
    px = audio_leakage(clips[:, None], sample_rate=SR)
    copies = set((px.distance < 0.05).nonzero().flatten().tolist())
    assert copies == {3, 7}
    assert int(px.reference[7]) == 3 and int(px.reference[3]) == 7
    test = torch.stack([_copy(clips[20], 100, 0.9), _voiced(41, seed=5)[40]])
    cross = audio_leakage(test, clips, sample_rate=SR)
    assert int(cross.reference[0]) == 20 and cross.distance[0] < 0.05 < cross.distance[1]
    with pytest.raises(UserInputError, match="NaN"):
        audio_leakage(torch.full((5, 100), float("nan")), sample_rate=SR)


def test_audio_signature_flags_a_noise_clip_and_ignores_the_level():
    clips = _voiced(60)
    clips[11] = 0.05 * torch.randn(4000, generator=torch.Generator().manual_seed(3))
    sig = audio_signature(clips, sample_rate=SR)
    assert sig.shape == (60, 32 * 21)
    out = find_outliers(sig, metric="euclidean")
    assert int(out.score.argmax()) == 11 and bool(out.flags[11])
    assert torch.allclose(audio_signature(clips * 0.1, sample_rate=SR), sig, atol=1e-4)
    # a long clip is pooled to at most max_frames frames
    long = audio_signature(torch.randn(2, SR * 10), sample_rate=SR, max_frames=64)
    assert long.shape == (2, 32 * 64)


def test_host_images_keep_clips_when_asked_for_three_dimensions():
    keep = HostInputs(max_bytes=1 << 20, ndim=3)
    keep.add(torch.zeros(4, 1, 8000))  # no side limit for clips
    assert keep.dropped is None and len(keep) == 1
    keep.add(torch.zeros(40, 1, 8000))  # past 1 MB: dropped
    assert keep.dropped is not None and keep.dropped.startswith("clips past")


def test_the_callback_uses_the_clips_for_outliers_copies_and_leakage(tmp_path):
    g = torch.Generator().manual_seed(0)
    clips = _voiced(60)
    clips[11] = 0.05 * torch.randn(4000, generator=g)  # a noise clip
    clips[30] = _copy(clips[4], move=200, gain=0.8)  # a copy inside training
    train = clips[:, None]
    test = torch.stack([_copy(clips[50], 160, 1.1), _voiced(61, seed=9)[60]])[:, None]
    emb = torch.randn(60, 16, generator=g)  # an embedding that sees neither
    labels, probs = torch.arange(60) % 3, torch.full((60, 3), 1 / 3)
    sources = [f"tr{i}" for i in range(60)]
    cb = DataHealth(tmp_path)
    cb._rate = SR
    assert cb._keeper().ndim == 3
    cb._images = {"train": [train], "test": [test]}
    cb._train_issues(None, emb, labels, probs, sources)
    folder = tmp_path / "data_issues"
    out = pd.read_csv(folder / "outliers.csv")
    assert out.loc[0, "source"] == "tr11"
    assert list(out.columns) == ["index", "source", "score", "spectrogram", "signal"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["outlier_signal"] == "spectrogram" and summary["spectrogram_outliers"] >= 1
    pairs = pd.read_csv(folder / "near_duplicates.csv")
    assert pairs[["source_a", "source_b"]].values.tolist() == [["tr4", "tr30"]]
    emb_test = torch.randn(2, 16, generator=g)
    cb._test_issues(None, emb, emb_test, sources, ["te0", "te1"])
    leak = pd.read_csv(folder / "leakage.csv")
    assert leak[["source_a", "source_b", "signal"]].values.tolist() == [["te0", "tr50", "waveform"]]
    off = DataHealth(tmp_path / "off", audio=False)
    off._rate = SR
    assert off._keeper() is None


@pytest.mark.parametrize(
    "kwargs, name",
    [({"audio": "sometimes"}, "health.audio"), ({"audio_distance": 2.0}, "health.audio_distance")],
)
def test_bad_audio_options_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DataHealth(**kwargs)


@pytest.mark.slow
def test_an_audio_run_names_a_planted_copy_a_leaked_clip_and_the_noise_clip(tmp_path):
    import soundfile as sf

    from conftest import RUN_QUIET, compose_dcloop

    clips = _voiced(42, t=4000)

    def write(path, x):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.numpy(), SR, subtype="FLOAT")

    for i, x in enumerate(clips):  # 36 training clips, 6 test clips
        write(tmp_path / ("train" if i < 36 else "test") / f"c{i % 3}" / f"{i}.wav", x)
    train, test = tmp_path / "train", tmp_path / "test"
    write(train / "c1" / "4_copy.wav", _copy(clips[4], 240, 0.8))
    write(test / "c2" / "8_copy.wav", _copy(clips[8], 120, 1.1))
    write(train / "c2" / "noise.wav", 0.1 * torch.randn(4000, generator=torch.Generator()))
    run = tmp_path / "run"
    cfg = compose_dcloop(
        run,
        *RUN_QUIET,
        "data=audio_folder",
        f"data.source.root={train}",
        f"data.source.test_root={test}",
        "data.source.clip_seconds=0.5",
        "data.num_workers=0",
        "data.val_frac=0.0",
        "model=audio_cnn",
        "folds=2",
        "trainer.max_epochs=2",
        "cl.warmup_epochs=1",
        "kept=ensemble",
    )
    from dcloop.console import summarize
    from dcloop.train import train as run_dcloop

    line = summarize(run, run_dcloop(cfg))
    folder = run / "data_issues"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["outlier_signal"] == "spectrogram" and "(by spectrogram)" in line
    out = pd.read_csv(folder / "outliers.csv")
    assert out.loc[0, "source"] == str(train / "c2" / "noise.wav")
    pairs = pd.read_csv(folder / "near_duplicates.csv")
    named = [{r.source_a, r.source_b} for r in pairs.itertuples()]
    assert {str(train / "c1" / "4.wav"), str(train / "c1" / "4_copy.wav")} in named
    leak = pd.read_csv(folder / "leakage.csv")
    assert leak[["source_a", "source_b", "signal"]].values.tolist() == [
        [str(test / "c2" / "8_copy.wav"), str(train / "c2" / "8.wav"), "waveform"]
    ]
