"""The Hydra command line: a thin wrapper over :func:`dcloop.train.train`.

Bad input (a config value, a data or label file; see :func:`dcloop.errors.user_error_message`)
ends the run with one line on stderr, ``dcloop: error: <message>``, and exit status 2.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead. Other exceptions keep Hydra's
traceback (exit status 1). In a multirun the first job with bad input ends the sweep the
same way.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from dcloop.errors import EXIT_USAGE, PREFIX, UserInputError, quote, user_error_message
from dcloop.resolvers import register as register_resolvers
from dcloop.runfolder import check_run_folder, is_launched_rank, lock_run_folder

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# Default run folders end in the process id (conf/config.yaml): two runs started in the
# same second from one directory get two folders.
OmegaConf.register_new_resolver("dcloop_pid", os.getpid, replace=True)
register_resolvers()  # ${dcloop_scale:...} of the model configs' replica_net

log = logging.getLogger(__name__)


def _full_error() -> bool:
    """Whether the user asked for full tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def exit_on_user_error(exc: BaseException, cfg: DictConfig | None = None) -> None:
    """Print ``dcloop: error: <message>`` and exit 2 if ``exc`` is bad input; else return.

    With the run's ``cfg``, a key the message names bare (``root=``) is named as the user
    types it (``data.source.root=``). Returns without doing anything when
    ``HYDRA_FULL_ERROR`` is set, so the caller's ``raise`` shows the traceback.
    """
    message = user_error_message(exc)
    if message is None or _full_error():
        return
    if cfg is not None:
        message = as_typed(message, cfg)
        resume = cfg.get("resume")
        if resume and message.startswith("the checkpoint "):  # which one: the one to resume
            message = f"the checkpoint resume={quote(str(resume))} " + message[15:]
    log.debug("bad input", exc_info=exc)
    sys.stderr.write(f"{PREFIX}{message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USAGE) from None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> float:
    _from_hydra(cfg)
    if not sys.stdout.isatty() and "enable_progress_bar" in cfg.trainer:  # nohup, SLURM logs
        cfg.trainer.enable_progress_bar = False  # one log line per epoch instead of bar redraws
    try:
        preflight(cfg)  # before torch and Lightning load: bad input is one line in a second
        _claim_run_folder(cfg)
        from dcloop.console import emit, summarize
        from dcloop.train import train

        _one_log_line_each()
        metrics = train(cfg)
        if metrics and cfg.get("mode", "parallel") == "parallel" and _rank_zero():
            emit(summarize(cfg.output_dir, metrics))
        return optimized_value(cfg, metrics)
    except Exception as exc:  # noqa: BLE001 - bad input becomes one line, the rest re-raises
        exit_on_user_error(exc, cfg)
        raise


def _claim_run_folder(cfg: DictConfig) -> None:
    """Lock the run folder and refuse an earlier run's files (:mod:`dcloop.runfolder`); rank
    0 does it for every rank a launcher starts."""
    if is_launched_rank():
        return
    lock_run_folder(cfg.output_dir)
    check_run_folder(
        cfg.output_dir, resume=cfg.get("resume"), overwrite=cfg.get("overwrite", False)
    )


#: ``data.source`` keys that name a file or folder (checked to exist before torch loads).
_PATH_KEYS = ("root", "test_root", "manifest", "test_manifest", "path", "test_path", "annotations")


def preflight(cfg: DictConfig) -> None:
    """The checks that need neither torch nor the data: run settings, the noise choice and
    that the named data files exist. The library checks all of it again, in full."""
    from dcloop._checks import check_run_config  # (numpy: `dcloop --help` does without)

    check_run_config(cfg)
    check_noise_choice(cfg)
    _check_common_values(cfg)
    data = cfg.get("data")
    source = data.get("source") if isinstance(data, DictConfig) else None
    named = []
    if isinstance(source, DictConfig):
        named = [(f"data.source.{k}", source[k]) for k in _PATH_KEYS if k in source.keys()]
    if isinstance(data, DictConfig) and "labels" in data.keys():
        named.append(("data.labels", data["labels"]))
    for key, value in named:
        if value is None or not isinstance(value, str) or "://" in value:
            continue
        if not os.path.exists(value):
            raise UserInputError(
                f"{key}={quote(value)} does not exist; expected an existing "
                f"{'folder' if key.endswith('root') else 'file'}"
            )


#: The ``cl.*`` choices, checked before torch loads. The library's own tuples live in
#: torch-importing modules (:mod:`dcloop.safety`, :mod:`dcloop.cl`, :mod:`dcloop.calibrate`);
#: tests/test_first_week_cli.py checks that these are the same.
CL_CHOICES = {
    "action": ("prune", "downweight", "detect"),
    "filter_by": (
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
        "predicted_neq_given", "low_self_confidence", "low_normalized_margin",
    ),
    "quality_method": ("self_confidence", "normalized_margin", "confidence_weighted_entropy"),
    "backend": ("torch", "cleanlab"),
    "calibrate": ("noise_aware", "posterior", "none"),
    "ready": ("plateau", "fixed"),
}  # fmt: skip


def _check_common_values(cfg: DictConfig) -> None:
    """The values most often mistyped (``data.batch_size=0``, ``model.optimizer.lr=-1``,
    ``cl.action=prun``), checked before torch loads; the library checks them again."""
    from dcloop._checks import check_choice, check_float, check_int  # (numpy: fast --help)

    cl = cfg.get("cl")
    if isinstance(cl, DictConfig):
        for key, allowed in CL_CHOICES.items():
            if key in cl.keys():
                check_choice(f"cl.{key}", cl[key], allowed)

    data = cfg.get("data")
    if isinstance(data, DictConfig):
        for key, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
            if key in data.keys() and data[key] is not None:
                check_int(f"data.{key}", data[key], minimum=minimum)
    optimizer = OmegaConf.select(cfg, "model.optimizer", throw_on_resolution_failure=False)
    if isinstance(optimizer, DictConfig):
        for key in ("lr", "weight_decay"):
            if key in optimizer.keys() and optimizer[key] is not None:
                check_float(f"model.optimizer.{key}", optimizer[key], low=0.0)


def check_noise_choice(cfg: DictConfig) -> None:
    """``noise.rate=0.3`` while the noise kind is ``none`` (the default for a user's own data)
    would inject nothing: one error naming the override to add instead of a silent no-op."""
    noise = cfg.get("noise")
    if noise is None or noise.get("kind") != "none":
        return
    rate = noise.get("rate") or 0.0
    if float(rate) > 0:
        raise UserInputError(
            f"noise.rate={rate} has no effect with noise=none (the default for your own data, "
            "whose labels are used as given); expected noise=symmetric, noise=asymmetric or "
            "noise=random_matrix beside it to inject noise on purpose"
        )


#: Where a bare key in a message is looked up first (the first section that has it wins).
_KEY_SECTIONS = ("data.source", "data", "model", "cl", "trainer", "noise", "augment")


def as_typed(message: str, cfg: DictConfig) -> str:
    """``message`` with each bare ``key=`` that the library wrote (``root=``, ``manifest=``),
    and a bare key that opens it (``action must be one of ...``), named as the override the
    user types (``data.source.root=``, ``cl.action``), looked up in ``cfg``'s sections in
    :data:`_KEY_SECTIONS` order; top-level keys (``folds=``) stay as they are."""

    def typed(match: re.Match) -> str:
        key, rest = match.group(1), match.group(2)
        if key in cfg.keys():
            return match.group(0)
        for section in _KEY_SECTIONS:
            node = OmegaConf.select(cfg, section, throw_on_resolution_failure=False)
            if isinstance(node, DictConfig) and key in node.keys():
                return f"{section}.{key}{rest}"
        return match.group(0)

    message = re.sub(r"^([a-z_][a-z0-9_]*)( must )", typed, message)
    return re.sub(r"(?<![\w.\-/])([a-z_][a-z0-9_]*)(=)", typed, message)


def _check_group_choices(argv: list[str]) -> None:
    """``model=nosuch``: one line naming the choices and exit 2 (Hydra's own message is a
    dozen lines and exit 1), before Hydra or torch start."""
    for arg in argv:
        group, sep, choice = arg.partition("=")
        if not sep or group.startswith(("+", "~", "hydra", "-")) or "." in group or not choice:
            continue
        folder = Path(CONFIG_DIR) / group
        if not folder.is_dir() or "," in choice or choice == "null" or "/" in choice:
            continue
        if not (folder / f"{choice}.yaml").is_file():
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            sys.stderr.write(
                f"{PREFIX}{group}={quote(choice)} is not a {group} config; expected one of "
                f"{', '.join(options)}\n"
            )
            raise SystemExit(EXIT_USAGE)


def _one_log_line_each() -> None:
    """Lightning adds its own console handler to its loggers, and they also reach Hydra's
    (console and run-folder log): every INFO line was printed twice. Hydra's handlers stay.
    A logger whose handler goes propagates to them (Lightning turns propagation off when it
    loads before the root logger has a handler; its lines would vanish otherwise)."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
                logger.propagate = True


def _rank_zero() -> bool:
    """This process is rank 0 (DDP starts one ``dcloop`` per device; one summary is printed)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _from_hydra(cfg: DictConfig) -> None:
    """What the run takes from Hydra's own state (read here only, not in the library):
    sequential folds of a multirun share the sweep folder unless ``sequential.work_dir`` is set.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    seq = cfg.get("sequential")
    if cfg.get("mode") != "sequential" or seq is None or seq.get("work_dir"):
        return
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        seq.work_dir = str(hc.sweep.dir)


def optimized_value(cfg: DictConfig, metrics: dict) -> float:
    """The value Hydra sweepers optimise: ``cfg.optimized_metric`` (``group/name`` in
    ``metrics.json``), validation accuracy by default. Tuning on test accuracy (what dcloop
    returned before) would select settings on the test set."""
    key = cfg.get("optimized_metric") or "val/accuracy"
    group, _, name = str(key).partition("/")
    value = (metrics.get(group) or {}).get(name)
    if value is None:
        if cfg.get("optimized_metric") is None or key == "val/accuracy":
            return float("nan")  # e.g. no validation split, or a sequential fold run
        raise UserInputError(
            f"optimized_metric={key!r} is not in this run's metrics.json; expected "
            "'group/name' such as 'val/accuracy', 'test/accuracy' or 'detection/f1'"
        )
    return float(value)


#: Where the keys of the old flat ``model.optim`` block live in the shipped model configs.
_OPTIM_MOVED = {
    "lr": "model.optimizer.lr",
    "weight_decay": "model.optimizer.weight_decay",
    "scheduler": "model.scheduler",
    "label_smoothing": "model.loss.label_smoothing",
    "vectorize": "model.vectorize",
}


def _check_moved_keys(argv: list[str]) -> None:
    """``model.optim.lr=...`` on a shipped model config (a command from before the partials):
    one line naming the new key."""
    moved = [a for a in argv if a.startswith("model.optim.") and "=" in a]
    if not moved:
        return
    model = next((a.partition("=")[2] for a in argv if a.startswith("model=")), "cnn")
    shipped = Path(CONFIG_DIR) / "model" / f"{model}.yaml"
    if not shipped.is_file() or "\noptim:" in "\n" + shipped.read_text():
        return  # a model config of the user's own, which may still have the flat block
    key, _, value = moved[0].partition("=")
    new = _OPTIM_MOVED.get(key.removeprefix("model.optim."))
    where = f"use {new}={value}" if new else f"its keys are now {list(_OPTIM_MOVED.values())}"
    sys.stderr.write(
        f"{PREFIX}{moved[0]}: the model configs write the optimiser, schedule and loss as "
        f"partials now (docs/models.md); {where}\n"
    )
    raise SystemExit(EXIT_USAGE)


def _help_text(self, help_cfg, cfg, args_parser, resolve: bool) -> str:
    """Hydra's ``Hydra.get_help``, filling in only the parts its template uses: Hydra lists
    every config group twice (its own and the app's, a third of ``dcloop --help``'s time),
    and dcloop's template shows only the app's."""
    import string

    def hydra_group(group: str) -> bool:
        return group.startswith("hydra/") or group == "hydra"

    parts = {
        "FLAGS_HELP": lambda: self.format_args_help(args_parser),
        "HYDRA_CONFIG_GROUPS": lambda: self.format_config_groups(hydra_group),
        "APP_CONFIG_GROUPS": lambda: self.format_config_groups(lambda g: not hydra_group(g)),
        "CONFIG": lambda: OmegaConf.to_yaml(cfg, resolve=resolve),
    }
    text = str(help_cfg.template)
    used = {k: make() for k, make in parts.items() if f"${k}" in text or f"${{{k}}}" in text}
    return string.Template(text).substitute(used)


def _faster_help(argv: list[str]) -> None:
    """``dcloop --help``: Hydra's help without the parts dcloop's template leaves out."""
    if not {"--help", "-h", "--hydra-help"} & set(argv):
        return
    from hydra._internal.hydra import Hydra

    if callable(getattr(Hydra, "get_help", None)):  # (the Hydra 1.3 method this replaces)
        Hydra.get_help = _help_text


def main() -> None:
    """Entry point of the ``dcloop`` console script and ``python -m dcloop``."""
    _check_moved_keys(sys.argv[1:])
    _check_group_choices(sys.argv[1:])
    _faster_help(sys.argv[1:])
    # Lightning 2.6 on torch 2.14 warns about its own pytree use on every batch.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # ... and advertises a cloud logger at every Trainer start: not what the console is for.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    try:
        _app()
    except BrokenPipeError:  # `dcloop --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
