import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from dcloop.data import AudioFolder, AudioSynth, FileDataset, ImageFolder, LabelNoiseDataModule
from dcloop.data.audio import (
    SYNTH_CLASS_NAMES,
    AudioReader,
    audio_folder,
    read_audio,
    synthetic_digits,
)


def test_synthetic_digits_are_deterministic_and_in_range():
    a = synthetic_digits(num_per_class=3, clip_seconds=0.5, seed=1)
    b = synthetic_digits(num_per_class=3, clip_seconds=0.5, seed=1)
    c = synthetic_digits(num_per_class=3, clip_seconds=0.5, seed=2)
    assert a.x.shape == (30, 1, 4000) and a.x.dtype == torch.float32
    assert a.x.abs().max() <= 1.0 and a.x.abs().max() > 0.2
    assert a.x.numpy().tobytes() == b.x.numpy().tobytes()
    assert not torch.equal(a.x, c.x)
    assert np.bincount(a.labels).tolist() == [3] * 10
    assert a.class_names == SYNTH_CLASS_NAMES and a.source(4) == "audio_synth:4"
    # classes differ in spectrum: mean spectra of two classes are far apart
    spec = torch.fft.rfft(a.x[:, 0]).abs()
    zero, two = spec[a.labels == 0].mean(0), spec[a.labels == 2].mean(0)
    assert torch.nn.functional.cosine_similarity(zero, two, dim=0) < 0.9


def wav(path, data, sr):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr)
    return path


@pytest.fixture
def sounds(tmp_path):
    root = tmp_path / "sounds"
    t = np.arange(4000) / 8000
    for k, name in enumerate(["no", "yes"]):
        for i in range(6):
            wav(
                root / name / f"{i}.wav",
                0.4 * np.sin(2 * np.pi * (300 + 400 * k + 10 * i) * t),
                8000,
            )
    stereo = np.stack([0.2 * np.sin(2 * np.pi * 500 * t[:2000])] * 2, axis=1)
    wav(root / "yes" / "stereo_16k.wav", np.repeat(stereo, 2, axis=0), 16000)  # 0.25 s, 16 kHz
    (root / "yes" / "notes.txt").write_text("not audio")
    return root


def test_audio_folder_reads_resamples_and_pads(sounds):
    ds, names = audio_folder(sounds, sample_rate=8000, clip_seconds=0.5)
    assert names == ["no", "yes"] and len(ds) == 13
    x, y, i = ds[ds.sources.index(str(sounds / "yes" / "stereo_16k.wav"))]
    assert x.shape == (1, 4000) and y == 1 and x.dtype == torch.float32
    assert x[0, :1900].abs().max() > 0.15 and x[0, 2100:].abs().max() == 0  # 0.25 s, then pad
    x0, y0, _ = ds[0]
    assert y0 == 0 and x0.shape == (1, 4000) and x0.abs().max() == pytest.approx(0.4, abs=1e-3)
    assert isinstance(ds.subset([0, 12]), FileDataset) and len(ds.subset([0, 12])) == 2
    assert ds.reader == AudioReader(8000, 4000)


def test_missing_root_empty_class_and_corrupt_file_name_the_path(sounds, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        audio_folder(tmp_path / "nowhere")
    (sounds / "maybe").mkdir()
    with pytest.raises(ValueError, match="'maybe'"):
        audio_folder(sounds)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(OSError, match="bad.wav"):
        read_audio(str(bad), 8000, 100)
    with pytest.raises(FileNotFoundError, match="gone.wav"):
        read_audio(str(tmp_path / "gone.wav"), 8000, 100)


def test_datamodule_bad_audio_file_error_or_skip(sounds, tmp_path):
    bad = sounds / "no" / "broken.wav"
    bad.write_bytes(b"not a wav file at all")
    kw = {"val_frac": 0.2, "test_frac": 0.2}
    with pytest.raises(ValueError, match="broken.wav") as err:
        LabelNoiseDataModule(AudioFolder(sounds, clip_seconds=0.5), **kw).setup()
    assert "on_bad_file=skip" in str(err.value)
    dm = LabelNoiseDataModule(AudioFolder(sounds, clip_seconds=0.5, on_bad_file="skip"), **kw)
    dm.setup()
    assert dm.skipped_files[0][0] == str(bad) and len(dm.skipped_files) == 1
    total = len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset)
    assert total == 13 and dm.input_shape == (1, 4000)
    assert type(dm.train_dataset).__name__ == "IndexedTensorDataset"  # decoded once (cache)
    dm.save(tmp_path / "run")
    skipped = pd.read_csv(tmp_path / "run" / "skipped_files.csv")
    assert skipped["path"].tolist() == [str(bad)]
    with pytest.raises(ValueError, match="on_bad_file"):
        AudioFolder(sounds, on_bad_file="ignore")


def test_datamodule_bad_image_file_error_or_skip(tmp_path):
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    (root / "b" / "9.png").write_bytes(b"this is not a png")
    kw = {"val_frac": 0.2, "test_frac": 0.2}
    with pytest.raises(ValueError, match="9.png"):
        LabelNoiseDataModule(ImageFolder(root, mode="L"), **kw).setup()
    dm = LabelNoiseDataModule(ImageFolder(root, mode="L", on_bad_file="skip"), **kw)
    dm.setup()
    assert [p for p, _ in dm.skipped_files] == [str(root / "b" / "9.png")]
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 10


def test_synthetic_source_through_the_datamodule_with_noise():
    dm = LabelNoiseDataModule(
        AudioSynth(num_per_class=8, clip_seconds=0.5),
        noise={"kind": "symmetric", "rate": 0.25},
        seed=0,
    )
    dm.setup()
    assert dm.num_classes == 10 and dm.input_shape == (1, 4000)
    assert dm.is_noisy.mean() == pytest.approx(0.25, abs=0.05)
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 4000) and torch.equal(y, torch.as_tensor(dm.given_labels)[index])
    with pytest.raises(TypeError, match="rate"):
        AudioSynth(rate=8000)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"num_per_class": 3.0}, "num_per_class must be an integer >= 1; got num_per_class=3.0"),
        ({"sample_rate": None}, "sample_rate must be an integer >= 1; got sample_rate=None"),
        ({"synth_seed": "a"}, "synth_seed must be an integer >= 0"),
        ({"clip_seconds": float("inf")}, r"clip_seconds must be a number in \(0, 3600\)"),
        ({"clip_seconds": 0.0002}, "need at least 1600 samples"),
    ],
)
def test_bad_audio_options_are_named(options, words):
    from dcloop.data.audio import audio_options

    with pytest.raises(ValueError, match=words):
        audio_options(options)
