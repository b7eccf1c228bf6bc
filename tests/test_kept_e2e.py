"""The kept model end to end (issue 21): a tiny run is saved, reloaded in a fresh process
and predicts its own test set exactly as the run did (the ensemble's mean softmax), for an
image, an audio and a text run; the reload imports no lightning, fold ensemble or callback."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dcloop.kept import load_model, replica_nets, save_kept_model
from dcloop.kept.cli import predict_main
from dcloop.train import _net, build

from conftest import RUN_QUIET, compose_dcloop

FORBIDDEN = ("lightning", "pytorch_lightning", "dcloop.models.fold_ensemble", "dcloop.callbacks")

#: Run in a fresh process: load, predict with the Python API, report what got imported.
RELOAD = """
import json, sys
import numpy as np
import dcloop
run, inputs, out, exported = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
model = dcloop.load_model(run, exported=exported)
df = model.predict(inputs, all_probs=True)
np.save(out, df[[f"prob_{c}" for c in model.class_names]].to_numpy())
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")
             or m.startswith(("dcloop.models.fold_ensemble", "dcloop.callbacks")))
print(json.dumps({"sources": df["source"].tolist(), "imported": bad}))
"""


def tiny_run(tmp_path: Path, *overrides: str):
    """Fit a 2-epoch run; save its K replicas as the kept model; the run's own test
    predictions (the fold ensemble's mean softmax, as its test accuracy measures)."""
    cfg = compose_dcloop(tmp_path, *RUN_QUIET, "trainer.max_epochs=2", *overrides)
    run = build(cfg, tmp_path)
    run.cfg = cfg  # (for the tests' own network factories)
    run.trainer.fit(run.model, datamodule=run.dm)
    nets = replica_nets(run.model, _net(cfg, run.dm, replica=True))
    save_kept_model(
        tmp_path, cfg=cfg, dm=run.dm, nets=nets, kind="ensemble", name="ensemble",
        test_accuracy=0.5,
    )  # fmt: skip
    test = run.dm.test_dataset
    run.model.eval()
    with torch.no_grad():
        x = torch.stack([test[i][0] for i in range(len(test))])
        expected = run.model(x).float().softmax(-1).mean(0)
    return run, test, expected


def reload_and_predict(run_dir: Path, inputs: Path, exported: bool = False):
    out = run_dir / "probs.npy"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            str(run_dir),
            str(inputs),
            str(out),
            "1" if exported else "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported"] == [], f"loading imported {report['imported']}"
    return report["sources"], torch.from_numpy(np.load(out))


@pytest.mark.slow
def test_image_run_saved_reloaded_predicts_its_test_set(tmp_path, capsys):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for k, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(20):
            arr = rng.integers(0, 90, (12, 12, 3)).astype(np.uint8)
            arr[..., k] += 120
            Image.fromarray(arr).save(root / name / f"{i}.png")
    run_dir = tmp_path / "run"
    run, test, expected = tiny_run(
        run_dir,
        "data=folder",
        f"data.source.root={root}",
        "data.source.image_size=8",
        "data.num_workers=0",
        "model=cnn",
        "folds=3",
    )
    every = replica_nets(run.model, _net(run.cfg, run.dm, replica=True))
    one = replica_nets(run.model, _net(run.cfg, run.dm, replica=True), only=2)  # a student's start
    assert len(one) == 1
    pairs = zip(one[0].state_dict().values(), every[2].state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="only=3"):
        replica_nets(run.model, _net(run.cfg, run.dm, replica=True), only=3)
    spec = json.loads((run_dir / "model" / "model.json").read_text())
    assert spec["preprocess"] == {"kind": "image", "mode": "RGB", "size": [8, 8], "resize": "pil"}
    assert spec["kind"] == "ensemble" and len(spec["members"]) == 3
    # a manifest of the test files, in the test set's order (12x12 files resized on read)
    manifest = tmp_path / "test.csv"
    pd.DataFrame({"path": test.sources}).to_csv(manifest, index=False)
    sources, probs = reload_and_predict(run_dir, manifest)
    assert sources == test.sources
    torch.testing.assert_close(probs.float(), expected, atol=1e-5, rtol=1e-4)
    # the exported program (torch.export) with each member's weights gives the same
    assert spec["exported"] == "export/net.pt2"
    df = load_model(run_dir, exported=True).predict(manifest, all_probs=True)
    probs = torch.tensor(df[[f"prob_{c}" for c in spec["class_names"]]].to_numpy())
    torch.testing.assert_close(probs.float(), expected, atol=1e-5, rtol=1e-4)
    # the command line: the same predictions in predictions.csv, one summary line
    out = tmp_path / "predictions.csv"
    assert predict_main([str(run_dir), str(manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(printed.strip().splitlines()) == 1 and f"{len(test)} inputs" in printed
    df = pd.read_csv(out)
    names = spec["class_names"]
    assert df["predicted"].tolist() == [names[i] for i in expected.argmax(-1).tolist()]
    np.testing.assert_allclose(df["probability"], expected.max(-1).values, atol=1e-5)


@pytest.mark.slow
def test_audio_run_saved_reloaded_predicts_its_test_set(tmp_path):
    import soundfile as sf

    run_dir = tmp_path / "run"
    run, test, expected = tiny_run(
        run_dir, "data=audio_synth", "data.source.num_per_class=12", "model=audio_cnn", "folds=3"
    )
    spec = json.loads((run_dir / "model" / "model.json").read_text())
    assert spec["preprocess"] == {"kind": "audio", "sample_rate": 8000, "num_samples": 6000}
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(len(test)):  # float WAV: the samples round-trip exactly
        sf.write(clips / f"{i:03d}.wav", test[i][0][0].numpy(), 8000, subtype="FLOAT")
    sources, probs = reload_and_predict(run_dir, clips)
    assert [Path(s).name for s in sources] == [f"{i:03d}.wav" for i in range(len(test))]
    torch.testing.assert_close(probs.float(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_text_run_saved_reloaded_predicts_its_test_set(tmp_path):
    run_dir = tmp_path / "run"
    run, test, expected = tiny_run(
        run_dir, "data=text_synth", "data.source.num_per_class=60", "model=text_bow", "folds=3"
    )
    spec = json.loads((run_dir / "model" / "model.json").read_text())
    assert spec["preprocess"]["kind"] == "text"
    assert spec["net"]["vocab_size"] == len(json.loads((run_dir / "model/vocab.json").read_text()))
    table = tmp_path / "texts.jsonl"
    table.write_text("".join(json.dumps({"text": t}) + "\n" for t in test.texts))
    sources, probs = reload_and_predict(run_dir, table)
    assert sources == [f"{table}:row {i}" for i in range(len(test))]
    torch.testing.assert_close(probs.float(), expected, atol=1e-5, rtol=1e-4)
    # raw texts through the Python API: the same
    df = load_model(run_dir).predict(texts=test.texts[:5], all_probs=True)
    got = torch.tensor(df[[f"prob_{c}" for c in spec["class_names"]]].to_numpy()).float()
    torch.testing.assert_close(got, expected[:5], atol=1e-5, rtol=1e-4)
