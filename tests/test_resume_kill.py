"""Resume after a real kill, run identity in checkpoints, atomic checkpoints, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dcloop.callbacks import ConfidentLearning, EpochCheckpoint, OOFCollector
from dcloop.models import MLP, FoldEnsemble
from dcloop.signals import exit_on_signal

from conftest import BlobsDataModule

ROOT = Path(__file__).resolve().parents[1]
RUN = ["trainer.max_epochs=6", "cl.warmup_epochs=2", "report=false"]
RUN += ["trainer.enable_progress_bar=false"]


# ---------------------------------------------------------------- in-process, fast
def blobs_model(dm, folds=4, seed=0):
    return FoldEnsemble(
        partial(MLP, (8,), 3, hidden=(16,)),
        dm.labels,
        num_folds=folds,
        seed=seed,
        true_labels=dm.true,
        lr=1e-2,
    )


class CheckpointAtEpochStart(L.Callback):
    """Records, at each epoch start, the epoch and weights held by last.ckpt."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer, pl_module):
        if self.path.exists():
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
            same = torch.equal(ckpt["state_dict"]["samples.weights"], pl_module.samples.weights)
            self.seen.append((trainer.current_epoch, ckpt["epoch"], same))


def fit_blobs(tmp_path, epochs=3, ckpt_path=None, folds=4, seed=0, extra=()):
    L.seed_everything(0)
    dm = BlobsDataModule()
    model = blobs_model(dm, folds=folds, seed=seed)
    ckpt = EpochCheckpoint(tmp_path / "checkpoints")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=[ckpt, OOFCollector(), ConfidentLearning(warmup_epochs=1), *extra],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, ckpt, trainer


def test_checkpoint_lands_after_every_epoch_with_the_cleaned_weights(tmp_path):
    # Listed first, EpochCheckpoint still runs after confident learning (Lightning moves
    # checkpoint callbacks last): each epoch starts with last.ckpt holding the previous
    # epoch and the weights confident learning set for this one.
    spy = CheckpointAtEpochStart(tmp_path / "checkpoints" / "last.ckpt")
    model, ckpt, _ = fit_blobs(tmp_path, epochs=4, extra=[spy])
    assert spy.seen == [(1, 0, True), (2, 1, True), (3, 2, True)]
    assert (model.samples.weights < 1).any()  # confident learning did prune something
    assert ckpt.saved_epoch == 3 and not list(ckpt.path.parent.glob("*.tmp"))


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    _, ckpt, trainer = fit_blobs(tmp_path, epochs=2)
    before = ckpt.path.read_bytes()

    def disk_full(path, weights_only=False):
        Path(path).write_bytes(before[:100])  # a partial write, then ENOSPC
        raise OSError(28, "No space left on device")

    trainer.save_checkpoint = disk_full
    with pytest.raises(OSError, match=r"could not write the checkpoint .*last\.ckpt"):
        ckpt.save(trainer)
    assert ckpt.path.read_bytes() == before
    assert not list(ckpt.path.parent.glob("*.tmp"))
    assert torch.load(ckpt.path, map_location="cpu", weights_only=True)["epoch"] == 1


def test_checkpoint_records_what_defines_the_run(tmp_path):
    model, ckpt, _ = fit_blobs(tmp_path, epochs=1)
    saved = torch.load(ckpt.path, map_location="cpu", weights_only=True)["dcloop_run"]
    assert {"seed", "folds", "num_samples", "num_classes", "labels", "net"} <= set(saved)
    assert saved["folds"] == 4 and saved["num_samples"] == 240 and saved["max_epochs"] == 1


@pytest.mark.parametrize(
    ("kw", "names"),
    [({"folds": 3}, r"folds: checkpoint 4, this run 3"), ({"seed": 1}, r"seed: checkpoint 0")],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, kw, names):
    _, ckpt, _ = fit_blobs(tmp_path / "a", epochs=1)
    # A different `folds` used to be a raw state_dict size-mismatch RuntimeError.
    with pytest.raises(ValueError, match=rf"comes from a different run \({names}") as err:
        fit_blobs(tmp_path / "b", epochs=2, ckpt_path=ckpt.path, **kw)
    assert str(ckpt.path) in str(err.value) and "this run" in str(err.value)


def test_old_checkpoint_without_run_entry_warns_and_resumes(tmp_path):
    _, ckpt, _ = fit_blobs(tmp_path / "a", epochs=1)
    old = torch.load(ckpt.path, map_location="cpu", weights_only=True)
    del old["dcloop_run"]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="no 'dcloop_run' entry"):
        _, _, trainer = fit_blobs(tmp_path / "b", epochs=2, ckpt_path=tmp_path / "old.ckpt")
    assert trainer.current_epoch == 2


def test_longer_resume_warns_that_it_cannot_match(tmp_path):
    _, ckpt, _ = fit_blobs(tmp_path / "a", epochs=1)
    with pytest.warns(UserWarning, match=r"max_epochs=1, this run has 2.*cosine"):
        fit_blobs(tmp_path / "b", epochs=2, ckpt_path=ckpt.path)


def fake_trainer(tmp_path, saved_epoch=1, resumed=None):
    ckpt = EpochCheckpoint(tmp_path)
    if saved_epoch >= 0:
        ckpt.path.write_bytes(b"x")
        ckpt.saved_epoch = saved_epoch
    return SimpleNamespace(
        callbacks=[ckpt], checkpoint_callback=ckpt, ckpt_path=resumed, is_global_zero=True
    )


def test_sigterm_and_ctrl_c_exit_non_zero_naming_the_checkpoint(tmp_path, caplog):
    trainer = fake_trainer(tmp_path)
    with pytest.raises(SystemExit) as stop, exit_on_signal(trainer):
        raise SIGTERMException()  # what Lightning raises after a SIGTERM (exit code 0)
    assert stop.value.code == 143
    assert f"resume={tmp_path.resolve() / 'last.ckpt'}" in caplog.text
    with pytest.raises(SystemExit) as stop, exit_on_signal(trainer):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # what Lightning does on Ctrl+C
    assert stop.value.code == 130
    with pytest.raises(SystemExit) as stop, exit_on_signal(trainer):
        sys.exit(3)  # anything else passes through
    assert stop.value.code == 3


def test_sigterm_before_any_checkpoint_says_so(tmp_path, caplog):
    with pytest.raises(SystemExit) as stop, exit_on_signal(fake_trainer(tmp_path, -1)):
        raise SIGTERMException()
    assert stop.value.code == 143 and "no checkpoint to resume from" in caplog.text


# ------------------------------------------------------- the CLI in a subprocess, slow
def dcloop(run_dir, *overrides):
    cmd = [sys.executable, "-m", "dcloop", *RUN, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def checkpoint_epoch(path):
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def stop_after_epoch(run_dir, epoch, sig, timeout=300):
    """Start a run; once last.ckpt holds ``epoch`` (0-based), send ``sig``."""
    proc = dcloop(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while not (ckpt.exists() and checkpoint_epoch(ckpt) >= epoch):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)  # last.ckpt is replaced atomically: always whole when it exists
    proc.send_signal(sig)
    rc, out = finish(proc)
    return rc, out, ckpt


def metrics_of(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    metrics.pop("timing")  # seconds per phase: differ run to run
    metrics.pop("cost")  # seconds too
    return metrics


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    rc, out = finish(dcloop(run_dir))
    assert rc == 0, out[-3000:]
    return run_dir


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_flags_and_metrics(tmp_path, uninterrupted):
    killed, resumed = tmp_path / "killed", tmp_path / "resumed"
    rc, out, ckpt = stop_after_epoch(killed, 2, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()  # killed inside fit
    done = checkpoint_epoch(ckpt)
    assert 2 <= done < 5
    rc, out = finish(dcloop(resumed, f"resume={ckpt}"))
    assert rc == 0, out[-3000:]
    assert (resumed / "label_issues.csv").read_bytes() == (
        uninterrupted / "label_issues.csv"
    ).read_bytes()
    assert metrics_of(resumed) == metrics_of(uninterrupted)
    np.testing.assert_array_equal(
        np.load(resumed / "oof_probs.npy"), np.load(uninterrupted / "oof_probs.npy")
    )
    # Per-epoch metrics of the epochs the resumed run trained: the same rows.
    logged = pd.read_csv(resumed / "logs" / "metrics.csv")
    full = pd.read_csv(uninterrupted / "logs" / "metrics.csv")
    assert logged["epoch"].min() == done + 1
    full = full[full["epoch"] >= done + 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(logged, full[logged.columns])


@pytest.mark.slow
def test_resume_with_no_epoch_left_keeps_the_flag_epochs(tmp_path, uninterrupted):
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    rc, out = finish(dcloop(tmp_path, f"resume={ckpt}"))
    assert rc == 0, out[-3000:]
    issues = pd.read_csv(tmp_path / "label_issues.csv")
    flagged = issues[issues["flagged"]]
    assert len(flagged) and (flagged["last_flagged_epoch"] >= 0).all()  # was -1 for all
    assert (tmp_path / "label_issues.csv").read_bytes() == (
        uninterrupted / "label_issues.csv"
    ).read_bytes()
    assert metrics_of(tmp_path) == metrics_of(uninterrupted)


@pytest.mark.slow
def test_resume_with_another_seed_is_one_clear_error(tmp_path, uninterrupted):
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    rc, out = finish(dcloop(tmp_path, f"resume={ckpt}", "seed=1", "folds=3"))
    assert rc != 0
    assert "comes from a different run (seed: checkpoint 0, this run 1; folds:" in out
    assert "size mismatch" not in out


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_and_exits_143(tmp_path):
    rc, out, ckpt = stop_after_epoch(tmp_path, 1, signal.SIGTERM)
    assert rc == 143, out[-3000:]
    assert f"resume={ckpt.resolve()}" in out
    assert checkpoint_epoch(ckpt) >= 1 and not (tmp_path / "metrics.json").exists()


def test_checkpoint_without_a_newer_sample_buffer_warns_and_resumes(tmp_path):
    _, ckpt, _ = fit_blobs(tmp_path / "a", epochs=1)
    old = torch.load(ckpt.path, map_location="cpu", weights_only=True)
    del old["state_dict"]["samples.last_flagged"]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="no per-sample last_flagged"):
        _, _, trainer = fit_blobs(tmp_path / "b", epochs=2, ckpt_path=tmp_path / "old.ckpt")
    assert trainer.current_epoch == 2


@pytest.mark.slow
def test_kill_in_the_student_phase_then_resume_gives_the_same_kept_model(tmp_path, uninterrupted):
    """Killed while the kept student trains: resume=<last.ckpt> restores the replicas' final
    state, goes on from the student's own checkpoint, and ends with the same saved model."""
    killed, resumed = tmp_path / "killed", tmp_path / "resumed"
    proc = dcloop(killed)
    student = killed / "checkpoints" / "student-relabel.ckpt"  # student.targets=relabel
    deadline = time.monotonic() + 600
    while not (student.exists() and checkpoint_epoch(student) >= 1):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no student checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert not (killed / "model").exists()
    rc, out = finish(dcloop(resumed, f"resume={killed / 'checkpoints' / 'last.ckpt'}"))
    assert rc == 0, out[-3000:]
    assert "resuming the student from" in out
    assert metrics_of(resumed) == metrics_of(uninterrupted)
    mine = torch.load(resumed / "model" / "member_0.pt", weights_only=True)
    theirs = torch.load(uninterrupted / "model" / "member_0.pt", weights_only=True)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0)
