"""The student's left-out samples as unlabelled data, with co-guessed pseudo-labels.

A student rule leaves some flagged samples out (``relabel``: those whose held-out evidence is
unsure). Their labels are wrong, but their inputs are still data. DivideMix (Li et al., ICLR
2020) trains such samples as unlabelled data on *co-guessed* targets: the average of the
predictions of networks that did not fit their labels, sharpened. Here the fold replicas'
held-out softmax (the evidence: no replica that produced it trained on the sample) is one
guess and the student's own current softmax the other:

    guess_i = sharpen((evidence_i + softmax(student(x_i))) / 2, T),  sharpen(p, T) ~ p^(1/T)

and the student adds ``weight * ramp * mean_i CE(student(view(x_i)), guess_i)`` over the
unlabelled rows of each batch. ``ramp`` grows linearly from 0 to 1 over the first half of the
student's epochs, while its own guess is still poor (DivideMix ramps its unlabelled loss
too). ``view`` is the input the loss is taken on:

- ``none``: the same forward as the guess (no extra pass; the loss then sharpens the
  student's prediction towards the replicas', a self-training step);
- ``perturb``: a perturbed copy, so the loss is also a consistency term (one extra forward
  of the unlabelled rows). Generic per dtype, since the student's inputs are images, audio
  or token ids: integer ids lose 10 % of their non-padding tokens (set to id 0); float
  inputs get Gaussian noise of 10 % of each row's standard deviation and a random circular
  shift of up to 1/8 of the last axis.

The guess never carries gradient. The buffers are part of the module's state (a resumed
student goes on with the same unlabelled set).
"""

from __future__ import annotations

import torch
from torch import nn

from dcloop._checks import check_choice, check_float

#: How the unlabelled loss sees its input (see the module docstring).
VIEWS = ("none", "perturb")


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p ** (1 / T)`` normalised per row (``T`` in (0, 1]: 1 leaves ``p`` as it is)."""
    q = p.clamp_min(1e-12) ** (1.0 / temperature)
    return q / q.sum(-1, keepdim=True)


def perturb(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A perturbed copy of a batch for the consistency term (``view=perturb``).

    Integer token ids: 10 % of the non-zero ids become 0 (padding). Floats: Gaussian noise of
    0.1 x each row's standard deviation, then each row rolled by up to 1/8 of its last axis.
    """
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    if not torch.is_floating_point(x):
        drop = (rand(*x.shape) < 0.1) & (x != 0)
        return torch.where(drop, torch.zeros_like(x), x)
    flat = x.reshape(x.shape[0], -1)
    sd = flat.float().std(1, unbiased=False).clamp_min(1e-8).to(x.dtype)
    noise = torch.randn(*x.shape, generator=generator).to(dev, x.dtype)
    y = x + 0.1 * sd.view(-1, *([1] * (x.ndim - 1))) * noise
    length = x.shape[-1]
    span = max(1, length // 8)
    shifts = (rand(x.shape[0]) * (2 * span + 1)).long() - span
    # torch.roll per row, in one gather: out[..., i] = y[..., (i - shift) % length]
    idx = (torch.arange(length, device=dev) - shifts.view(-1, 1)) % length
    idx = idx.view(x.shape[0], *([1] * (x.ndim - 2)), length).expand_as(y)
    return y.gather(-1, idx)


class CoGuess(nn.Module):
    """The unlabelled term of a student (see the module docstring).

    Args:
        evidence: ``(N, C)`` the fold replicas' held-out softmax.
        unlabelled: ``(N,)`` bool, the samples trained as unlabelled data.
        weight: the term's weight at the end of the ramp (> 0).
        temperature: the sharpening temperature ``T`` in (0, 1].
        view: one of :data:`VIEWS`.
    """

    def __init__(
        self,
        evidence: torch.Tensor,
        unlabelled: torch.Tensor,
        *,
        weight: float = 1.0,
        temperature: float = 0.5,
        view: str = "none",
    ) -> None:
        super().__init__()
        check_float("student.unlabelled", weight, low=0.0, low_open=True)
        check_float("student.sharpen", temperature, low=0.0, high=1.0, low_open=True)
        check_choice("student.view", view, VIEWS)
        evidence = torch.as_tensor(evidence, dtype=torch.float32)
        unlabelled = torch.as_tensor(unlabelled, dtype=torch.bool)
        if evidence.ndim != 2 or unlabelled.shape != (evidence.shape[0],):
            raise ValueError(
                f"evidence must be (N, C) and unlabelled (N,); got {tuple(evidence.shape)} "
                f"and {tuple(unlabelled.shape)}"
            )
        self.weight, self.temperature, self.view = float(weight), float(temperature), view
        self.register_buffer("evidence", evidence)
        self.register_buffer("unlabelled", unlabelled)

    def loss(
        self,
        net: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        index: torch.Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The term for one batch: ``x`` its inputs, ``logits`` the student's on ``x``,
        ``index`` the rows' sample indices, ``progress`` the share of the student's epochs done
        (the ramp: ``min(1, 2 * progress)``). Zero when the batch has no unlabelled row."""
        ramp = min(1.0, 2.0 * max(0.0, progress))
        if ramp == 0.0:
            return logits.sum() * 0.0
        rows = self.unlabelled[index]
        if self.view == "none":  # the whole batch, masked: no host sync on the device
            own = logits.detach().float().softmax(-1)
            guess = sharpen((self.evidence[index] + own) / 2, self.temperature)
            ce = -(guess * logits.float().log_softmax(-1)).sum(-1)
            mask = rows.float()
            return self.weight * ramp * (ce * mask).sum() / mask.sum().clamp_min(1.0)
        if not bool(rows.any()):  # the perturbed pass needs at least one row
            return logits.sum() * 0.0
        own = logits[rows].detach().float().softmax(-1)
        guess = sharpen((self.evidence[index[rows]] + own) / 2, self.temperature)
        z = net(perturb(x[rows], generator))
        ce = -(guess * z.float().log_softmax(-1)).sum(-1)
        return self.weight * ramp * ce.mean()
