"""``train(cfg)``: one dcloop run from a composed config. Hydra lives only in ``cli``.

Every feature of a run (confident learning, weak classes, checkpoints, timing, the result
files, COCO write-back, discrepancy) is a callback listed in ``conf/callbacks/``; ``train``
builds the datamodule, the fold ensemble and the trainer, fits, tests and (``refit=true``)
retrains one network on the cleaned data.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dcloop._checks import check_choice, check_float, check_int, check_run_config
from dcloop.calibrate import calibrate
from dcloop.callbacks import ConfidentLearning, EpochCheckpoint, RunResults
from dcloop.callbacks.data_health import DataHealth, ensemble_features
from dcloop.callbacks.oof import predict_context
from dcloop.callbacks.results import find_callback
from dcloop.callbacks.verdict_stop import VerdictStop
from dcloop.data import check_item
from dcloop.errors import UserInputError
from dcloop.folds import check_num_folds
from dcloop.health.features import NoEmbedding
from dcloop.kept.save import replica_nets, save_kept_model
from dcloop.mixup import check_alpha, mix_point
from dcloop.models import Classifier, FoldEnsemble
from dcloop.models.coguess import CoGuess
from dcloop.models.factory import (
    check_net_keys,
    has_replica_net,
    module_kwargs,
    net_factory,
    replica_net_changes,
    replica_net_config,
)
from dcloop.models.losses import forward_nll
from dcloop.scale.fold_run import run_fold
from dcloop.signals import exit_on_signal
from dcloop.state import digest
from dcloop.student import (
    AUTO_FIT_THRESHOLD,
    FORWARD_RULES,
    StudentPolicy,
    auto_rule,
    evidence_source,
    flagged_fit,
    neighbour_votes,
    reads_evidence,
    student_evidence,
    student_targets,
    target_quality,
    unlabelled_rows,
)
from dcloop.timing import timed

log = logging.getLogger(__name__)

#: ``kept``: the model a run hands the user. ``student``: one network trained after the fold
#: replicas on the targets of their verdict (:mod:`dcloop.student`); ``ensemble``: the K fold
#: replicas' mean softmax.
KEPT_MODELS = ("student", "ensemble")


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[L.Callback]:
    """Every entry of the ``callbacks`` config with a ``_target_``, in config order (as in
    lightning-hydra-template). Entries that build to ``None`` (a feature switched off, e.g.
    ``checkpoint=false``) are left out; anything else that is not a Callback is an error."""
    out: list[L.Callback] = []
    for name, spec in (callbacks_cfg or {}).items():
        if spec is None:  # ~callbacks.<name> or callbacks.<name>=null
            continue
        if not (OmegaConf.is_dict(spec) and "_target_" in spec):
            raise UserInputError(
                f"callbacks.{name} must be a mapping with a _target_ (a Lightning Callback), "
                f"got {OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec!r}"
            )
        cb = instantiate(spec)
        if cb is None:
            continue
        if not isinstance(cb, L.Callback):
            raise UserInputError(
                f"callbacks.{name}: {spec._target_} built a {type(cb).__name__}, "
                "not a lightning Callback"
            )
        out.append(cb)
    return out


def lightning_trainer(*, threads: Any = "auto", **kwargs: Any) -> L.Trainer:
    """``lightning.Trainer(**kwargs)`` after setting torch's threads (``trainer.threads``, see
    :func:`resolve_threads`): the ``_target_`` of ``conf/trainer/*.yaml``."""
    n = resolve_threads(threads, kwargs)
    if n is not None:
        torch.set_num_threads(n)
    return L.Trainer(**kwargs)


def resolve_threads(threads: Any, trainer_kwargs: dict) -> int | None:
    """``trainer.threads``: torch's intra-op threads per process. ``auto``: on CPU, the cores
    shared out over the processes, and at most half of them each (torch's default of one
    thread per core ran a step 4-6x slower on 2 loaded cores); on GPU, torch's default."""
    if threads is None or threads == "none":
        return None
    if threads == "auto":
        if str(trainer_kwargs.get("accelerator", "auto")) != "cpu":
            return None
        devices = trainer_kwargs.get("devices", 1)
        procs = devices if isinstance(devices, int) and devices > 0 else 1
        return max(1, (os.cpu_count() or 1) // (2 * procs))
    return check_int("trainer.threads", threads, minimum=1, why="or 'auto' or null")


@dataclass
class Run:
    """Everything one run builds from its config."""

    dm: Any
    model: FoldEnsemble
    trainer: L.Trainer

    def callback(self, kind: type) -> Any:
        """The trainer's callback of type ``kind`` (``None`` if it has none)."""
        return find_callback(self.trainer, kind)

    @property
    def cl(self) -> ConfidentLearning | None:
        return self.callback(ConfidentLearning)

    @property
    def results(self) -> RunResults | None:
        return self.callback(RunResults)


def build(cfg: DictConfig, run_dir: Path) -> Run:
    """Instantiate the datamodule, module, callbacks and trainer of a run.

    All input checks (data path, labels, empty classes, K, dataset items) happen here,
    before any training starts; callbacks check what they need at setup.
    """
    check_net_keys(cfg.model.net)  # a key the network does not take: fail before the data loads
    check_net_keys(replica_net_config(cfg.model), where="model.replica_net")
    dm = instantiate(cfg.data)  # noise, seed, augment: interpolations in the data config
    dm.setup("fit")
    check_item(dm.train_dataset[0])
    check_num_folds(dm.given_labels, cfg.folds, class_names=getattr(dm, "class_names", None))
    model = FoldEnsemble(
        _net(cfg, dm, replica=True),
        dm.given_labels,
        num_folds=cfg.folds,
        num_classes=dm.num_classes,
        seed=cfg.seed,
        true_labels=dm.true_labels if dm.has_ground_truth else None,
        **module_kwargs(cfg.model, FoldEnsemble),
    )
    model.run_info["sources"] = digest(dm.train_sources)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    stop = verdict_stop(cfg)
    if stop is not None:
        callbacks.append(stop)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    precision = replica_precision(cfg, model.architecture)
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=bool(cfg.checkpoint),
        default_root_dir=str(run_dir),
        max_epochs=replica_epochs(cfg),
        **({} if precision is None else {"precision": precision}),
    )
    return Run(dm, model, trainer)


#: ``replica_precision``'s values besides ``auto`` and null: Lightning's mixed-precision modes.
REPLICA_PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")


def bf16_is_native(accelerator: str) -> bool:
    """Does this machine run bfloat16 matmuls and convolutions natively? On CUDA, the
    device's bf16 support; on CPU, oneDNN's (AVX512-BF16 or AMX): elsewhere bf16 autocast is
    emulated and slower than float32."""
    if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator not in ("cpu", "auto"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def convolutional(net: torch.nn.Module | None) -> bool:
    """Does ``net`` hold a convolution (``Conv1d/2d/3d``)? ``None``: not known, taken as yes."""
    if net is None:
        return True
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in net.modules())


def replica_precision(cfg: DictConfig, net: torch.nn.Module | None = None) -> str | None:
    """``replica_precision``: the fold replicas' ``trainer.precision`` when the student is
    kept (``kept=student``; they then only reach a verdict, and the student trains at
    ``trainer.precision``). ``auto``: ``bf16-mixed`` for a convolutional ``net`` (the
    replicas' architecture) where the machine runs bfloat16 natively
    (:func:`bf16_is_native`; on this project's CPU a ResNet-8 or SmallCNN step on 32x32
    images ran about 2x faster, an MLP's 1.4x slower, TextBoW's and AudioCNN's no faster:
    ``scripts/results/bench_bf16_step.md``), else as ``trainer.precision``;
    ``None``: as ``trainer.precision`` (also with ``kept=ensemble``, where the replicas are
    the kept model, or when ``trainer.precision`` is set)."""
    value = cfg.get("replica_precision")
    if value is None:
        return None
    if value != "auto" and value not in REPLICA_PRECISIONS:
        raise UserInputError(
            f"replica_precision must be auto, null or one of {', '.join(REPLICA_PRECISIONS)}; "
            f"got replica_precision={value}"
        )
    trainer = cfg.get("trainer") or {}
    if cfg.get("kept", "student") != "student" or trainer.get("precision") is not None:
        return None
    if value == "auto":
        native = bf16_is_native(str(trainer.get("accelerator", "cpu")))
        return "bf16-mixed" if native and convolutional(net) else None
    return value


def replica_epochs(cfg: DictConfig) -> int:
    """Epochs of the K fold replicas. With the student kept (``kept=student``) they only
    have to reach a verdict: ``replica_epochs`` (a fraction of ``trainer.max_epochs``, at least
    ``cl.warmup_epochs``) with a schedule of their own; the student then trains for the full
    ``trainer.max_epochs``. With the ensemble kept they train for ``trainer.max_epochs``."""
    epochs = int(cfg.trainer.max_epochs)
    if cfg.get("kept", "student") != "student":
        return epochs
    frac = cfg.get("replica_epochs", 1.0)
    check_float("replica_epochs", frac, low=0.0, high=1.0, low_open=True)
    warmup = int((cfg.get("cl") or {}).get("warmup_epochs", 1))
    return max(1, min(epochs, max(warmup, math.ceil(frac * epochs))))


def verdict_stop(cfg: DictConfig) -> VerdictStop | None:
    """``replica_stop``'s rule (:class:`~dcloop.callbacks.verdict_stop.VerdictStop`): with the
    student kept, the fold replicas stop once their verdict holds, not before ``floor`` (a
    fraction of their epochs); ``None`` when
    ``replica_stop.stable`` is null or the replicas are the kept model (``kept=ensemble``)."""
    spec = cfg.get("replica_stop") or {}
    if cfg.get("kept", "student") != "student" or spec.get("stable") is None:
        return None
    floor = check_float("replica_stop.floor", spec.get("floor", 0.0), low=0.0, high=1.0)
    return VerdictStop(
        stable=spec.get("stable"),
        patience=spec.get("patience", 3),
        floor=math.ceil(floor * replica_epochs(cfg)),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run k-fold training with in-loop confident learning; the callbacks write the results.

    Args:
        cfg: a composed dcloop config (see ``conf/config.yaml``).

    Returns:
        The metrics written to ``metrics.json`` (the CLI prints a summary of them,
        :func:`dcloop.console.summarize`).
    """
    check_run_config(cfg)  # seed, folds, max_epochs, resume: before anything is built
    kept = cfg.get("kept", "student")
    check_choice("kept", kept, KEPT_MODELS)
    student_policy(cfg)  # a bad student option: before any training
    verdict_stop(cfg)  # a bad replica_stop value: before the data loads
    replica_precision(cfg)
    if cfg.get("mode", "parallel") != "parallel":  # one fold per run: dcloop.scale
        return run_fold(cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = _clock()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build(cfg, run_dir)
    check_student_mixup(cfg, run.dm, student_policy(cfg))  # token ids: before any training
    with exit_on_signal(run.trainer):  # SIGTERM / Ctrl+C: exit 143 / 130, naming the checkpoint
        run.trainer.fit(run.model, datamodule=run.dm, ckpt_path=cfg.get("resume"))
    results = run.results
    goes_on = results is not None and (kept == "student" or bool(cfg.get("refit")))
    if goes_on:
        results.hold = True  # metrics.json and report.html once the student is tested
    run.trainer.test(run.model, datamodule=run.dm, verbose=False)  # RunResults times it
    metrics = dict(results.metrics) if results is not None else {}
    if run.trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml")
    if not metrics:
        return metrics
    extra, plain = keep_model(cfg, run, metrics, run_dir)
    extra["cost"] = run_cost(start, _clock(), plain)
    if goes_on:
        results.hold = False
        results.finish(run.trainer, **extra)
    elif run.trainer.is_global_zero:
        results.write_metrics(run.trainer, **extra)
    return dict(results.metrics)


def narrow_replicas(cfg: DictConfig) -> bool:
    """Do the fold replicas take ``model.replica_net``'s size? Only with ``kept=student``,
    where they only reach a verdict; with ``kept=ensemble`` they are the kept model, and
    ``model.net`` itself."""
    return cfg.get("kept", "student") == "student" and has_replica_net(cfg.model)


def _net(cfg: DictConfig, dm, *, replica: bool = False) -> Any:
    """The network factory for the data: shape, class count and the source's net keywords.
    ``replica``: the fold replicas' network (``model.replica_net`` over ``model.net`` where
    :func:`narrow_replicas`); else the kept network's."""
    extra = getattr(dm, "net_kwargs", None)
    example = dm.train_dataset[0][0]
    net_cfg, where = cfg.model.net, "model.net"
    if replica and narrow_replicas(cfg):
        net_cfg, where = replica_net_config(cfg.model), "model.replica_net"
    return net_factory(net_cfg, dm.input_shape, dm.num_classes, extra, example=example, where=where)


def keep_model(
    cfg: DictConfig, run: Run, metrics: dict[str, Any], run_dir: Path
) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """After the replicas' test: the refit (``refit=true``), the kept model (the student, or
    the replicas with ``kept=ensemble``) trained and saved in ``model/``.

    Returns:
        The ``metrics.json`` keys to update (``test``, ``kept``) and the student phase's
        (CPU, wall) seconds, the yardstick of :func:`run_cost` (``None`` without a student).
    """
    test = dict(metrics["test"])
    if cfg.get("refit"):  # the older switch: one network on the loop's weights (prune)
        with timed(run.trainer, "refit"):
            _, test["refit_accuracy"] = train_student(cfg, run, StudentPolicy(targets="prune"))
    kept: dict[str, Any] = dict(metrics.get("kept") or {"model": "ensemble"})
    plain = None
    if cfg.get("kept", "student") == "student":
        configured = student_policy(cfg)
        if verdict_evidence(run) is None:  # no verdict (cleaning stopped): nothing to resolve
            policy, auto = on_given_labels(configured), None
        else:
            policy, auto = resolve_auto(cfg, run, configured)  # before the yardstick
        with timed(run.trainer, "student_evidence"):
            votes = student_votes(cfg, run, policy)
        if votes is None and policy.evidence in ("knn", "blend"):  # no embedding: oof, said so
            policy = replace(policy, evidence="oof")
        before = _clock()
        with timed(run.trainer, "student"):
            student, acc = train_student(cfg, run, policy, votes=votes)
        # One plain run of the full schedule: the student's seconds, per epoch, x the epochs.
        scale = int(cfg.trainer.max_epochs) / student_epochs(cfg, policy)
        plain = tuple((b - a) * scale for a, b in zip(before, _clock(), strict=True))
        test.update(accuracy=acc, student_accuracy=acc)
        kept = {"model": "student", "test_accuracy": acc, "targets": policy.targets}
        kept["evidence"] = policy.evidence
        kept["policy"] = configured.as_dict()  # as configured; targets/evidence: as used
        table = run.model.samples
        if table.has_ground_truth and policy.targets not in FORWARD_RULES:
            kept.update(target_quality(student.targets, student.weights, table.true_labels))
        if auto is not None:  # student.targets / student.evidence = auto: the choice, and on what
            kept["auto"] = auto
        nets, kind = [student.net], "single"
    else:
        nets, kind = replica_nets(run.model, _net(cfg, run.dm, replica=True)), "ensemble"
    if narrow_replicas(cfg):  # the replicas' size, where not model.net's
        kept["replica_net"] = replica_net_changes(cfg.model)
    precision = replica_precision(cfg, run.model.architecture)
    if precision is not None:  # the replicas' own precision (auto: what it resolved to)
        kept["replica_precision"] = precision
    stop = run.callback(VerdictStop)
    if stop is not None:  # replica_stop: where the replicas stopped (None: schedule run out)
        kept["replica_stop"] = stop.summary()
    if run.trainer.is_global_zero:
        with timed(run.trainer, "result_files"):
            where = save_kept_model(
                run_dir,
                cfg=cfg,
                dm=run.dm,
                nets=nets,
                kind=kind,
                name=kept["model"],
                test_accuracy=test["accuracy"],
            )
        kept["path"] = str(where.relative_to(run_dir) if where.is_relative_to(run_dir) else where)
    return {"test": test, "kept": kept}, plain


def _clock() -> tuple[float, float]:
    """(process CPU seconds, this process and its finished children; wall seconds)."""
    cpu = time.process_time()
    try:
        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += kids.ru_utime + kids.ru_stime
    except ImportError:  # pragma: no cover - not POSIX
        pass
    return cpu, time.perf_counter()


def run_cost(
    start: tuple[float, float], end: tuple[float, float], plain: tuple[float, float] | None
) -> dict[str, Any]:
    """What the run cost, against one plain training run of the same network.

    The student is one plain run (the same network, data, epochs and recipe; only its
    targets differ), so its seconds are the yardstick: ``ratio`` is the whole run's seconds
    over the student's (scaled to ``trainer.max_epochs`` when ``student.epochs`` < 1).
    ``plain`` is ``None`` when no student trained (``kept=ensemble``): the ratio is then not
    estimated (``scripts/bench_kept.py`` measures it).
    """
    cpu, wall = end[0] - start[0], end[1] - start[1]
    out: dict[str, Any] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}
    if plain is not None and plain[0] > 0 and plain[1] > 0:
        out.update(
            plain_cpu_s=round(plain[0], 3),
            plain_wall_s=round(plain[1], 3),
            cpu_ratio=round(cpu / plain[0], 3),
            wall_ratio=round(wall / plain[1], 3),
        )
    return out


def student_policy(cfg: DictConfig) -> StudentPolicy:
    """The ``student`` block of the config (``conf/config.yaml``) as a validated policy."""
    block = cfg.get("student") or {}
    fields = set(StudentPolicy.__dataclass_fields__)
    unknown = sorted(set(block) - fields)
    if unknown:
        raise UserInputError(
            f"unknown student option(s) {unknown}; the student block takes {sorted(fields)}"
        )
    try:
        policy = StudentPolicy(**{k: block[k] for k in block})
    except ValueError as err:
        raise UserInputError(str(err)) from err
    alpha = cfg.model.get("mixup")
    alpha = 0.0 if alpha is None else check_alpha(alpha, "model.mixup")
    if alpha and cfg.get("mode", "parallel") == "parallel":
        raise UserInputError(
            f"model.mixup={alpha:g}: the K fold replicas of mode=parallel do not mix (a mixed "
            f"pair would train a replica on its held-out fold); set student.mixup={alpha:g} "
            "for the kept network and model.mixup=0 (or mode=sequential)"
        )
    if policy.init == "replica" and narrow_replicas(cfg):
        over = OmegaConf.to_container(cfg.model.replica_net, resolve=True)
        fix = " ".join(f"model.replica_net.{k}=null" for k, v in over.items() if v is not None)
        raise UserInputError(
            f"student.init=replica carries fold replica 0's weights over, but model.replica_net="
            f"{over} makes the replicas another size than the student: set {fix} (replicas "
            "the student's size) or student.init=scratch"
        )
    return policy if policy.mixup is not None else replace(policy, mixup=alpha)


def check_student_mixup(cfg: DictConfig, dm, policy: StudentPolicy) -> None:
    """Before the replicas train: can the student's batches be mixed (:mod:`dcloop.mixup`)?"""
    if cfg.get("kept", "student") == "student" and policy.mixup:
        mix_point(_net(cfg, dm)(), dm.train_dataset[0][0], "student.mixup")


def student_epochs(cfg: DictConfig, policy: StudentPolicy) -> int:
    """The student's epochs: ``student.epochs`` of ``trainer.max_epochs``, at least one."""
    epochs = int(cfg.trainer.max_epochs)
    return max(1, min(epochs, math.ceil(policy.epochs * epochs)))


def verdict_evidence(run: Run) -> torch.Tensor | None:
    """The replicas' final held-out evidence the student learns from, or ``None`` when it
    must train on the given labels: no confident-learning callback or evidence, or cleaning
    stopped for harm."""
    cl = run.cl
    if cl is None or cl.stopped:
        return None
    return cl.evidence if cl.evidence is not None else cl.collector.probs


def on_given_labels(policy: StudentPolicy) -> StudentPolicy:
    """``policy`` as it trains without a verdict: the given labels, no evidence."""
    return replace(policy, targets="given", mix=0.0, evidence="oof")


def train_student(
    cfg: DictConfig, run: Run, policy: StudentPolicy, votes: torch.Tensor | None = None
) -> tuple[Classifier, float]:
    """Train the kept network: one network, on all samples, on the targets the fold
    replicas' final verdict gives (:func:`dcloop.student.student_targets`); the same recipe
    (net, optimiser, schedule, epochs) as one plain run. ``student.init=replica`` starts it
    from fold replica 0's weights instead of from scratch, ``student.epochs`` shortens its
    schedule (:func:`student_epochs`). ``votes`` (:func:`student_votes`) join the evidence as
    ``policy.evidence`` says (:func:`dcloop.student.student_evidence`).

    Returns:
        The trained :class:`~dcloop.models.Classifier` and its test accuracy.
    """
    dm, table, cl = run.dm, run.model.samples, run.cl
    evidence = verdict_evidence(run)
    if evidence is None:
        if cl is not None and cl.stopped:
            log.warning("cleaning was stopped for harm: the student trains on the given labels")
        policy = on_given_labels(policy)
        evidence = torch.full((len(table), dm.num_classes), 1.0 / dm.num_classes)
    else:
        evidence = student_evidence(evidence, votes, evidence_source(policy.evidence, None))
    net = _net(cfg, dm)
    if policy.init == "replica":  # carry on from fold replica 0's weights
        net = _from_replica(net, replica_nets(run.model, net, only=0)[0].state_dict())
    model = build_student(
        cfg,
        net,
        dm.num_classes,
        policy,
        labels=table.labels,
        evidence=evidence,
        flags=table.flagged,
        weights=table.weights,
        folds=table.folds,
    )
    ckpt = StudentCheckpoint(Path(cfg.output_dir) / "checkpoints", policy.targets)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[ckpt] if cfg.get("checkpoint") else [],
        logger=False,
        enable_checkpointing=bool(cfg.get("checkpoint")),
        default_root_dir=str(cfg.output_dir),
        max_epochs=student_epochs(cfg, policy),
    )
    # A run resumed after a kill in this phase goes on from the student's own checkpoint,
    # beside the replicas' checkpoint it was resumed from.
    resume = Path(cfg.resume).with_name(ckpt.FILE_NAME) if cfg.get("resume") else None
    resume = resume if resume is not None and resume.is_file() else None
    if resume is not None:
        log.info("resuming the student from %s", resume)
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    test = trainer.test(model, datamodule=dm, verbose=False)
    return model, float(test[0]["test/acc"])


def resolve_auto(
    cfg: DictConfig, run: Run, policy: StudentPolicy
) -> tuple[StudentPolicy, dict[str, Any] | None]:
    """``student.targets=auto`` and ``student.evidence=auto``: the policy with the rule and
    the evidence chosen on the replicas' fit of the flagged labels (:func:`in_fold_probs`,
    :func:`dcloop.student.auto_rule`, :func:`dcloop.student.evidence_source`) and what they
    were chosen on; a policy with neither as it is, with ``None``. ``student.evidence=auto``
    with a rule that reads no evidence (:func:`dcloop.student.reads_evidence`) is ``oof``,
    without the replicas' pass."""
    if policy.evidence == "auto" and policy.targets != "auto" and not reads_evidence(policy):
        policy = replace(policy, evidence="oof")
    if "auto" not in (policy.targets, policy.evidence):
        return policy, None
    table = run.model.samples
    with timed(run.trainer, "auto_rule"):
        probs = in_fold_probs(cfg, run)
        fit = flagged_fit(probs, table.labels.cpu(), table.flagged.cpu(), table.weights.cpu())
        if run.trainer.is_global_zero:  # beside oof_probs.npy, for a look at what they fit
            np.save(Path(cfg.output_dir) / "in_fold_probs.npy", probs.numpy())
    info: dict[str, Any] = {"flagged_fit": fit, "threshold": AUTO_FIT_THRESHOLD}
    fitted = "none" if fit is None else f"{fit:.1%}"
    if policy.targets == "auto":
        policy = replace(policy, targets=auto_rule(fit))
        info["rule"] = info["targets"] = policy.targets
        log.info(
            "student.targets=auto: the replicas fit %s of the flagged labels they train on "
            "(threshold %.2f): the student uses %s",
            fitted,
            AUTO_FIT_THRESHOLD,
            policy.targets,
        )
    if policy.evidence == "auto":
        policy = replace(policy, evidence=evidence_source("auto", fit))
        info["evidence"] = policy.evidence
        log.info(
            "student.evidence=auto: the replicas fit %s of the flagged labels they train on "
            "(threshold %.2f): the flagged samples are relabelled from %s",
            fitted,
            AUTO_FIT_THRESHOLD,
            "their neighbours' labels" if policy.evidence == "knn" else "the held-out softmax",
        )
    return policy, info


def student_votes(cfg: DictConfig, run: Run, policy: StudentPolicy) -> torch.Tensor | None:
    """``(N, C)`` :func:`dcloop.student.neighbour_votes` in the replicas' mean embedding when
    ``policy.evidence`` needs them (``knn``, ``blend``), else ``None``. The embedding is data
    health's (:attr:`DataHealth.train_embedding`, computed at the end of fit) or one pass of
    the replicas over the training set; a net without an embedding falls back to the
    held-out softmax, with a warning."""
    if policy.evidence not in ("knn", "blend"):
        return None
    health = run.callback(DataHealth)
    feats = health.train_embedding if health is not None else None
    if feats is None:
        try:
            feats = ensemble_features(run.model, run.dm.oof_dataloader())
        except NoEmbedding as err:
            log.warning("student.evidence=%s: no embedding (%s); using oof", policy.evidence, err)
            return None
    table = run.model.samples
    return neighbour_votes(feats, table.labels, run.dm.num_classes).cpu()


def in_fold_probs(cfg: DictConfig, run: Run) -> torch.Tensor:
    """``(N, C)``: each training sample's mean softmax over the fold replicas that trained on
    it (every replica but its held-out fold's), one pass over the training set in eval mode
    on the replicas' device, at their precision. ``student.targets=auto`` reads the replicas'
    fit from it."""
    model, dm = run.model, run.dm
    nets = replica_nets(model, _net(cfg, dm, replica=True))
    device = next(model.parameters()).device
    folds = model.samples.folds.cpu()
    out = torch.zeros(len(folds), dm.num_classes)
    with torch.no_grad(), predict_context(run.trainer):  # the replicas' precision
        nets = [net.to(device) for net in nets]
        for x, _, index in dm.oof_dataloader():
            index = index.cpu()
            x, held = x.to(device), folds[index].to(device)
            total = sum(
                net(x).float().softmax(-1) * (held != k).unsqueeze(1) for k, net in enumerate(nets)
            )
            out[index] = total.cpu() / max(1, len(nets) - 1)  # one copy to the host a batch
    return out


def build_student(
    cfg: DictConfig,
    net,
    num_classes: int,
    policy: StudentPolicy,
    *,
    labels: torch.Tensor,
    evidence: torch.Tensor,
    flags: torch.Tensor,
    weights: torch.Tensor,
    folds: torch.Tensor,
) -> Classifier:
    """The student's untrained :class:`~dcloop.models.Classifier`: the run's model options,
    the rule's targets and weights from the verdict (:func:`dcloop.student.student_targets`;
    calibrated per fold for ``posterior`` and the forward rules), the forward loss for those,
    ``student.mixup``, and the left-out samples as unlabelled data with ``student.unlabelled``
    (:class:`~dcloop.models.coguess.CoGuess`). ``net`` is the network factory."""
    labels, evidence = labels.cpu().long(), evidence.float().cpu()
    flags, weights = flags.cpu().bool(), weights.cpu().float()
    posterior = noise = None
    if policy.targets in ("posterior", *FORWARD_RULES):
        cal = calibrate(evidence, labels, folds.cpu())
        posterior, noise = cal.posterior, cal.noise_matrix
    targets, weights = student_targets(
        labels,
        evidence,
        flags,
        policy,
        weights=weights,
        posterior=posterior,
        noise_matrix=noise,
    )
    kwargs = module_kwargs(cfg.model, Classifier)
    if policy.targets in FORWARD_RULES:  # -log <M[given], p>, in place of model.loss
        if kwargs.get("loss") is not None or kwargs.get("label_smoothing"):
            log.warning(
                "student.targets=%s: the student trains with the forward-corrected loss "
                "(dcloop.models.losses.forward_nll), not model.loss / label_smoothing",
                policy.targets,
            )
        kwargs.pop("label_smoothing", None)
        kwargs["loss"] = forward_nll
    if policy.mixup is not None:  # student.mixup, in place of model.mixup
        kwargs["mixup"] = policy.mixup
    rows = unlabelled_rows(flags, weights)
    if policy.unlabelled and policy.targets != "given" and bool(rows.any()):
        kwargs["coguess"] = CoGuess(
            evidence,
            rows,
            weight=policy.unlabelled,
            temperature=policy.sharpen,
            view=policy.view,
        )
    return Classifier(net, num_classes, targets=targets, weights=weights, seed=cfg.seed, **kwargs)


def _from_replica(factory, state: dict[str, torch.Tensor]):
    """A network factory whose networks start from ``state`` (a fold replica's weights)."""

    def build():
        net = factory()
        net.load_state_dict(state)
        return net

    return build


class StudentCheckpoint(EpochCheckpoint):
    """``student-<targets>.ckpt`` beside the replicas' ``last.ckpt``, after every student
    epoch: ``resume=<run>/checkpoints/last.ckpt`` after a kill in the student phase restores
    the replicas' final state, then the student from here."""

    def __init__(self, dirpath: str | Path, targets: str) -> None:
        super().__init__(dirpath)
        self.FILE_NAME = f"student-{targets}.ckpt"
