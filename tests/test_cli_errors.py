"""Bad input is one line, ``dcloop: error: <message>``, exit status 2; bugs keep a traceback.

A few cases run the ``dcloop`` command in a subprocess; the rest call the checking
functions and :func:`dcloop.errors.user_error_message` directly, which is what the
command line prints.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from dcloop._checks import check_resume_path, check_run_config
from dcloop.beyond.ner import read_conll
from dcloop.callbacks import ConfidentLearning
from dcloop.cli import exit_on_user_error
from dcloop.data import CsvManifest, LabelNoiseDataModule, csv_manifest, decode_files, image_folder
from dcloop.data.labelfile import read_label_file
from dcloop.errors import PREFIX, UserInputError, user_error_message
from dcloop.folds import check_num_folds
from dcloop.train import train

from conftest import RUN_QUIET, compose_dcloop

QUIET = [*RUN_QUIET, "report=false"]


def dcloop_cli(tmp_path, *overrides, env=None, multirun=False):
    """Run ``python -m dcloop`` (nothing trains: every case fails at its input)."""
    where = (
        f"hydra.sweep.dir={tmp_path / 'multi'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
    )
    return subprocess.run(
        [sys.executable, "-m", "dcloop", *(["-m"] if multirun else []), *overrides, *QUIET, where],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(res, *fragments):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert lines and lines[-1].startswith(PREFIX), res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "HYDRA_FULL_ERROR" not in res.stderr
    assert [ln for ln in lines if ln.startswith(PREFIX)] == [lines[-1]]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def message(fn, *args, **kwargs) -> str:
    """The one line the CLI would print for what ``fn(*args, **kwargs)`` raises."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    text = user_error_message(info.value)
    assert text is not None, f"{type(info.value).__name__} would keep its traceback: {info.value}"
    assert "\n" not in text
    return text


def cfg_for(tmp_path, *overrides):
    return compose_dcloop(tmp_path, *QUIET, *overrides)


def _png(path, value=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (value, 255 - value, 0)).save(path)


# ----------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_bad_folds_is_one_line_exit_2(tmp_path):
    assert_one_line(dcloop_cli(tmp_path, "folds=1"), "folds must be an integer >= 2", "folds=1")
    assert not (tmp_path / "oof_probs.npy").exists()


@pytest.mark.slow
def test_cli_corrupt_image_is_one_line_naming_it(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        for k in range(6):
            _png(root / cls / f"{k}.png", 30 * k)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    res = dcloop_cli(tmp_path, "data=folder", f"data.source.root={root}", "folds=2")
    assert_one_line(res, "cannot be read", "broken.jpg", "on_bad_file=skip")


@pytest.mark.slow
def test_cli_full_error_keeps_the_traceback(tmp_path):
    res = dcloop_cli(tmp_path, "trainer.max_epochs=0", env={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert "trainer.max_epochs must be an integer >= 1" in res.stderr
    assert PREFIX not in res.stderr


@pytest.mark.slow
def test_cli_multirun_stops_at_the_bad_job_with_one_line(tmp_path):
    res = dcloop_cli(tmp_path, "seed=abc", multirun=True)
    assert_one_line(res, "seed must be an integer", "seed='abc'")


# ------------------------------------------------------- what counts as bad input


def test_exit_on_user_error_prints_one_line_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        exit_on_user_error(UserInputError("folds must be >= 2;\n got 1"))
    assert info.value.code == 2
    assert capsys.readouterr().err == "dcloop: error: folds must be >= 2; got 1\n"
    exit_on_user_error(RuntimeError("a bug"))  # not bad input: returns, the caller re-raises
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    exit_on_user_error(UserInputError("x"))  # the full traceback was asked for
    assert capsys.readouterr().err == ""


def _numpy_value_error():
    np.zeros(3) + np.zeros(4)


def test_bugs_keep_their_traceback():
    for exc in (RuntimeError("CUDA error"), TypeError("bad"), KeyError("k")):
        assert user_error_message(exc) is None
    with pytest.raises(ValueError) as info:  # raised inside numpy: a bug, not input
        _numpy_value_error()
    assert user_error_message(info.value) is None


def test_hydra_instantiation_errors_are_unwrapped():
    bad_key = {"_target_": "dcloop.data.LabelNoiseDataModule", "no_such_option": 1}
    text = message(instantiate, bad_key)
    assert "unexpected keyword argument 'no_such_option'" in text
    text = message(instantiate, {"_target_": "dcloop.data.LabelNoiseDataModule", "source": "x"})
    assert "source must be one of" in text and "'x'" in text and "Error in call" not in text
    assert "no.such.Thing" in message(instantiate, {"_target_": "no.such.Thing"})
    trainer = {"_target_": "lightning.Trainer", "accelerator": "no_such_accelerator"}
    assert "no_such_accelerator" in message(instantiate, trainer)
    crash = {"_target_": "builtins.divmod", "_args_": [1, 0]}  # ZeroDivisionError: a bug
    with pytest.raises(Exception) as info:
        instantiate(crash)
    assert user_error_message(info.value) is None


# --------------------------------------------------------------- run settings (item 9)


def test_run_settings_are_checked_up_front(tmp_path):
    def check(**keys):
        check_run_config({"seed": 0, "folds": 5, "trainer": {"max_epochs": 3}, **keys})

    check()
    expected = "seed must be an integer in [0, 4294967295]; got seed='abc'"
    assert message(check, seed="abc") == expected
    assert "got seed=-1" in message(check, seed=-1)
    assert "folds must be an integer >= 2" in message(check, folds=1)
    assert "got folds=2.5" in message(check, folds=2.5)
    text = message(check, trainer={"max_epochs": 0})
    assert "trainer.max_epochs must be an integer >= 1" in text and "max_epochs=0" in text
    assert "rows must sum" not in text
    with pytest.raises(UserInputError, match="max_epochs=0"):  # train() checks before building
        train(cfg_for(tmp_path, "trainer.max_epochs=0"))
    assert not (tmp_path / "labels.csv").exists()


def test_mode_and_fold_are_named(tmp_path):
    assert "mode must be one of ['parallel', 'sequential']; got 'foo'" in message(
        train, cfg_for(tmp_path, "mode=foo")
    )
    assert "fold must be an integer in [0, 5)" in message(
        train, cfg_for(tmp_path, "mode=sequential", "fold=9")
    )


def test_confident_learning_option_is_named():
    text = message(ConfidentLearning, action="foo")
    assert "action must be one of" in text and "'foo'" in text


def test_truncated_or_missing_resume_checkpoint_is_named(tmp_path):
    import torch

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, ckpt)
    check_resume_path(ckpt)  # whole: fine
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    text = message(check_resume_path, ckpt)
    assert str(ckpt) in text and "not a readable checkpoint" in text
    assert "no such checkpoint" in message(check_resume_path, tmp_path / "gone.ckpt")
    assert "is not a file" in message(check_resume_path, tmp_path)
    check_resume_path("s3://bucket/last.ckpt")  # remote: Lightning's to read


def test_too_few_samples_for_k_folds_names_the_class():
    labels = np.repeat(np.arange(3), [20, 1, 15])
    text = message(check_num_folds, labels, 5, class_names=["cat", "dog", "eel"])
    assert "class 'dog' (id 1) has 1" in text
    assert "<= 1" not in text and "add samples" in text
    labels = np.repeat(np.arange(3), [20, 3, 4])
    text = message(check_num_folds, labels, 5)
    assert "class 1 has 3" in text and "1 more class(es)" in text and "at most 3 folds" in text


# ---------------------------------------------------------------- data files (item 8-10)


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(["path,label", *rows]) + "\n")
    return path


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    for k in range(8):
        _png(root / f"{k}.png", 20 * k)
    return root


def test_folder_errors_are_one_line(tmp_path, images):
    assert str(tmp_path / "nope") in message(image_folder, tmp_path / "nope")
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    _png(tmp_path / "tree" / "dog" / "1.png")
    assert "'cat'" in message(image_folder, tmp_path / "tree")
    (tmp_path / "tree" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds, _ = image_folder(tmp_path / "tree")
    assert "bad.jpg" in message(decode_files, ds)


def test_single_class_manifest_names_the_class(tmp_path, images):
    man = _manifest(tmp_path, [f"{k}.png,cat" for k in range(8)])
    dm = LabelNoiseDataModule(CsvManifest(images, man))
    text = message(dm.setup)
    assert "single class, 'cat'" in text and "at least 2 classes" in text
    assert "K=1" not in text and str(man) in text


def test_manifest_mixing_names_and_ids_is_an_error(tmp_path, images):
    man = _manifest(tmp_path, ["0.png,cat", "1.png,0", "2.png,dog", "3.png,1"])
    text = message(csv_manifest, images, man)
    assert "mixes class ids ('0', '1')" in text and "class names ('cat', 'dog')" in text


def test_manifest_duplicate_path_with_two_labels_is_an_error(tmp_path, images, caplog):
    man = _manifest(tmp_path, ["0.png,cat", "1.png,dog", "./0.png,dog"])
    text = message(csv_manifest, images, man)
    assert "0.png" in text and "'cat' (row 2)" in text and "'dog' (row 4," in text
    man = _manifest(tmp_path, ["0.png,cat", "1.png,dog", "0.png,cat"])
    ds, _ = csv_manifest(images, man)  # same label twice: a warning
    assert len(ds) == 3 and "more than once" in caplog.text


def test_unreadable_manifest_is_named(tmp_path, images):
    man = tmp_path / "manifest.csv"
    man.write_bytes(b"path,label\n\xff\xfe\xfa,cat\n")
    assert "not a readable CSV" in message(csv_manifest, images, man)


def test_label_file_weights(tmp_path):
    labels, names = np.array([0, 1, 0, 1]), ["cat", "dog"]
    p = tmp_path / "l.csv"
    p.write_text("index,label,weight\n0,0,0.5\n1,1,\n")
    assert read_label_file(p, labels, names).weights.tolist() == [0.5, 1.0, 1.0, 1.0]
    for value in ("nan", "NaN", "inf", "-0.5", "abc"):
        p.write_text(f"index,label,weight\n0,0,1\n2,0,{value}\n")
        text = message(read_label_file, p, labels, names)
        assert f"index 2 has '{value}'" in text and "weight must be a number in [0, 1]" in text
    p.write_text("index,label,weight\n" + "".join(f"{i},{labels[i]},0\n" for i in range(4)))
    assert "every weight is 0" in message(read_label_file, p, labels, names)


def test_conll_tag_outside_the_scheme_names_the_line(tmp_path):
    p = tmp_path / "a.conll"
    p.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn PER\n")
    text = message(read_conll, p)
    assert "line 5" in text and "'PER'" in text and "BIO/BIOES" in text
    for bad in ("I-", "X-PER", "b-per"):
        p.write_text(f"EU {bad}\n")
        assert f"{bad!r}" in message(read_conll, p)
    p.write_text("EU S-ORG\nrejects O\nGerman B-MISC\ncall E-MISC\n")
    assert read_conll(p).tags[0] == ["S-ORG", "O", "B-MISC", "E-MISC"]


def test_coco_errors_are_one_line(tmp_path):
    from dcloop.beyond.detection import coco_crops

    ann = tmp_path / "ann.json"
    ann.write_text("{not json")
    assert "not valid JSON" in message(coco_crops, tmp_path, ann)
    ann.write_text(json.dumps({"images": "oops", "annotations": [], "categories": []}))
    assert "'images'" in message(coco_crops, tmp_path, ann)


def test_sweeps_optimise_validation_accuracy_not_test():
    from omegaconf import OmegaConf

    from dcloop.cli import optimized_value

    metrics = {"val": {"accuracy": 0.81}, "test": {"accuracy": 0.99}, "detection": {"f1": 0.5}}
    assert optimized_value(OmegaConf.create({}), metrics) == 0.81
    assert optimized_value(OmegaConf.create({"optimized_metric": "detection/f1"}), metrics) == 0.5
    with pytest.raises(ValueError, match=r"optimized_metric='val/f2' is not in this run"):
        optimized_value(OmegaConf.create({"optimized_metric": "val/f2"}), metrics)


def test_a_flat_optim_override_on_a_shipped_model_names_its_new_key(capsys, tmp_path):
    from dcloop.cli import _check_moved_keys

    with pytest.raises(SystemExit) as exc:
        _check_moved_keys(["model=cnn", "model.optim.label_smoothing=0.0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("dcloop: error: model.optim.label_smoothing=0.0")
        and len(err.splitlines()) == 1
    )
    assert err.endswith("use model.loss.label_smoothing=0.0")
    _check_moved_keys(["model=my_own_flat_model", "model.optim.lr=0.1"])  # a user's config: passes
    _check_moved_keys(["model.optimizer.lr=0.1"])
