"""Sequential mode: ``dcloop mode=sequential fold=k`` trains fold k and writes its OOF shard.

Fold k is one ordinary Trainer run of one network (dcloop's
:class:`~dcloop.models.Classifier` or the user's own LightningModule) on every fold
but k; an :class:`~dcloop.callbacks.OOFCollector` predicts the held-out fold k.
The shard, the fold's test probabilities and the run's labels go to a *shared* round
folder (not the per-job Hydra folder), so that the merge step
(:mod:`dcloop.scale.merge`) finds all K of them::

    <work_dir>/seq-<fingerprint>/round_<r>/
        meta.json, meta.npz          labels, folds, truth, sources, settings (every fold)
        oof_fold<k>.npz              index (M,), probs (M, C)       (fold k)
        test_fold<k>.npz, fold<k>.json   test probs, accuracy, sizes (fold k)
        label_issues.csv, ...        written by the merge, as in fold-parallel mode

``<work_dir>`` is ``sequential.work_dir`` or, by default, the multirun sweep folder
(``outputs/sequential`` for a single run). ``<fingerprint>`` hashes everything that
must agree between the folds of one cleaning run (data, noise, model, K, seed, cl,
epochs), so a sweep over other keys keeps its groups apart. Round ``r > 0`` reads
round ``r - 1``'s weights (its merge's ``step_state.npz``: the cleaning step's, with the
confidence gate and the ramp, as between epochs in fold-parallel mode) or, with
``sequential.issues``, prunes or down-weights the flagged samples of that issue table; the
last fold to finish merges (``auto_merge``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from dcloop._checks import check_int
from dcloop.callbacks import OOFCollector
from dcloop.data import EpochShuffleSampler, check_item
from dcloop.errors import UserInputError
from dcloop.folds import assign_folds
from dcloop.metrics import injected_noise
from dcloop.models import Classifier
from dcloop.models.factory import module_kwargs, net_factory
from dcloop.results import atomic_write, write_json
from dcloop.scale.merge import STEP_STATE, load_npz, merge_if_complete
from dcloop.signals import exit_on_signal
from dcloop.step import StepPolicy

log = logging.getLogger(__name__)

MODES = ("parallel", "sequential")
#: Config keys that must agree between the folds of one sequential run.
FINGERPRINT_KEYS = ("data", "noise", "model", "cl", "folds", "seed")


def fingerprint(cfg: DictConfig) -> str:
    """Short hash of the settings the K folds of one run share (not fold/round/paths)."""
    keys = {k: _plain(cfg.get(k)) for k in FINGERPRINT_KEYS}
    seq = cfg.get("sequential") or {}
    keys["module"] = _plain(seq.get("module"))
    keys["max_epochs"] = cfg.trainer.get("max_epochs")
    text = json.dumps(keys, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def work_root(cfg: DictConfig) -> Path:
    """``sequential.work_dir`` (the ``dcloop`` command sets it to the multirun folder), else
    ``outputs/sequential``."""
    seq = cfg.get("sequential") or {}
    if seq.get("work_dir"):
        return Path(seq.work_dir)
    return Path("outputs") / "sequential"


def round_dir(cfg: DictConfig, rnd: int | None = None) -> Path:
    """The shared folder of round ``rnd`` (default ``cfg.round``) of this run's folds."""
    rnd = int(cfg.get("round", 0)) if rnd is None else rnd
    return work_root(cfg) / f"seq-{fingerprint(cfg)}" / f"round_{rnd}"


def check_fold_cfg(cfg: DictConfig) -> tuple[int, int, int]:
    """``(fold, K, round)`` after checking them; errors name the value."""
    mode = cfg.get("mode", "parallel")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
    k, fold, rnd = cfg.folds, cfg.get("fold"), cfg.get("round", 0)
    if fold is None:
        raise ValueError(
            f"mode=sequential needs fold=<k> in [0, {k}) (all folds: dcloop -m mode=sequential "
            f"fold={','.join(str(i) for i in range(k))})"
        )
    fold = check_int("fold", fold, minimum=0, below=k, why=f"folds={k}")
    rnd = check_int("round", rnd, minimum=0)
    return fold, k, rnd


def step_policy(cfg: DictConfig) -> StepPolicy:
    """The run's ``cl`` settings, checked (before any training)."""
    policy = StepPolicy.from_options(OmegaConf.to_container(cfg.cl, resolve=True))
    if policy.cleaning.relabel:
        raise UserInputError(
            "cl.relabel=true is for mode=parallel (the fold replicas relabel between epochs); "
            "mode=sequential's folds train on weights only: set cl.relabel=false"
        )
    return policy


def previous_weights(
    cfg: DictConfig,
    rnd: int,
    num_samples: int,
    policy: StepPolicy,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """``(N,)`` loss weights for round ``rnd``, from round ``rnd - 1``, ``prior`` included.

    By default the weights the previous round's merge gave (``step_state.npz``: its
    cleaning step, with the confidence gate and the ramp; they already hold the label
    file's weights). With ``sequential.issues`` (or a round merged by an older dcloop), from
    that issue table's flags: ``prune`` gives flagged samples weight 0 (they leave the
    training folds), ``downweight`` ``max(floor, quality ** power)``, ``detect`` 1; times
    ``prior``.
    """
    seq = cfg.get("sequential") or {}
    state = round_dir(cfg, rnd - 1) / STEP_STATE
    if not seq.get("issues") and state.is_file():
        weights = load_npz(state, ("weights",), "the previous round's step state")["weights"]
        if weights.shape != (num_samples,):
            raise ValueError(
                f"{state} has {weights.shape[0]} weights, this run {num_samples} training "
                "samples: it belongs to another data set"
            )
        return weights.astype(np.float32)
    path = Path(seq.issues) if seq.get("issues") else round_dir(cfg, rnd - 1) / "label_issues.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"round={rnd} reads the issue table of round {rnd - 1}, but {path} does not exist: "
            "run and merge that round first, or set sequential.issues=<label_issues.csv>"
        )
    df = pd.read_csv(path).sort_values("index")
    if len(df) != num_samples or not np.array_equal(df["index"].to_numpy(), np.arange(num_samples)):
        raise ValueError(
            f"{path} has {len(df)} rows with indices not 0..{num_samples - 1}: it belongs to "
            f"another data set than this run's {num_samples} training samples"
        )
    flags = torch.as_tensor(df["flagged"].to_numpy().astype(bool))
    quality = torch.as_tensor(df["quality"].to_numpy(), dtype=torch.float32).nan_to_num(1.0)
    weights = policy.cleaning.weights(flags, quality).numpy()
    return weights if prior is None else weights * prior


def build_module(cfg: DictConfig, dm, weights: np.ndarray | None, fold: int) -> L.LightningModule:
    """dcloop's Classifier on ``model.net``, or ``sequential.module`` (the user's own).

    ``sequential.module`` is a ``_target_`` config of a LightningModule, or a factory
    (``_partial_: true``) that is called with whichever of ``num_classes``,
    ``in_shape``, ``in_channels``, ``weights`` and ``seed`` its signature takes.
    """
    seq = cfg.get("sequential") or {}
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if not seq.get("module"):
        kwargs = module_kwargs(cfg.model, Classifier)
        extra, example = getattr(dm, "net_kwargs", None), dm.train_dataset[0][0]
        net = net_factory(cfg.model.net, dm.input_shape, dm.num_classes, extra, example=example)
        return Classifier(
            net,
            dm.num_classes,
            weights=w,
            seed=cfg.seed * 1000 + fold,
            num_samples=len(dm.train_dataset),
            **kwargs,
        )
    made = instantiate(seq.module)
    if isinstance(made, functools.partial):
        params = inspect.signature(made.func).parameters
        known = {
            "num_classes": dm.num_classes,
            "in_shape": tuple(dm.input_shape),
            "in_channels": int(dm.input_shape[0]),
            "seed": cfg.seed * 1000 + fold,
        }
        if w is not None:
            known["weights"] = w
        kw = {k: v for k, v in known.items() if k in params and k not in made.keywords}
        # weight 0 leaves the training folds; weights strictly between need the module
        if w is not None and "weights" not in kw and bool(((w > 0) & (w < 1)).any()):
            raise ValueError(
                f"cl.action={cfg.cl.action!r} with cl.ramp_steps={cfg.cl.ramp_steps} needs "
                f"per-sample weights (some are between 0 and 1), but {made.func.__name__} "
                "takes no `weights` argument: add one (an (N,) tensor keyed by index, as "
                "dcloop.models.Classifier), or use cl.action=prune with cl.ramp_steps=1"
            )
        made = made(**kw)
    if not isinstance(made, L.LightningModule):
        raise ValueError(
            f"sequential.module must build a LightningModule; got {type(made).__name__}"
        )
    return made


def _save_npz(path: Path, **arrays) -> Path:
    """``np.savez`` through :func:`~dcloop.results.atomic_write` (no half-written shard)."""

    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    return atomic_write(path, save)


def _write_meta(out: Path, cfg: DictConfig, dm, folds: np.ndarray) -> None:
    """What the merge needs besides the shards; every fold writes the same content."""
    test_labels = np.asarray(dm.test_dataset.labels, dtype=np.int64)
    truth = dm.true_labels if dm.has_ground_truth else np.full(dm.num_train, -1)
    over = getattr(dm, "label_override", None)  # a label file (dcloop.people), or None
    _save_npz(
        out / "meta.npz",
        labels=np.asarray(dm.given_labels, dtype=np.int64),
        true_labels=np.asarray(truth, dtype=np.int64),
        folds=folds,
        test_labels=test_labels,
        sources=np.asarray(dm.train_sources, dtype=str),
        confirmed=np.zeros(dm.num_train, bool) if over is None else over.confirmed,
        prior_weights=np.ones(dm.num_train, np.float32) if over is None else over.weights,
    )
    write_json(
        {
            "num_samples": dm.num_train,
            "num_classes": dm.num_classes,
            "num_folds": int(cfg.folds),
            "round": int(cfg.get("round", 0)),
            "seed": int(cfg.seed),
            "source": dm.source,
            "class_names": list(dm.class_names),
            "cl": OmegaConf.to_container(cfg.cl, resolve=True),
            "noise_injected": injected_noise(dm),  # as a fold-parallel run's metrics
            "config": OmegaConf.to_container(cfg, resolve=False),
        },
        out / "meta.json",
    )


def _probs(module: L.LightningModule, loader: DataLoader, device) -> np.ndarray:
    """``(M, C)`` softmax of ``module`` over ``loader`` in eval mode (test set)."""
    module = module.to(device).eval()
    out = []
    with torch.inference_mode():
        for x, _, _ in loader:
            out.append(module(x.to(device)).float().softmax(-1))
    return torch.cat(out).cpu().numpy()  # one transfer, not one per batch


def run_fold(cfg: DictConfig) -> dict[str, Any]:
    """Train fold ``cfg.fold`` of ``cfg.folds``; write its shard; merge if it is the last.

    Args:
        cfg: a composed dcloop config with ``mode=sequential`` and ``fold`` set.

    Returns:
        ``{"fold", "round", "shard", "test": {"accuracy"}, "merged"}`` (``merged`` holds
        the merge's metrics when this fold completed the set, else ``None``).
    """
    start = time.perf_counter()
    fold, k, rnd = check_fold_cfg(cfg)
    policy = step_policy(cfg)  # checks the cl settings now, not after K trainings
    augment = (cfg.get("augment") or {}).get("kind", "none")
    if augment != "none":
        log.warning(
            "augment=%s applies to fold-parallel mode only; fold %d trains without it",
            augment,
            fold,
        )
    L.seed_everything(cfg.seed * 1000 + fold, workers=True, verbose=False)
    dm = instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=cfg.seed)
    dm.setup("fit")
    check_item(dm.train_dataset[0])
    n = dm.num_train
    folds = assign_folds(dm.given_labels, k, seed=cfg.seed)  # the FoldEnsemble's folds
    over = getattr(dm, "label_override", None)  # label-file weights (dcloop.people)
    prior = None if over is None else np.asarray(over.weights, dtype=np.float32)
    weights = previous_weights(cfg, rnd, n, policy, prior) if rnd > 0 else prior
    keep = folds != fold if weights is None else (folds != fold) & (weights > 0)
    train_idx, held_idx = np.flatnonzero(keep), np.flatnonzero(folds == fold)

    out = round_dir(cfg, rnd)
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "fold %d/%d, round %d: %d training / %d held-out samples; shards in %s",
        fold,
        k,
        rnd,
        train_idx.size,
        held_idx.size,
        out,
    )
    _write_meta(out, cfg, dm, folds)
    if fold == 0:
        dm.save(out)  # labels.csv, noise_matrix_true.csv, as in fold-parallel mode

    train_ds = Subset(dm.train_dataloader().dataset, train_idx.tolist())
    train_loader = DataLoader(
        train_ds,
        batch_size=dm.batch_size,
        sampler=EpochShuffleSampler(len(train_ds), seed=cfg.seed * 1000 + fold),
        num_workers=dm.num_workers,
        persistent_workers=dm.num_workers > 0,
    )
    held_loader = DataLoader(
        Subset(dm.train_dataset, held_idx.tolist()),
        batch_size=dm.eval_batch_size,
        num_workers=dm.num_workers,
    )
    module = build_module(cfg, dm, weights, fold)
    oof = OOFCollector(n, dm.num_classes, dataloader=held_loader, require_full_coverage=False)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer,
        callbacks=[oof],
        logger=logger,
        enable_checkpointing=False,
        default_root_dir=str(cfg.output_dir),
    )
    val = dm.val_dataloader() if is_overridden("validation_step", module) else None
    with exit_on_signal(trainer):  # SIGTERM / Ctrl+C: exit 143 / 130, not 0 (no shard written)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val)
    merged = None
    if trainer.is_global_zero:
        index, probs = oof.shard()
        if not np.array_equal(np.sort(index), held_idx):
            raise RuntimeError(
                f"fold {fold}: the OOF pass wrote {index.size} rows, expected the "
                f"{held_idx.size} held-out samples"
            )
        test_probs = _probs(module, dm.test_dataloader(), trainer.strategy.root_device)
        test_acc = float((test_probs.argmax(1) == dm.test_dataset.labels).mean())
        _save_npz(out / f"test_fold{fold}.npz", probs=test_probs)
        write_json(
            {
                "fold": fold,
                "round": rnd,
                "num_train": int(train_idx.size),
                "num_held_out": int(held_idx.size),
                "num_excluded": int(((folds != fold) & ~keep).sum()),
                "test_accuracy": test_acc,
                "wall_time_s": time.perf_counter() - start,
                "module": type(module).__name__,
            },
            out / f"fold{fold}.json",
        )
        # the shard last: its presence means this fold is complete
        shard = _save_npz(out / f"oof_fold{fold}.npz", index=index, probs=probs)
        seq = cfg.get("sequential") or {}
        if seq.get("auto_merge", True):
            merged = merge_if_complete(out)
    else:
        shard, test_acc = out / f"oof_fold{fold}.npz", float("nan")
    return {
        "fold": fold,
        "round": rnd,
        "shard": str(shard),
        "test": {"accuracy": test_acc},
        "merged": merged,
    }
