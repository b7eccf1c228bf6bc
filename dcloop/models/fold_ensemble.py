"""K fold replicas of one network, trained together in one Lightning loop."""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.func import functional_call, stack_module_state

from dcloop._checks import check_all_classes_present, check_callable, check_labels
from dcloop.errors import UserInputError
from dcloop.folds import assign_folds
from dcloop.health.features import replica_outputs
from dcloop.models import optim
from dcloop.models.elr import EarlyLearning, reconcile_checkpoint
from dcloop.models.elr import check_options as check_elr
from dcloop.models.losses import fold_masked_loss
from dcloop.models.user_module import Init, optimizer_from_module, replica_factory
from dcloop.state import SampleTable, digest

log = logging.getLogger(__name__)

RUN_KEY = "dcloop_run"  # checkpoint entry: what defines the run (see FoldEnsemble.run_info)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in a network's repr

Vectorize = Literal["auto", "vmap", "loop"]


def _key(name: str) -> str:
    return name.replace(".", "__")


def _prepared(skeleton: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
    """``x`` through the network's parameter-free front end, when it declares one, and the
    keywords that make its ``forward`` skip it. A network with a ``prepare_input(x)`` method
    (e.g. :class:`~dcloop.models.audio.AudioCNN`'s log-mel) takes
    ``forward(prepare_input(x), prepared=True)`` for ``forward(x)``. The loop over replicas
    then computes the front end once per batch instead of once per replica; ``vmap``
    already runs it once."""
    prepare = getattr(skeleton, "prepare_input", None)
    if not callable(prepare) or isinstance(prepare, nn.Module):
        return x, None
    return prepare(x), {"prepared": True}


class FoldEnsemble(L.LightningModule):
    """K replicas of a network; replica k trains on every fold but k.

    Each batch ``(x, y, index)`` is loaded and augmented once and seen by all K
    replicas. Replica k's loss masks out the samples with ``fold[index] == k`` and
    weights the rest by ``weight[index]``, so after an epoch every sample has one
    replica that never trained on it: its out-of-fold (OOF) predictor.

    Parameters of the K replicas are stacked ``(K, ...)`` and the forward pass is
    vectorised with ``torch.func.vmap``; networks that vmap cannot batch fall back
    to a loop over replicas (``vectorize="auto"`` decides on the first batch).

    Args:
        net: factory returning a fresh ``nn.Module`` mapping ``(B, ...)`` to ``(B, C)``
            logits (for Hydra: ``_partial_: true``).
        labels: ``(N,)`` given labels of the training set, row = sample index.
        num_folds: K.
        num_classes: C (default: ``max(labels) + 1``).
        seed: seeds the folds, the replicas' initialisation and each epoch's RNG.
        true_labels: ``(N,)`` ground truth when known (noise experiments).
        lr, weight_decay: of the default optimiser, AdamW.
        scheduler: ``"cosine"`` (annealed over ``trainer.max_epochs``), ``"none"``, or a
            factory ``scheduler(optimizer)`` (a Hydra partial; ``T_max`` and ``total_steps``
            filled in from the trainer when left out).
        label_smoothing: of the training loss (cross-entropy).
        optimizer: factory ``optimizer(params)`` in place of ``AdamW(lr, weight_decay)``. It
            must be elementwise (SGD, Adam, AdamW, ...) for the stacked replicas to stay
            independent; LAMB, LARS, Adafactor, Shampoo, Muon and L-BFGS raise (see
            :mod:`dcloop.models.optim`).
        loss: per-sample loss ``(logits (n, C), targets (n,)) -> (n,)`` in place of
            cross-entropy (``reduction="none"`` is filled in when it takes one).
        vectorize: ``"auto"``, ``"vmap"`` or ``"loop"``.
        mask_folds: ``False`` trains every replica on all samples (a plain ensemble,
            for baselines: its "OOF" predictions are then in-sample).
        elr: ``{"lam": ..., "beta": ...}``: early-learning regularisation
            (:mod:`dcloop.models.elr`), each replica with its own running targets; ``None``:
            off.

    Example:
        >>> from functools import partial
        >>> from dcloop.models import FoldEnsemble, MLP
        >>> model = FoldEnsemble(partial(MLP, (1, 8, 8), 10), labels, num_folds=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        net: Callable[[], nn.Module],
        labels,
        *,
        num_folds: int = 5,
        num_classes: int | None = None,
        seed: int = 0,
        true_labels=None,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        label_smoothing: float = 0.0,
        vectorize: Vectorize = "auto",
        mask_folds: bool = True,
        optimizer: Callable | None = None,
        loss: Callable | None = None,
        elr: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        elr = check_elr(elr)
        if vectorize not in ("auto", "vmap", "loop"):
            raise ValueError(f"vectorize must be 'auto', 'vmap' or 'loop'; got {vectorize!r}")
        optim.check_scheduler(scheduler)
        check_callable("optimizer", optimizer, expected="a factory optimizer(params)")
        optim.check_optimizer_factory(optimizer)  # LAMB, LARS, ... raise here, before any data
        check_callable("net", net, allow_none=False, expected="a callable returning an nn.Module")
        self._optimizer, self._scheduler = optimizer, scheduler
        self._loss_fn = None if loss is None else optim.per_sample_loss(loss, label_smoothing)
        # Plain values only (factories as descriptions): checkpoints stay loadable as data.
        self.save_hyperparameters(
            {
                "num_folds": num_folds,
                "num_classes": num_classes,
                "seed": seed,
                "lr": lr,
                "weight_decay": weight_decay,
                "scheduler": optim.describe(scheduler),
                "label_smoothing": label_smoothing,
                "vectorize": vectorize,
                "mask_folds": mask_folds,
                "optimizer": optim.describe(optimizer),
                "loss": optim.describe(loss),
                "elr": elr,
            },
            ignore=[
                "net",
                "labels",
                "true_labels",
                "optimizer",
                "scheduler",
                "loss",
            ],  # (Lightning compares the dict with each init argument)
        )
        self.optim_info = optim.identity(
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            label_smoothing=label_smoothing,
            optimizer=optimizer,
            loss=loss,
        )
        labels = check_labels(labels, num_classes)
        self.num_classes = int(num_classes) if num_classes is not None else int(labels.max()) + 1
        check_all_classes_present(labels, self.num_classes, "training labels")
        folds = assign_folds(labels, num_folds, seed=seed)
        self.samples = SampleTable(labels, folds, true_labels)
        self.num_folds = int(num_folds)
        # cl.relabel (set by dcloop.callbacks.ConfidentLearning): see train_targets
        self.relabel = False
        self.elr = (
            None
            if elr is None
            else EarlyLearning(len(labels), self.num_classes, replicas=self.num_folds, **elr)
        )

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            replicas = [net() for _ in range(self.num_folds)]
        if not isinstance(replicas[0], nn.Module):
            raise ValueError(f"net() must return an nn.Module; got {type(replicas[0]).__name__}")
        params, buffers = stack_module_state(replicas)
        self._names = list(params)
        self._buffer_names = list(buffers)
        self.replica_params = nn.ParameterDict(
            {_key(n): nn.Parameter(p.detach().clone()) for n, p in params.items()}
        )
        for n, b in buffers.items():
            self.register_buffer("replica_buf__" + _key(n), b.clone())
        # The skeleton holds the architecture only; its tensors live on "meta".
        self._skeleton = [copy.deepcopy(replicas[0]).to("meta")]
        self._mode: str = "loop" if vectorize == "loop" else "vmap"
        self._auto = vectorize == "auto"
        # What defines the run, saved in checkpoints and checked on resume. Callers add
        # the data they know (dcloop.train adds a fingerprint of the sample sources).
        self.run_info: dict[str, Any] = {
            "seed": int(seed),
            "folds": self.num_folds,
            "num_classes": self.num_classes,
            **self.samples.identity(),
            "mask_folds": bool(mask_folds),
            "net": digest([type(replicas[0]).__qualname__, _ADDRESS.sub("", repr(replicas[0]))])
            + digest([f"{n}:{tuple(p.shape[1:])}:{p.dtype}" for n, p in params.items()]),
        }

    @classmethod
    def from_module(
        cls, module: nn.Module, labels, *, init: Init = "fresh", **kwargs: Any
    ) -> FoldEnsemble:
        """K fold replicas of a user's own module, e.g. a LightningModule.

        Its ``forward`` is the replicas' network and, unless ``optimizer=`` is given, the
        optimiser of its ``configure_optimizers`` (class and group settings) is rebuilt over
        the stacked parameters. Its ``training_step``, loss, schedulers and other hooks are
        not used (see :mod:`dcloop.models.user_module` for the boundary).

        Args:
            module: maps ``(B, ...)`` to ``(B, C)`` logits; copied, not trained itself.
            labels: as in :class:`FoldEnsemble`.
            init: ``"fresh"`` (``reset_parameters()`` per replica, seeded) or ``"copy"``
                (every replica starts from the module's weights, e.g. pretrained ones).
            **kwargs: any other :class:`FoldEnsemble` argument.

        Example:
            >>> ens = FoldEnsemble.from_module(MyLitModel(), labels, num_folds=5)  # doctest: +SKIP
        """
        if "optimizer" not in kwargs:
            kwargs["optimizer"] = optimizer_from_module(module)
        return cls(replica_factory(module, init), labels, **kwargs)

    # ----------------------------------------------------------------- replicas
    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def vectorized(self) -> bool:
        """True when the replicas run through ``torch.func.vmap``."""
        return self._mode == "vmap"

    @property
    def architecture(self) -> nn.Module:
        """One replica's network with its tensors on ``meta``: the architecture only."""
        return self._skeleton[0]

    def _stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: self.replica_params[_key(n)] for n in self._names}
        buffers = {n: getattr(self, "replica_buf__" + _key(n)) for n in self._buffer_names}
        return params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every replica: ``(B, ...) -> (K, B, C)``."""
        params, buffers = self._stacked()
        skeleton = self._skeleton[0]
        skeleton.train(self.training)
        if self._mode == "vmap":
            try:
                return self._forward_vmap(skeleton, params, buffers, x)
            except Exception as err:  # noqa: BLE001 - any vmap limitation triggers the fallback
                if not self._auto:
                    raise
                log.info(
                    "vmap cannot batch this network (%s); looping over %d replicas",
                    type(err).__name__,
                    self.num_folds,
                )
                self._mode = "loop"
        inp, kwargs = _prepared(skeleton, x)
        return torch.stack(
            [
                functional_call(
                    skeleton,
                    ({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()}),
                    (inp,),
                    kwargs,
                )
                for k in range(self.num_folds)
            ]
        )

    @staticmethod
    def _forward_vmap(skeleton, params, buffers, x):
        def one(p, b, inp):
            return functional_call(skeleton, (p, b), (inp,))

        return torch.vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, x)

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        # Per-epoch seed: a run resumed from a checkpoint draws the same randomness.
        torch.manual_seed(self.hparams.seed * 100_003 + self.current_epoch)

    def on_fit_start(self) -> None:
        # vectorize="auto": a loop over replicas on CPU (a vmapped convolution cost about twice
        # the loop there, scripts/results/bench_loop_overhead.md, and the loop skips each
        # replica's held-out rows); vmap on accelerators, with the loop as its fallback.
        if self._auto and self.device.type == "cpu":
            self._mode = "loop"
        if self.elr is not None and self._distributed:
            raise UserInputError(
                "model.elr keeps its running targets on one process; it does not run with "
                f"{self.trainer.world_size} devices yet: set trainer.devices=1 or model.elr=null"
            )

    def train_targets(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's targets and loss weights: ``(B,)`` given labels and the loop's
        weights; with :attr:`relabel` (``cl.relabel``), ``(B, C)`` distributions where the
        weight the action took from a given label goes to the suggested label instead::

            moved  = prior_weight - weight          (0 where nothing was lowered)
            target = (weight * onehot(given) + moved * onehot(suggested)) / prior_weight

        at weight ``prior_weight``: a pruned sample (weight 0) trains on its suggested label,
        a guard's back-off (weights restored) undoes it, and a row never acted on keeps its
        given label. Only confident flags are acted on (``cl.min_confidence``), so only they
        move.
        """
        s = self.samples
        labels, weights = s.labels[index], s.weights[index]
        if not self.relabel:
            return labels, weights
        prior = s.prior_weights[index]
        suggested = s.suggested[index]
        moved = torch.where(suggested >= 0, (prior - weights).clamp_min(0), 0.0)
        c = self.num_classes
        given = F.one_hot(labels, c).float()
        target = weights.unsqueeze(1) * given
        target = target + moved.unsqueeze(1) * F.one_hot(suggested.clamp_min(0), c).float()
        total = (weights + moved).unsqueeze(1)
        # weight 0 (nothing to move to): the given label, which the loss then ignores
        target = torch.where(total > 0, target / total.clamp_min(1e-12), given)
        return target, total.squeeze(1)

    def training_step(self, batch, batch_idx):
        x, _, index = batch
        s = self.samples
        folds = s.folds[index] if self.hparams.mask_folds else torch.full_like(index, -1)
        normalizer = self._global_weight_sum if self._distributed else None
        targets, weights = self.train_targets(index)
        if self._mode == "loop":
            loss, per_replica = self._loop_loss(x, targets, folds, weights, index)
        else:
            logits = self(x)
            penalty = None
            if self.elr is not None:
                replica = torch.arange(self.num_folds, device=x.device).unsqueeze(1)
                train = (folds.unsqueeze(0) != replica) & (weights > 0).unsqueeze(0)
                penalty = self.elr.penalty(logits, index, train=train)
            loss, per_replica = fold_masked_loss(
                logits,
                targets,
                folds,
                weights,
                label_smoothing=self.hparams.label_smoothing,
                normalizer=normalizer,
                loss_fn=self._loss_fn,
                penalty=penalty,
            )
        self.log(
            "train/loss",
            per_replica.mean(),
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=x.shape[0],
            sync_dist=self._distributed,  # reduced once, at epoch end
        )
        return loss

    def _loop_loss(self, x, targets, folds, weights, index) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`fold_masked_loss` with each replica run on the rows it trains on only.

        Replica k's forward and backward pass skips its held-out fold and the rows whose
        weight is 0 (pruned): the same loss and gradients as masking them (for networks
        without batch statistics), at about (K - 1) / K of the work. Selecting the rows asks
        the device for their count once per replica (the loop's mode is for CPUs).
        """
        k_all = self.num_folds
        replica = torch.arange(k_all, device=x.device).unsqueeze(1)
        w = (folds.unsqueeze(0) != replica).to(torch.float32) * weights.float().unsqueeze(0)
        den = w.sum(1)
        if self._distributed:
            den = self._global_weight_sum(den)
        params, buffers = self._stacked()
        skeleton = self._skeleton[0]
        skeleton.train(self.training)
        ce = self._loss_fn or functools.partial(
            F.cross_entropy, reduction="none", label_smoothing=self.hparams.label_smoothing
        )
        inp, kwargs = _prepared(skeleton, x)  # a shared front end: once, not once per replica
        per_replica = []
        for k in range(k_all):
            rows = (w[k] > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                per_replica.append(w.new_zeros(()))
                continue
            one = ({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()})
            logits = functional_call(skeleton, one, (inp[rows],), kwargs)
            loss_k = ce(logits.float(), targets[rows])
            if self.elr is not None:
                loss_k = loss_k + self.elr.penalty(logits, index[rows], replica=k)
            per_replica.append((w[k, rows] * loss_k).sum() / den[k].clamp_min(1e-8))
        stacked = torch.stack(per_replica)
        return stacked.sum(), stacked

    @property
    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def _global_weight_sum(self, local: torch.Tensor) -> torch.Tensor:
        """``(K,)`` weight sums of the global batch / world size (DDP, on the device)."""
        total = self.trainer.strategy.reduce(local.detach().clone(), reduce_op="sum")
        return total / self.trainer.world_size

    def _ensemble_step(self, batch, stage: str) -> torch.Tensor:
        x, y, _ = batch
        probs = self(x).float().softmax(-1).mean(0)
        acc = (probs.argmax(-1) == y).float().mean()
        self.log(
            f"{stage}/acc",
            acc,
            prog_bar=True,
            on_epoch=True,
            batch_size=x.shape[0],
            sync_dist=self._distributed,
        )
        return probs

    def validation_step(self, batch, batch_idx):
        self._ensemble_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._ensemble_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """Mean softmax of the K replicas, ``(B, C)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(-1).mean(0)

    def oof_probs(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Softmax of each sample's held-out replica: ``(B, C)``, no host sync."""
        probs = self(x).float().softmax(-1)
        rows = torch.arange(x.shape[0], device=probs.device)
        return probs[self.samples.folds[index], rows]

    def held_out_probs(self, x: torch.Tensor, fold: int) -> torch.Tensor:
        """Softmax of replica ``fold`` alone: ``(B, ...) -> (B, C)``.

        For a batch of fold ``fold``'s samples this is :meth:`oof_probs` at 1/K of its cost
        (the OOF pass batches by fold, see :class:`~dcloop.data.fold_batches.FoldBatchSampler`).
        ``fold`` is a host int, so choosing the replica's parameters (views of the stacked
        ones) asks nothing of the device.
        """
        params, buffers = self._stacked()
        skeleton = self._skeleton[0]
        skeleton.train(self.training)
        one = ({n: p[fold] for n, p in params.items()}, {n: b[fold] for n, b in buffers.items()})
        return functional_call(skeleton, one, (x,)).float().softmax(-1)

    def held_out_outputs(self, x: torch.Tensor, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Replica ``fold``'s softmax and penultimate embedding: ``(B, C)``, ``(B, D)``.

        One forward pass, as :meth:`held_out_probs` (the embedding is caught on the way, see
        :mod:`dcloop.health.features` for the hook a network can offer); for data health.
        """
        params, buffers = self._stacked()
        skeleton = self._skeleton[0]
        skeleton.train(self.training)
        one = ({n: p[fold] for n, p in params.items()}, {n: b[fold] for n, b in buffers.items()})
        logits, feats = replica_outputs(skeleton, one[0], one[1], x)
        return logits.float().softmax(-1), feats.float()

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        checkpoint[RUN_KEY] = {**self.run_info, "optim": self.optim_info, "max_epochs": max_epochs}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another run (seed, folds, data, model) before any
        weights load; warn where the resumed run cannot match an uninterrupted one."""
        saved = checkpoint.get(RUN_KEY)
        where = self._trainer.ckpt_path if self._trainer is not None else None
        name = f"checkpoint {where}" if where else "the checkpoint"
        self._fill_new_sample_state(checkpoint.get("state_dict", {}), name)
        reconcile_checkpoint(self.elr, checkpoint.get("state_dict", {}), name)
        if saved is None:
            rank_zero_warn(
                f"{name} has no {RUN_KEY!r} entry (written by an older dcloop): cannot check "
                "that it comes from this run's seed, folds, data and model; resuming anyway"
            )
            return
        differ = [k for k in self.run_info if saved.get(k) != self.run_info[k]]
        if differ:
            pairs = "; ".join(
                f"{k}: checkpoint {saved.get(k)!r}, this run {self.run_info[k]!r}" for k in differ
            )
            raise ValueError(
                f"{name} comes from a different run ({pairs}). Resume with the settings "
                "and data it was made with, or start a new run without `resume`"
            )
        now_optim = self.optim_info
        saved_optim = saved.get("optim", {})
        changed = {
            k: (saved_optim.get(k), now_optim.get(k))
            for k in {*saved_optim, *now_optim}
            if saved_optim.get(k) != now_optim.get(k)
        }
        if changed:
            diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            rank_zero_warn(
                f"resuming with other optimiser settings than {name} ({diff}): the result "
                "will differ from an uninterrupted run"
            )
        before = saved.get("max_epochs")
        now = self._trainer.max_epochs if self._trainer is not None else None
        if before is not None and now is not None and before != now:
            why = (
                " (its cosine LR schedule was annealed over its own max_epochs)"
                if "cosine" in str(self.optim_info.get("scheduler")).lower()
                else ""
            )
            rank_zero_warn(
                f"{name} was made with trainer.max_epochs={before}, this run has {now}: the "
                f"resumed run does not reproduce an uninterrupted {now}-epoch run{why}"
            )

    def _fill_new_sample_state(self, state: dict[str, Any], name: str) -> None:
        """Per-sample buffers added by a newer dcloop start from their initial values."""
        missing = [k for k in self.samples.state_dict() if f"samples.{k}" not in state]
        if not missing or not state:
            return
        for k in missing:
            state[f"samples.{k}"] = getattr(self.samples, k).detach().clone()
        rank_zero_warn(
            f"{name} has no per-sample {', '.join(missing)} (written by an older dcloop): "
            "starting from initial values, so the run may differ from an uninterrupted one"
        )

    def configure_optimizers(self):
        return optim.configure_optimizers(
            self.replica_params.parameters(),
            optimizer=self._optimizer,
            scheduler=self._scheduler,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            trainer=self._trainer,
            stacked=True,
        )

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by norm per replica: each replica's total gradient norm, as if trained alone.

        Lightning's ``gradient_clip_algorithm="norm"`` scales all parameters by one total
        norm, which over stacked ``(K, ...)`` parameters would let one replica's large
        gradient shrink the others' steps. Clipping by value is elementwise and unchanged.
        """
        algorithm = gradient_clip_algorithm or (
            self._trainer.gradient_clip_algorithm if self._trainer is not None else None
        )
        if str(getattr(algorithm, "value", algorithm) or "norm").lower() != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if gradient_clip_val is None and self._trainer is not None:
            gradient_clip_val = self._trainer.gradient_clip_val
        if not gradient_clip_val:
            return
        clip_grad_norm_per_replica(self.replica_params.parameters(), float(gradient_clip_val))


@torch.no_grad()
def clip_grad_norm_per_replica(params, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` applied to each replica's slice ``p[k]`` separately.

    Args:
        params: stacked ``(K, ...)`` parameters.
        max_norm: the largest 2-norm of one replica's gradient over all its parameters.

    Returns:
        ``(K,)`` the replicas' total gradient norms before clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1).float(), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
    coef = (max_norm / (total + eps)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.ndim - 1))))
    return total
