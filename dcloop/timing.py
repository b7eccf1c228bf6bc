"""Where a run's time goes: seconds per phase, shared by the callbacks through the trainer.

Each callback times its own work (``with timed(trainer, "oof"):`` or the :func:`timed_hook`
decorator) into one :class:`PhaseTimes` kept on the trainer, so no callback depends on
another's presence or position in the list. :class:`LoopTiming` adds the training loop
itself: the training steps, the data-loading gaps between them and validation.

Under CUDA the device is synchronised only at phase boundaries (a phase's start and end:
a few times per epoch), never per batch. Device work a training step leaves pending when
the host moves on is charged to whatever the host waits in next (usually the next step or
the gap before it); the epoch's total is exact, the split between steps and data loading
is then approximate.

Example:
    >>> from dcloop.timing import LoopTiming, phase_times
    >>> trainer = L.Trainer(callbacks=[LoopTiming(), OOFCollector()])  # doctest: +SKIP
    >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
    >>> phase_times(trainer).as_dict()["oof"]  # doctest: +SKIP
    1.93
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

#: Phases of ``metrics.json``'s ``timing`` (seconds each), in the order they are reported.
PHASES: tuple[str, ...] = (
    "train_steps",
    "data_loading",
    "validation",
    "oof",
    "confident_learning",
    "policy_update",
    "test",
    "refit",
    "auto_rule",
    "student_evidence",
    "student",
    "result_files",
    "data_health",
    "checkpoint",
)
_ATTR = "_dcloop_phase_times"


class PhaseTimes:
    """Seconds per phase of one run (see :data:`PHASES`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._steps_open_since: float | None = None  # host time of the last step's end

    def add(self, phase: str, seconds: float) -> None:
        if phase not in self.seconds:
            raise ValueError(f"unknown phase {phase!r}; phases are {list(PHASES)}")
        self.seconds[phase] += seconds

    def step_ended(self, now: float) -> None:
        """A training step ended at host time ``now``; its pending device work is still open."""
        self._steps_open_since = now

    def boundary(self, device: torch.device | None) -> float:
        """Synchronise the device (CUDA) and charge the pending tail of the steps to them."""
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if self._steps_open_since is not None:
            self.add("train_steps", now - self._steps_open_since)
            self._steps_open_since = None
        return now

    @contextmanager
    def phase(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Time the enclosed block as ``name``, synchronising the device at both ends."""
        start = self.boundary(device)
        try:
            yield
        finally:
            self.add(name, self.boundary(device) - start)

    def as_dict(self, total: float | None = None) -> dict[str, float]:
        """``{phase: seconds}`` rounded to ms; with ``total``, also ``total`` and ``other``."""
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        if total is not None:
            out["other"] = round(max(total - sum(self.seconds.values()), 0.0), 3)
            out["total"] = round(total, 3)
        return out


def phase_times(trainer: L.Trainer) -> PhaseTimes:
    """The trainer's :class:`PhaseTimes` (created on first use)."""
    times = getattr(trainer, _ATTR, None)
    if times is None:
        times = PhaseTimes()
        setattr(trainer, _ATTR, times)
    return times


def _device(trainer: L.Trainer) -> torch.device | None:
    try:
        return trainer.strategy.root_device
    except Exception:  # noqa: BLE001 - a trainer without a strategy set up: no device sync
        return None


@contextmanager
def timed(trainer: L.Trainer, phase: str) -> Iterator[None]:
    """Time the enclosed block as ``phase`` of ``trainer``'s run."""
    with phase_times(trainer).phase(phase, _device(trainer)):
        yield


def timed_hook(phase: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a callback hook ``(self, trainer, pl_module, ...)`` to time it as ``phase``."""

    def wrap(hook: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(hook)
        def run(self, trainer, *args, **kwargs):
            with timed(trainer, phase):
                return hook(self, trainer, *args, **kwargs)

        return run

    return wrap


class LoopTiming(L.Callback):
    """Times the training loop into the trainer's :class:`PhaseTimes`.

    ``train_steps``: from each ``on_train_batch_start`` to its ``on_train_batch_end`` (forward,
    backward, optimiser step), plus the device work still pending at the next phase boundary.
    ``data_loading``: from the epoch start to the first batch, and from each batch's end to the
    next one's start (fetching and collating the batch, and Lightning's bookkeeping between
    batches). ``validation``: the validation loops (sanity check included).
    """

    def __init__(self) -> None:
        self._gap_start: float | None = None
        self._step_start: float | None = None
        self._val_start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gap_start = phase_times(trainer).boundary(_device(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._gap_start is not None:
            phase_times(trainer).add("data_loading", now - self._gap_start)
        self._step_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        times = phase_times(trainer)
        if self._step_start is not None:
            times.add("train_steps", now - self._step_start)
        times.step_ended(now)
        self._gap_start, self._step_start = now, None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase_times(trainer).boundary(_device(trainer))
        self._gap_start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = phase_times(trainer).boundary(_device(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is None:
            return
        now = phase_times(trainer).boundary(_device(trainer))
        phase_times(trainer).add("validation", now - self._val_start)
        self._val_start = None
        if self._gap_start is not None:
            self._gap_start = now  # validation inside the epoch is not data loading
