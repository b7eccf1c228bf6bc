"""The merge step of sequential mode: K OOF shards -> confident learning -> result files.

``dcloop-merge DIR`` (or automatically, by the fold run that completes the set) checks
that every training index is covered by exactly one shard (and by the shard of its own
fold), runs the cleaning step (:func:`dcloop.step.clean_step`, the one fold-parallel mode
runs between epochs: bounds, guard, confidence gate, ramp) on the merged ``(N, C)`` matrix
with the run's ``cl`` settings, and writes the same files as fold-parallel mode into the
round folder: ``label_issues.csv``, ``class_report.csv``, ``noise_matrix.csv``,
``oof_probs.npy``, ``folds.npy``, ``sample_table.pt`` and ``metrics.json``, plus
``step_state.npz``: the weights the next round trains with and what the next round's step
reads (the ramp's streak, the guard's counters).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcloop.console import emit, run_summary
from dcloop.metrics import run_metrics, weak_run, weak_run_warning
from dcloop.people.report import write_report
from dcloop.results import atomic_write, issue_table, write_json, write_run_files
from dcloop.scale.merge_cli import find_round_dir, main  # noqa: F401 (re-export)
from dcloop.scale.sequential import merge_shards
from dcloop.state import SampleTable
from dcloop.step import Evidence, StepPolicy, StepReport, StepState, clean_step

log = logging.getLogger(__name__)

LOCK = ".merge.lock"
#: The cleaning step's state after a round's merge (read by the next round).
STEP_STATE = "step_state.npz"


def shard_paths(round_dir: Path, num_folds: int) -> list[Path]:
    """``oof_fold<k>.npz`` for k in ``[0, K)``; raises naming the folds that are missing."""
    paths = [Path(round_dir) / f"oof_fold{k}.npz" for k in range(num_folds)]
    missing = [k for k, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{round_dir}: no OOF shard for fold(s) {missing} of {num_folds}; run them first "
            f"(dcloop -m mode=sequential fold={','.join(map(str, missing))} ...)"
        )
    return paths


def load_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and any others) of one ``.npz`` written by a fold run.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a truncated or corrupt file, or one without ``keys``; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what}); rerun that fold")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path}: not a readable .npz ({type(err).__name__}: {err}); expected {what} with "
            f"arrays {list(keys)}: the file is truncated or corrupt, rerun that fold"
        ) from err
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(
            f"{path}: no array(s) {missing} (has {sorted(arrays)}); expected {what} with "
            f"arrays {list(keys)}"
        )
    return arrays


def _load_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); expected {what}: the file is truncated or corrupt"
        ) from err


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def merge_round(round_dir: str | Path, *, device: str = "auto") -> dict[str, Any]:
    """Merge the K shards of one round folder and write the run's result files there.

    Args:
        round_dir: a ``round_<r>`` folder written by :func:`dcloop.scale.fold_run.run_fold`.
        device: where confident learning runs (``"auto"``: CUDA when available).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        FileNotFoundError: the folder has no ``meta.json`` or a fold's shard is missing.
        ValueError: an index is covered twice, not at all, or by another fold's shard.
    """
    d = Path(round_dir)
    if not (d / "meta.json").is_file():
        raise FileNotFoundError(f"{d / 'meta.json'} does not exist: not a sequential round folder")
    meta = _load_json(d / "meta.json", "the round's metadata (written by the first fold run)")
    arrays = load_npz(d / "meta.npz", ("labels", "folds", "sources"), "the round's labels")
    n, k = meta["num_samples"], meta["num_folds"]
    folds = arrays["folds"]
    shards = []  # each shard read once
    for fold, path in enumerate(shard_paths(d, k)):
        z = load_npz(path, ("index", "probs"), f"fold {fold}'s OOF shard")
        index, p = z["index"], z["probs"]
        stray = index[folds[index] != fold]
        if stray.size:
            raise ValueError(
                f"{path}: {stray.size} indices belong to other folds (e.g. {stray[:5].tolist()}): "
                "the shards come from runs with different folds or seeds"
            )
        shards.append((index, p))
    probs = torch.from_numpy(merge_shards(shards, n))
    dev = _device(device)
    policy = StepPolicy.from_options(meta["cl"])  # the run's cl settings, checked
    truth = arrays["true_labels"]
    table = SampleTable(arrays["labels"], folds, truth if (truth >= 0).all() else None).to(dev)
    if "confirmed" in arrays:  # a label file's checked rows and weights (dcloop.people)
        table.confirmed.copy_(torch.as_tensor(arrays["confirmed"]))
        table.prior_weights.copy_(torch.as_tensor(arrays["prior_weights"]))
    rnd = int(meta["round"])
    state = read_step_state(d.parent / f"round_{rnd - 1}", table) if rnd > 0 else None
    if state is None:  # round 0, or a previous round without one (sequential.issues)
        state = StepState.of_table(table)
    state, report = clean_step(state, Evidence(probs.to(dev), rnd), policy)
    result = report.result
    table.record_flags(result.flags, result.quality, result.suggested, rnd)
    table.weights.copy_(state.weights)
    table.flag_streak.copy_(state.flag_streak)
    if report.event is not None:
        log.warning(
            "dcloop guard, round %d: %s; %s",
            rnd,
            "; ".join(report.problems),
            report.event["action"],
        )
    write_step_state(d / STEP_STATE, state)
    sources = arrays["sources"].tolist()
    write_run_files(d, table, probs, result, sources, meta.get("class_names"))
    metrics = _metrics(d, meta, arrays, table, policy, state, report)
    oof = float((probs.argmax(1) == table.labels.cpu()).float().mean())
    weak = weak_run(oof, meta["num_classes"])  # the merged OOF pass, as a parallel run's
    if weak is not None:
        metrics["weak_run"] = weak
        metrics["warnings"] = [*(metrics.get("warnings") or []), weak_run_warning(weak)]
    write_json(metrics, d / "metrics.json")
    top = issue_table(table, sources, meta.get("class_names")).head(5).to_dict("records")
    summary = run_summary(metrics, d, [r for r in top if r["flagged"]])
    if meta.get("report", True):  # every run writes report.html, a merged round too
        summary += f"\n  report      {write_report(d)} (open it in a browser)"
    emit(summary)
    return metrics


def write_step_state(path: Path, state: StepState) -> Path:
    """The step state's tensors and counters as plain arrays (no pickles), atomically."""
    arrays = {
        "weights": state.weights.float().cpu().numpy(),
        "flag_streak": state.flag_streak.cpu().numpy(),
        "start_epoch": np.int64(-1 if state.start_epoch is None else state.start_epoch),
        "noise_rate": np.float64(np.nan if state.noise_rate is None else state.noise_rate),
        "backoffs": np.int64(state.backoffs),
        "paused_until": np.int64(state.paused_until),
        "harm_streak": np.int64(state.harm_streak),
    }

    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    return atomic_write(path, save)


def read_step_state(round_dir: Path, table: SampleTable) -> StepState | None:
    """The step state a round's merge left (``None`` when it left none), on ``table``'s
    labels, folds and label file.

    Raises:
        ValueError: a corrupt file, or one for another number of samples; names the file.
    """
    path = Path(round_dir) / STEP_STATE
    if not path.is_file():
        return None
    z = load_npz(path, ("weights", "flag_streak", "backoffs", "paused_until"), "a step state")
    n = len(table)
    if z["weights"].shape != (n,) or z["flag_streak"].shape != (n,):
        raise ValueError(
            f"{path}: holds {z['weights'].shape[0]} samples, this round {n}: it belongs to "
            "another data set"
        )
    start, rate = int(z["start_epoch"]), float(z["noise_rate"])
    dev = table.labels.device
    return StepState(
        labels=table.labels,
        folds=table.folds,
        flag_streak=torch.as_tensor(z["flag_streak"], dtype=torch.long, device=dev),
        weights=torch.as_tensor(z["weights"], dtype=torch.float32, device=dev),
        confirmed=table.confirmed,
        prior_weights=table.prior_weights,
        start_epoch=None if start < 0 else start,
        noise_rate=None if np.isnan(rate) else rate,
        backoffs=int(z["backoffs"]),
        paused_until=int(z["paused_until"]),
        harm_streak=int(z["harm_streak"]) if "harm_streak" in z else 0,  # (older files: none)
    )


def _metrics(
    d: Path,
    meta,
    arrays,
    table: SampleTable,
    policy: StepPolicy,
    state: StepState,
    report: StepReport,
) -> dict[str, Any]:
    k = meta["num_folds"]
    test = np.mean(
        [
            load_npz(d / f"test_fold{f}.npz", ("probs",), f"fold {f}'s test predictions")["probs"]
            for f in range(k)
        ],
        axis=0,
    )
    folds = [_load_json(d / f"fold{f}.json", f"fold {f}'s summary") for f in range(k)]
    events = [] if report.event is None else [report.event]
    true = table.true_labels if table.has_ground_truth else None
    metrics = run_metrics(
        mode="sequential",
        source=meta["source"],
        table=table,
        num_classes=meta["num_classes"],
        num_folds=k,
        policy=policy,
        noise_rate=report.result.noise_rate,
        history=[report.row(state, true)],
        safety={
            "policy": policy.safety.as_dict(),
            "start_round": state.start_epoch,
            "backoffs": state.backoffs,
            "stopped": policy.stopped(state.backoffs),
            "paused_until_round": state.paused_until,
            "skipped": report.skipped,
            "guard_events": events,
        },
        guard_events=events,
        noise_injected=meta.get("noise_injected"),
        unit="round",
    )
    metrics["cleaning"]["round"] = meta["round"]
    metrics["test"] = {
        "accuracy": float((test.argmax(1) == arrays["test_labels"]).mean()),
        "fold_accuracy": [f["test_accuracy"] for f in folds],
    }
    metrics["folds"] = folds
    return metrics


def merge_if_complete(
    round_dir: str | Path, *, device: str = "auto", stale_after_s: float | None = None
) -> dict[str, Any] | None:
    """Merge when all K shards are there and no other fold run is merging.

    Called by each fold run after it wrote its shard: the last one to finish sees K
    shards; an exclusive lock file (``.merge.lock``, holding the owner's pid, host and
    start time) makes sure only one merges. A lock left by a merge that died (its pid is
    gone on this host, or it is older than ``stale_after_s``) is taken over with a
    WARNING; a live lock held by another run is a WARNING naming the lock.

    Args:
        round_dir: the round folder.
        device: where confident learning runs.
        stale_after_s: a lock older than this many seconds is stale, whichever host holds
            it (default: ``$DCLOOP_MERGE_LOCK_STALE_S``, else :data:`STALE_AFTER_S`).
    """
    d = Path(round_dir)
    meta = _load_json(d / "meta.json", "the round's metadata (written by the first fold run)")
    if not all((d / f"oof_fold{k}.npz").is_file() for k in range(meta["num_folds"])):
        return None
    lock = d / LOCK
    token = _acquire(lock, _stale_after(stale_after_s))
    if token is None:
        return None
    log.info("%s: all %d shards present; merging", d, meta["num_folds"])
    try:
        return merge_round(d, device=device)
    finally:  # a failed merge or a rerun of the round can merge again
        _release(lock, token)


#: Default age (seconds) after which a merge lock counts as stale on any host.
STALE_AFTER_S = 3600.0
_STALE_ENV = "DCLOOP_MERGE_LOCK_STALE_S"


def _stale_after(value: float | None) -> float:
    where = "stale_after_s"
    if value is None and os.environ.get(_STALE_ENV):
        value, where = os.environ[_STALE_ENV], f"${_STALE_ENV}"
    if value is None:
        return STALE_AFTER_S
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not out > 0:
        raise ValueError(f"{where} must be a positive number of seconds; got {value!r}")
    return out


def _lock_record() -> bytes:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    ).encode()


def _create(lock: Path) -> bytes | None:
    """Create ``lock`` exclusively with this process's record; ``None`` if it exists."""
    record = _lock_record()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    return record


def _read(lock: Path) -> bytes | None:
    try:
        return lock.read_bytes()
    except FileNotFoundError:
        return None


def _owner(raw: bytes, lock: Path) -> dict[str, Any]:
    """The lock's record; an empty or unreadable one (old dcloop, or killed while writing
    it) gets the file's modification time and no pid."""
    try:
        rec = json.loads(raw.decode())
        if not isinstance(rec, dict):
            raise ValueError(rec)
    except (ValueError, UnicodeDecodeError):
        rec = {}
    if not isinstance(rec.get("time"), (int, float)):
        try:
            rec["time"] = lock.stat().st_mtime
        except FileNotFoundError:
            rec["time"] = time.time()
    return rec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _why_stale(rec: dict[str, Any], max_age: float) -> str | None:
    age = time.time() - float(rec["time"])
    pid, host = rec.get("pid"), rec.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
        return f"its owner (pid {pid} on {host}) is gone"
    if age > max_age:
        return f"it is {age:.0f} s old (stale after {max_age:.0f} s, ${_STALE_ENV})"
    return None


def _describe(rec: dict[str, Any]) -> str:
    age = time.time() - float(rec["time"])
    who = f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}"
    return f"{who}, started {rec.get('started', '?')} ({age:.0f} s ago)"


def _acquire(lock: Path, max_age: float) -> bytes | None:
    """This process's lock record once it holds ``lock``; ``None`` if a live run holds it."""
    for _ in range(3):  # a lock released or taken over between the calls: look again
        mine = _create(lock)
        if mine is not None:
            return mine
        raw = _read(lock)
        if raw is None:
            continue
        rec = _owner(raw, lock)
        why = _why_stale(rec, max_age)
        if why is None:
            log.warning(
                "%s: another fold run is merging (%s); this run does not merge. If no merge "
                "is running, delete %s and run dcloop-merge %s",
                lock.parent,
                _describe(rec),
                lock,
                lock.parent,
            )
            return None
        # take the stale lock over: only one run can rename it away
        aside = lock.with_name(f"{LOCK}.stale.{socket.gethostname()}.{os.getpid()}")
        try:
            os.rename(lock, aside)
        except FileNotFoundError:
            continue
        if aside.read_bytes() != raw:  # another run took it over first: give it back
            try:
                os.link(aside, lock)
            except FileExistsError:
                pass
            aside.unlink()
            continue
        aside.unlink()
        log.warning(
            "%s: STALE MERGE LOCK %s taken over: %s (%s). A merge that was killed "
            "left it; check that no other merge of this round is running",
            lock.parent,
            lock,
            why,
            _describe(rec),
        )
    log.warning(
        "%s: could not take the merge lock %s; run dcloop-merge %s", lock.parent, lock, lock.parent
    )
    return None


def _release(lock: Path, token: bytes) -> None:
    """Remove ``lock`` if it is still this process's (it may have been taken over)."""
    if _read(lock) == token:
        lock.unlink(missing_ok=True)
    else:
        log.warning("%s: the merge lock was taken over by another run during this merge", lock)
