"""The one place for per-sample state, keyed by ``index``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from dcloop._checks import check_labels


def digest(values: torch.Tensor | np.ndarray | Iterable[str]) -> str:
    """A short, stable fingerprint (SHA-256, 16 hex digits) of labels or sources.

    Tensors and arrays hash as int64 values, so device and dtype do not matter;
    anything else hashes as the sequence of its items' strings.
    """
    h = hashlib.sha256()
    if isinstance(values, (torch.Tensor, np.ndarray)):
        arr = torch.as_tensor(values).detach().cpu().to(torch.int64).numpy()
        h.update(np.ascontiguousarray(arr).tobytes())
    else:
        for item in values:
            h.update(str(item).encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()[:16]


class SampleTable(nn.Module):
    """Per-sample state as device-resident buffers (saved in checkpoints).

    Row ``i`` is the sample whose dataset item carries ``index == i``.

    Buffers (all ``(N,)``):
        labels: given (possibly noisy) labels, int64.
        folds: fold of each sample in ``[0, K)``, int64.
        weights: loss weight, float32 (1 keep, 0 pruned, between: down-weighted).
        flagged: current confident-learning flag, bool.
        quality: label-quality score in [0, 1] (NaN before the first CL step).
        suggested: the label the OOF model prefers (argmax), int64 (-1 before CL).
        first_flagged / last_flagged: epochs (1-based), int64 (-1 when never flagged).
        flag_streak: consecutive confident-learning steps that flagged the sample, int64.
        true_labels: ground truth when known (noise experiments), else -1.
        confirmed: a person checked the label (label file); never flagged. Not saved.
        prior_weights: weights from a label file, multiplied into the action's. Not saved.
    """

    def __init__(self, labels, folds, true_labels=None) -> None:
        super().__init__()
        labels = torch.as_tensor(check_labels(labels))
        n = labels.numel()
        folds = torch.as_tensor(np.asarray(folds), dtype=torch.long)
        if folds.shape != (n,):
            raise ValueError(f"folds must have shape ({n},); got {tuple(folds.shape)}")
        if true_labels is None:
            true = torch.full((n,), -1, dtype=torch.long)
        else:
            true = torch.as_tensor(check_labels(true_labels))
            if true.shape != (n,):
                raise ValueError(f"true_labels must have shape ({n},); got {tuple(true.shape)}")
        self.register_buffer("labels", labels)
        self.register_buffer("folds", folds)
        self.register_buffer("true_labels", true)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("flagged", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("quality", torch.full((n,), float("nan")))
        self.register_buffer("suggested", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("first_flagged", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("last_flagged", torch.full((n,), -1, dtype=torch.long))
        # Consecutive confident-learning steps that flagged the sample (dcloop.safety's ramp).
        self.register_buffer("flag_streak", torch.zeros(n, dtype=torch.long))
        # From a label file (dcloop.people): rows a person checked are never flagged; prior
        # weights (e.g. consensus quality) multiply the action's weights. Rebuilt from the
        # config on resume, so not saved in checkpoints.
        self.register_buffer("confirmed", torch.zeros(n, dtype=torch.bool), persistent=False)
        self.register_buffer("prior_weights", torch.ones(n), persistent=False)

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def has_ground_truth(self) -> bool:
        return bool((self.true_labels >= 0).all())

    @property
    def is_noisy(self) -> torch.Tensor:
        """``(N,)`` bool: given label differs from the true label (needs ground truth)."""
        return self.labels != self.true_labels

    def identity(self) -> dict[str, int | str]:
        """What ties this table to its data: N and fingerprints of the given labels,
        the folds and the ground truth (checked when a run resumes from a checkpoint)."""
        return {
            "num_samples": len(self),
            "labels": digest(self.labels),
            "fold_assignment": digest(self.folds),
            "true_labels": digest(self.true_labels),
        }

    def apply(self, result, epoch: int, weights: torch.Tensor | None = None) -> None:
        """Record a verdict (:meth:`record_flags`) and, with ``weights``, train with them:
        ``weights * prior_weights`` (a label file's weights stay a factor)."""
        self.record_flags(result.flags, result.quality, result.suggested, epoch)
        if weights is not None:
            self.weights.copy_(weights.to(self.weights.device) * self.prior_weights)

    def record_flags(
        self, flags: torch.Tensor, quality: torch.Tensor, suggested: torch.Tensor, epoch: int
    ) -> None:
        """Store one confident-learning verdict; a sample cleared later is unflagged.

        Args:
            flags, quality, suggested: ``(N,)`` verdict of confident learning.
            epoch: the (1-based) epoch it belongs to; ``-1`` for a verdict outside the
                training loop, which leaves the epochs already recorded (by earlier
                epochs or a checkpoint) as they are.
        """
        self.flagged.copy_(flags)
        self.quality.copy_(quality)
        self.suggested.copy_(suggested)
        if epoch < 0:
            return
        first = self.first_flagged
        self.first_flagged.copy_(torch.where(flags & (first < 0), epoch, first))
        self.last_flagged.copy_(torch.where(flags, epoch, self.last_flagged))
