"""Sequential auto-merge: a lock left by a killed merge is taken over loudly; a live one
is a warning naming it; truncated shards are one clear line, exit code 2."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import dcloop.scale.merge as merge
from dcloop.scale.merge import LOCK, main, merge_if_complete, merge_round


@pytest.fixture
def merges(monkeypatch) -> list[Path]:
    """Merging is recorded, not run."""
    calls = []

    def fake_merge(path, *, device="auto"):
        assert (Path(path) / LOCK).is_file()  # merging under the lock
        calls.append(Path(path))
        return {"merged": True}

    monkeypatch.setattr(merge, "merge_round", fake_merge)
    return calls


@pytest.fixture
def round_dir(tmp_path, merges) -> Path:
    """A round folder whose K=2 shards are all there."""
    d = tmp_path / "round_0"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"num_folds": 2, "num_samples": 4}))
    for k in range(2):
        (d / f"oof_fold{k}.npz").write_bytes(b"")
    return d


def _write_lock(d: Path, **rec) -> Path:
    lock = d / LOCK
    lock.write_text(json.dumps(rec))
    return lock


@pytest.mark.slow  # spawns processes (DDP / a killed merge): 20-40 s
def test_lock_left_by_a_merge_killed_with_sigkill_is_taken_over(round_dir, merges, caplog):
    code = textwrap.dedent(
        """
        import sys, time
        import dcloop.scale.merge as m
        m.merge_round = lambda d, device="auto": time.sleep(300)
        m.merge_if_complete(sys.argv[1])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(round_dir)])
    lock = round_dir / LOCK
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, "the merging process ended early"
            time.sleep(0.1)
        rec = json.loads(lock.read_text())
        assert rec["pid"] == proc.pid and rec["host"] == socket.gethostname()
        assert abs(rec["time"] - time.time()) < 120 and "started" in rec
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock.is_file()  # kill -9 left the lock behind

    with caplog.at_level(logging.WARNING, logger="dcloop.scale.merge"):
        assert merge_if_complete(round_dir) == {"merged": True}
    assert merges == [round_dir]
    assert "STALE MERGE LOCK" in caplog.text and str(lock) in caplog.text
    assert f"pid {proc.pid} on {socket.gethostname()}" in caplog.text and "is gone" in caplog.text
    assert not lock.exists()  # released after the merge
    assert not list(round_dir.glob(f"{LOCK}*"))  # nothing left aside


def test_old_lock_from_another_host_is_stale_by_age(round_dir, merges, caplog, monkeypatch):
    old = time.time() - 7200
    lock = _write_lock(round_dir, pid=12345, host="node-elsewhere", time=old)
    with caplog.at_level(logging.WARNING):
        assert merge_if_complete(round_dir, stale_after_s=10**6) is None  # not old enough
    assert merges == [] and lock.is_file()
    assert "another fold run is merging" in caplog.text and str(lock) in caplog.text
    assert "pid 12345 on node-elsewhere" in caplog.text

    caplog.clear()
    monkeypatch.setenv("DCLOOP_MERGE_LOCK_STALE_S", "60")  # configurable without code
    with caplog.at_level(logging.WARNING):
        assert merge_if_complete(round_dir) == {"merged": True}
    assert "STALE MERGE LOCK" in caplog.text and "s old (stale after 60 s" in caplog.text
    assert not lock.exists()


def test_live_lock_held_by_another_process_is_a_warning_naming_it(round_dir, merges, caplog):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(
            round_dir, pid=holder.pid, host=socket.gethostname(), time=time.time() - 5
        )
        with caplog.at_level(logging.WARNING):
            assert merge_if_complete(round_dir) is None
        assert merges == []
        [rec] = [r for r in caplog.records if r.name == "dcloop.scale.merge"]
        assert rec.levelno == logging.WARNING
        assert str(lock) in rec.getMessage() and f"pid {holder.pid}" in rec.getMessage()
        assert "dcloop-merge" in rec.getMessage()
        assert json.loads(lock.read_text())["pid"] == holder.pid  # left alone
    finally:
        holder.kill()
        holder.wait()


def test_empty_lock_of_an_older_dcloop_goes_by_its_age(round_dir, caplog):
    lock = round_dir / LOCK
    lock.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert merge_if_complete(round_dir) is None  # fresh: could be a live merge
    assert "another fold run is merging" in caplog.text
    os.utime(lock, (time.time() - 7200, time.time() - 7200))
    assert merge_if_complete(round_dir) == {"merged": True}
    assert not lock.exists()


def test_a_lock_taken_over_during_the_merge_is_not_removed(round_dir, monkeypatch, caplog):
    def merge_while_someone_takes_over(path, *, device="auto"):
        _write_lock(Path(path), pid=1, host="other", time=time.time())
        return {}

    monkeypatch.setattr(merge, "merge_round", merge_while_someone_takes_over)
    with caplog.at_level(logging.WARNING):
        merge_if_complete(round_dir)
    assert (round_dir / LOCK).is_file() and "taken over by another run" in caplog.text


def test_bad_stale_age_is_named(round_dir, monkeypatch):
    with pytest.raises(ValueError, match=r"stale_after_s must be a positive number.*-1"):
        merge_if_complete(round_dir, stale_after_s=-1)
    monkeypatch.setenv("DCLOOP_MERGE_LOCK_STALE_S", "soon")
    with pytest.raises(ValueError, match=r"\$DCLOOP_MERGE_LOCK_STALE_S .*'soon'"):
        merge_if_complete(round_dir)


def _shards(d: Path) -> None:
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"num_folds": 2, "num_samples": 4}))
    np.savez(
        d / "meta.npz",
        labels=np.array([0, 1, 0, 1]),
        folds=np.array([0, 0, 1, 1]),
        sources=np.array(["a", "b", "c", "d"]),
    )
    for k in range(2):
        np.savez(d / f"oof_fold{k}.npz", index=np.array([2 * k, 2 * k + 1]), probs=np.eye(2))


def test_truncated_shard_is_one_line_naming_the_file(tmp_path, capsys):
    d = tmp_path / "round_0"
    _shards(d)
    shard = d / "oof_fold1.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"oof_fold1.npz: not a readable .npz.*fold 1's OOF"):
        merge_round(d)
    with pytest.raises(SystemExit) as exc:
        main([str(d), "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dcloop-merge: error: ")
    assert str(shard) in err[0] and "truncated or corrupt" in err[0]

    np.savez(shard, index=np.array([2, 3]))  # whole, but without probs
    with pytest.raises(ValueError, match=r"oof_fold1.npz: no array\(s\) \['probs'\]"):
        merge_round(d)
    (d / "meta.json").write_text('{"num_folds": 2, "num_sa')
    with pytest.raises(ValueError, match=r"meta.json: not valid JSON"):
        merge_round(d)
