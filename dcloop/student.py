"""What the kept network (the student) trains on: targets from the fold replicas' verdict.

The K fold replicas give every training sample a held-out softmax (the *evidence*: each
sample seen only by replicas that never trained on it) and confident learning flags the
labels it contradicts. Pruning the flagged samples throws away the images or texts along with
their wrong labels. The student keeps them: one network, trained on all samples from scratch,
on targets built here.

Plain functions on tensors, tested without a Trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from dcloop._checks import check_choice, check_float
from dcloop.health.knn import knn
from dcloop.mixup import check_alpha
from dcloop.models.coguess import VIEWS

#: ``relabel``: a confidently flagged sample trains on the evidence's argmax, an unconfident
#: one is left out; ``soft``: a flagged sample trains on the evidence itself (its softmax);
#: ``posterior``: every sample trains on the calibrated posterior of its true label given
#: the evidence *and* its given label (:attr:`dcloop.calibrate.Calibration.posterior`: the
#: given label where the evidence agrees or is unsure, moved towards the evidence where the
#: noise matrix says such a label is often wrong); ``drop``: every flagged sample is left out
#: (the loop itself acts only on its confident flags); ``prune``: the weights of the loop's
#: action; ``forward``: every sample on its given label through the calibrated noise matrix
#: (forward loss correction, Patrini et al. 2017: the loss is ``-log sum_j M[given, j] p_j``,
#: :func:`dcloop.models.losses.forward_nll`, with ``M[i, j] = P(given = i | true = j)``, so
#: the network's own softmax estimates the true label); ``relabel_forward``: ``relabel``'s
#: targets for the flagged samples, and the unflagged ones through the noise that is left
#: among them (the residual noise matrix ``P(given | true, unflagged)`` from the calibrated
#: posterior, :func:`residual_noise_matrix`); ``given``: the given labels (a plain network:
#: for baselines); ``auto``: ``forward`` where the recipe's networks do not fit the labels the
#: replicas flag, ``relabel`` where they do (:func:`auto_rule`).
TARGET_RULES = (
    "soft",
    "relabel",
    "posterior",
    "drop",
    "prune",
    "forward",
    "relabel_forward",
    "given",
    "auto",
)

#: ``auto``: the share of the flagged samples (that the replicas train on) whose given label
#: the replicas that trained on them predict, at or above which the student relabels. A
#: network that fits wrong labels fits them through the noise matrix too, so forward
#: correction cannot help it. The converse does not hold: on CIFAR-10N the replicas fit 1 %
#: and forward still lost to relabel (scripts/results/bench_kept_auto{,_cifar}.md), so
#: ``auto`` is not the default.
AUTO_FIT_THRESHOLD = 0.5

#: Rules whose targets are rows of a noise matrix, for :func:`dcloop.models.losses.forward_nll`
#: (not for cross-entropy).
FORWARD_RULES = ("forward", "relabel_forward")

#: Where the student's weights start: ``scratch`` (a fresh network, as one plain run) or
#: ``replica`` (fold replica 0's final weights: the student carries on from where the replicas
#: stopped, so it needs fewer epochs; with ``student.epochs`` < 1 it is the cheap path).
STUDENT_INITS = ("scratch", "replica")


#: Where the evidence that relabels the student's targets comes from (``student.evidence``):
#: ``oof`` (the replicas' held-out softmax, as calibrated by the loop); ``knn`` (the given
#: labels of each sample's :data:`VOTE_NEIGHBOURS` nearest training samples in the replicas'
#: mean embedding, :func:`neighbour_votes`: deep kNN, Bahri et al. 2020); ``blend`` (the mean
#: of the two); ``auto`` (``knn`` where the replicas fit less than :data:`AUTO_FIT_THRESHOLD`
#: of the flagged labels they train on, else ``oof``: a network that memorises wrong labels
#: puts them among their given class in its embedding, so their neighbours vote for them).
EVIDENCE_SOURCES = ("oof", "knn", "blend", "auto")

#: Neighbours whose given labels vote in :func:`neighbour_votes`.
VOTE_NEIGHBOURS = 10


@dataclass(frozen=True)
class StudentPolicy:
    """How the student's targets come from the verdict.

    Attributes:
        targets: one of :data:`TARGET_RULES`.
        mix: every *unflagged* sample's target is ``(1 - mix) * onehot(given) + mix *
            evidence`` (distillation from the held-out ensemble; 0: the given label).
        min_confidence: ``relabel`` (and ``soft`` with ``drop_unsure``): a flagged sample whose
            evidence gives its top class less than this is left out (weight 0).
        drop_unsure: ``soft``: leave out flagged samples below ``min_confidence`` too.
        mixup: the student's mixup ``alpha`` (:mod:`dcloop.mixup`; 0: off); ``None``: the
            run's ``model.mixup``.
        epochs: the student's epochs, a fraction of ``trainer.max_epochs`` in (0, 1] (at
            least one epoch), with a learning-rate schedule of its own over them.
        init: one of :data:`STUDENT_INITS`.
        unlabelled: the weight of the left-out flagged samples as unlabelled data, on
            co-guessed pseudo-labels (:mod:`dcloop.models.coguess`; 0: off, they are left
            out as before). Not with ``mixup``.
        sharpen: ``unlabelled``'s sharpening temperature in (0, 1].
        view: ``unlabelled``'s input view: ``none`` or ``perturb``
            (:data:`dcloop.models.coguess.VIEWS`).
        evidence: one of :data:`EVIDENCE_SOURCES`: what relabels the flagged samples (the
            flags stay the loop's).
    """

    targets: str = "prune"
    mix: float = 0.0
    min_confidence: float = 0.5
    drop_unsure: bool = False
    mixup: float | None = None
    epochs: float = 1.0
    init: str = "scratch"
    unlabelled: float = 0.0
    sharpen: float = 0.5
    view: str = "none"
    evidence: str = "oof"

    def __post_init__(self) -> None:
        check_choice("student.targets", self.targets, TARGET_RULES)
        check_choice("student.init", self.init, STUDENT_INITS)
        check_float("student.epochs", self.epochs, low=0.0, high=1.0, low_open=True)
        check_float("student.mix", self.mix, low=0.0, high=1.0)
        check_float("student.min_confidence", self.min_confidence, low=0.0, high=1.0)
        if self.mixup is not None:
            check_alpha(self.mixup, "student.mixup")
        check_float("student.unlabelled", self.unlabelled, low=0.0)
        check_float("student.sharpen", self.sharpen, low=0.0, high=1.0, low_open=True)
        check_choice("student.view", self.view, VIEWS)
        check_choice("student.evidence", self.evidence, EVIDENCE_SOURCES)
        if self.unlabelled and self.mixup:
            raise ValueError(
                f"student.unlabelled={self.unlabelled:g} and student.mixup={self.mixup:g} "
                "cannot be combined (a mixed row has no single guess): set one of them to 0"
            )

    def as_dict(self) -> dict:
        return asdict(self)


def student_targets(
    labels: torch.Tensor,
    evidence: torch.Tensor,
    flags: torch.Tensor,
    policy: StudentPolicy,
    *,
    weights: torch.Tensor | None = None,
    posterior: torch.Tensor | None = None,
    noise_matrix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's ``(N, C)`` target distributions and ``(N,)`` loss weights.

    Args:
        labels: ``(N,)`` given labels.
        evidence: ``(N, C)`` held-out softmax of the fold replicas (rows sum to 1).
        flags: ``(N,)`` bool, confident learning's verdict.
        policy: the rule (:class:`StudentPolicy`).
        weights: ``(N,)`` the loop's final weights (used by ``prune``; a label file's prior
            weights are already in them). ``None``: ones.
        posterior: ``(N, C)`` ``P(true | x, given)`` (``posterior`` needs it:
            :func:`dcloop.calibrate.calibrate`'s ``posterior``).
        noise_matrix: ``(C, C)`` ``P(given = i | true = j)`` (``forward`` needs it:
            :func:`dcloop.calibrate.calibrate`'s ``noise_matrix``). The targets are then its
            rows ``M[given]`` normalised, for :func:`dcloop.models.losses.forward_nll` (not
            for cross-entropy).

    Returns:
        ``(targets, weights)``: ``targets[i]`` sums to 1.

    Example:
        >>> labels = torch.tensor([0, 1]); flags = torch.tensor([False, True])
        >>> ev = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
        >>> t, w = student_targets(labels, ev, flags, StudentPolicy("relabel"))
        >>> t.argmax(1).tolist(), w.tolist()
        ([0, 0], [1.0, 1.0])
    """
    n, c = evidence.shape
    if labels.shape != (n,) or flags.shape != (n,):
        raise ValueError(
            f"labels and flags must have shape ({n},) like evidence's rows; got "
            f"{tuple(labels.shape)} and {tuple(flags.shape)}"
        )
    evidence = evidence.float()
    flags = flags.to(evidence.device, torch.bool)
    given = torch.nn.functional.one_hot(labels.to(evidence.device).long(), c).float()
    w = (
        torch.ones(n, device=evidence.device)
        if weights is None
        else weights.to(evidence.device).float().clone()
    )
    if policy.targets == "auto":
        raise ValueError("student.targets=auto is resolved to a rule first (auto_rule)")
    if policy.targets == "given":  # a plain network: the loop's weights are not used
        return given, torch.ones_like(w)
    clean = (1 - policy.mix) * given + policy.mix * evidence if policy.mix else given
    if policy.targets == "prune":
        return clean, w
    if policy.targets == "drop":
        return clean, torch.where(flags, torch.zeros_like(w), torch.ones_like(w))
    if policy.targets == "forward":
        noise = _needed(noise_matrix, (c, c), policy.targets, "noise matrix")
        rows = noise.to(evidence.device)[labels.to(evidence.device).long()]
        return rows / rows.sum(1, keepdim=True).clamp_min(1e-12), torch.ones_like(w)
    if policy.targets == "posterior":
        post = _needed(posterior, (n, c), policy.targets, "calibrated posterior").to(
            evidence.device
        )
        post = post / post.sum(1, keepdim=True).clamp_min(1e-12)
        return (1 - policy.mix) * post + policy.mix * evidence if policy.mix else post, (
            torch.ones_like(w)
        )
    top, arg = evidence.max(1)
    sure = top >= policy.min_confidence
    if policy.targets == "relabel_forward":
        post = _needed(posterior, (n, c), policy.targets, "calibrated posterior")
        lab = labels.to(evidence.device).long()
        residual = residual_noise_matrix(post.to(evidence.device), lab, ~flags)
        rows = residual[lab]
        clean = rows / rows.sum(1, keepdim=True).clamp_min(1e-12)
    if policy.targets in ("relabel", "relabel_forward"):
        flagged_t = torch.nn.functional.one_hot(arg, c).float()
        keep = sure
    else:  # soft
        flagged_t = evidence / evidence.sum(1, keepdim=True).clamp_min(1e-12)
        keep = sure if policy.drop_unsure else torch.ones_like(sure)
    targets = torch.where(flags.unsqueeze(1), flagged_t, clean)
    # The student ignores the loop's ramp: a flagged sample is kept (relabelled) or left out.
    base = torch.ones_like(w) if weights is None else torch.where(flags, torch.ones_like(w), w)
    w = torch.where(flags & ~keep, torch.zeros_like(base), base)
    return targets, w


def target_quality(
    targets: torch.Tensor, weights: torch.Tensor, true_labels: torch.Tensor
) -> dict[str, float]:
    """How right the student's targets are, where the true labels are known (injected noise,
    a truth file): ``trained_share``, the share of samples it trains on (weight > 0), and
    ``targets_right``, the share of those whose target's top class is the true label. With
    perfect detection the student reaches the oracle (scripts/results/
    bench_student_truth_flags.md), so this says how much of a shortfall is the verdict's.

    Example:
        >>> t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> target_quality(t, torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 1]))
        {'trained_share': 0.6667, 'targets_right': 0.5}
    """
    kept = weights > 0
    right = targets.argmax(1) == true_labels.to(targets.device)
    share = float(kept.float().mean()) if len(kept) else 0.0
    acc = float(right[kept].float().mean()) if bool(kept.any()) else 0.0
    return {"trained_share": round(share, 4), "targets_right": round(acc, 4)}


def flagged_fit(
    in_fold: torch.Tensor, labels: torch.Tensor, flags: torch.Tensor, weights: torch.Tensor
) -> float | None:
    """The share of the flagged samples with weight > 0 whose given label ``in_fold``'s
    argmax predicts (``in_fold``: ``(N, C)``, each row the mean softmax of the replicas that
    trained on the sample); ``None`` when no flagged sample was trained on."""
    rows = flags.bool() & (weights > 0)
    if not bool(rows.any()):
        return None
    return float((in_fold[rows].argmax(1) == labels[rows].long()).float().mean())


def auto_rule(fit: float | None, threshold: float = AUTO_FIT_THRESHOLD) -> str:
    """``student.targets=auto``'s rule: ``forward`` when the replicas fit less than
    ``threshold`` of the flagged labels they train on (:func:`flagged_fit`), else (and
    without flagged samples) ``relabel``."""
    return "relabel" if fit is None or fit >= threshold else "forward"


def neighbour_votes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = VOTE_NEIGHBOURS
) -> torch.Tensor:
    """``(N, C)``: the given labels of each sample's ``k`` nearest other samples in
    ``features`` (cosine), as shares, smoothed by one pseudo-count spread over the classes
    (so a row is never one-hot: ``(votes + 1/C) / (k + 1)``).

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> neighbour_votes(x, torch.tensor([0, 0, 1, 1]), 2, k=1).argmax(1).tolist()
        [0, 0, 1, 1]
    """
    n = features.shape[0]
    k = max(1, min(int(k), n - 1))
    nb = knn(features.float(), k=k, metric="cosine")
    labels = labels.to(nb.index.device).long()
    votes = torch.nn.functional.one_hot(labels[nb.index], num_classes).sum(1).float()
    return (votes + 1.0 / num_classes) / (k + 1.0)


def reads_evidence(policy: StudentPolicy) -> bool:
    """Whether the rule's targets depend on the evidence (:func:`student_targets`, and the
    calibration and unlabelled rows of a student): every rule but ``given``, and ``prune`` /
    ``drop`` only through ``mix`` or ``unlabelled``.

    Example:
        >>> reads_evidence(StudentPolicy("relabel")), reads_evidence(StudentPolicy("drop"))
        (True, False)
    """
    if policy.targets == "given":
        return False
    if policy.targets in ("prune", "drop"):
        return bool(policy.mix) or bool(policy.unlabelled)
    return True


def evidence_source(source: str, fit: float | None, threshold: float = AUTO_FIT_THRESHOLD) -> str:
    """``student.evidence`` resolved: ``auto`` is ``knn`` when the replicas fit less than
    ``threshold`` of the flagged labels they train on (:func:`flagged_fit`), else (and without
    flagged samples) ``oof``; any other source as it is."""
    if source != "auto":
        return source
    return "oof" if fit is None or fit >= threshold else "knn"


def student_evidence(
    evidence: torch.Tensor, votes: torch.Tensor | None, source: str
) -> torch.Tensor:
    """The evidence the student's rule reads: the held-out ``evidence`` (``oof``, or when
    there are no ``votes``), the ``votes`` (``knn``) or their mean (``blend``)."""
    if source == "oof" or votes is None:
        return evidence
    votes = votes.to(evidence.device, evidence.dtype)
    return votes if source == "knn" else (evidence + votes) / 2


def unlabelled_rows(flags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the flagged samples a rule's ``weights`` leave out (weight 0), the
    unlabelled data of ``student.unlabelled``."""
    return flags.to(weights.device, torch.bool) & (weights == 0)


def _needed(value: torch.Tensor | None, shape: tuple[int, int], rule: str, what: str):
    """``value`` as float when it has ``shape``; else the error naming the rule and shape."""
    if value is None or tuple(value.shape) != shape:
        got = None if value is None else tuple(value.shape)
        raise ValueError(f"student.targets={rule} needs the {shape} {what}; got {got}")
    return value.float()


def residual_noise_matrix(
    posterior: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """``(C, C)`` ``P(given = i | true = j)`` among ``rows`` (bool ``(N,)``), from the expected
    (given, true) counts under the calibrated ``posterior`` ``(N, C)``: the noise left after
    the flagged samples are taken out. A true class with no mass keeps the identity's column.
    """
    n, c = posterior.shape
    post = posterior.float() * rows.to(posterior.device).float().unsqueeze(1)
    joint = torch.zeros(c, c, device=posterior.device).index_add_(0, labels.long(), post)
    mass = joint.sum(0, keepdim=True)
    eye = torch.eye(c, device=posterior.device)
    return torch.where(mass > 0, joint / mass.clamp_min(1e-12), eye)
