"""A finished run's ``config.yaml`` read as data, never as code.

A run folder can come from someone else (mailed, downloaded, shared on a cluster). Its
``config.yaml`` is parsed with ``yaml.safe_load`` and nothing in it is instantiated:
the run's training data is rebuilt only from dcloop's own data module
(:data:`DATA_TARGETS`), with plain values (strings, numbers, booleans, ``null`` and
lists / mappings of them). Anything else (another ``_target_``, Hydra's ``_args_`` /
``_partial_`` keys, a resolver such as ``${oc.env:...}``, an unknown option) is refused
with :class:`UnsafeRunConfig`, which names the key and what was expected.

Only plain references to other keys of the same file (``${seed}``) are resolved.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

from dcloop._checks import is_int
from dcloop.data import LabelNoiseDataModule
from dcloop.data.sources import LEGACY_KEYS, legacy_source

log = logging.getLogger(__name__)

#: The only ``data._target_`` values a run's data is rebuilt from.
DATA_TARGETS: tuple[str, ...] = (
    "dcloop.data.LabelNoiseDataModule",
    "dcloop.data.datamodule.LabelNoiseDataModule",
)
_SOURCE_CLASSES = (
    "Digits",
    "ImageFolder",
    "CsvManifest",
    "Torchvision",
    "AudioFolder",
    "AudioSynth",
)
#: The only ``data.source._target_`` values (source objects) a run's data is rebuilt from.
SOURCE_TARGETS: tuple[str, ...] = (
    *(f"dcloop.data.sources.{c}" for c in _SOURCE_CLASSES),
    *(f"dcloop.data.{c}" for c in _SOURCE_CLASSES),
    "dcloop.data.text.TextCSV",
    "dcloop.data.text.TextSynth",
    "dcloop.beyond.detection.CocoSource",
)
#: Data options that are not needed for the un-augmented training set (left out).
_UNUSED = ("train_transform", "augment", "num_workers", "batch_size", "eval_batch_size")
#: Options set from the top of the config, not from ``data``.
_FROM_TOP = ("noise", "seed")
#: The one ``data.augment._target_`` a run folder may name (left out, never instantiated).
AUGMENT_TARGET = "dcloop.augment.Augmenter.from_config"
_MAX_DEPTH = 12
_MAX_NODES = 10_000
_MAX_BYTES = 1 << 20
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")


class UnsafeRunConfig(ValueError):
    """A run's ``config.yaml`` asks for more than plain values for dcloop's own data."""


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``RUN/config.yaml`` as a plain dict (``None`` when there is none).

    Raises:
        UnsafeRunConfig: the file is too large, not YAML, or not a mapping.
    """
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_BYTES:
        raise UnsafeRunConfig(f"{path}: larger than {_MAX_BYTES} bytes; not a dcloop run config")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UnsafeRunConfig(f"{path}: not a readable YAML file ({err})") from err
    if not isinstance(cfg, dict):
        raise UnsafeRunConfig(
            f"{path}: expected a mapping of config keys, got {type(cfg).__name__}"
        )
    return cfg


def _lookup(root: dict, dotted: str, where: str):
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UnsafeRunConfig(f"{where}: ${{{dotted}}} refers to a key the file does not have")
        node = node[part]
    return node


def _plain(value: Any, root: dict, where: str, budget: list[int], depth: int = 0) -> Any:
    """``value`` checked to be plain data, with ``${key}`` references resolved."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise UnsafeRunConfig(f"{where}: nested too deeply or too large for a run config")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:  # "${seed}" keeps the referenced value's type
            return _plain(_lookup(root, whole[1], where), root, where, budget, depth + 1)
        text = _REF.sub(
            lambda m: str(_plain(_lookup(root, m[1], where), root, where, budget, depth + 1)),
            value,
        )
        if "${" in text:
            raise UnsafeRunConfig(
                f"{where}: {value!r} uses a resolver; only plain values and ${{key}} "
                "references are read from a run folder"
            )
        return text
    if isinstance(value, list):
        return [_plain(v, root, f"{where}[{i}]", budget, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        special = sorted(
            (str(k) for k in value if str(k).startswith("_") and str(k).endswith("_")),
            key=lambda k: k != "_target_",  # name the target first
        )
        if special:
            key = special[0]
            raise UnsafeRunConfig(
                f"{where}.{key}: {_short(value[key])} is a Hydra instantiation key; nothing "
                "from a run folder is instantiated (expected a plain value)"
            )
        return {
            str(k): _plain(v, root, f"{where}.{k}", budget, depth + 1) for k, v in value.items()
        }
    raise UnsafeRunConfig(f"{where}: {_short(value)} is not a plain value")


def _short(value: Any, limit: int = 80) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def plain_value(cfg: dict, *keys: str) -> Any:
    """``cfg[k1][k2]...`` checked to be plain data (``None`` when a key is absent)."""
    node: Any = cfg
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return _plain(node, cfg, ".".join(keys), [_MAX_NODES])


def data_kwargs(cfg: dict) -> dict[str, Any]:
    """Keyword arguments for :class:`~dcloop.data.LabelNoiseDataModule` from a run config.

    ``data._target_`` must be one of :data:`DATA_TARGETS`; every other ``data`` key must be
    an option of the data module, with a plain value. ``noise`` and ``seed`` come from the
    top of the config. Options the un-augmented training set does not need are dropped.

    Raises:
        UnsafeRunConfig: naming the key and what was expected.
    """
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise UnsafeRunConfig(f"data: expected a mapping of data options, got {_short(data)}")
    target = data.get("_target_")
    if target not in DATA_TARGETS:
        raise UnsafeRunConfig(
            f"data._target_: {_short(target)} is not one of dcloop's data sources "
            f"{list(DATA_TARGETS)}; a run folder's data is never built by another class"
        )
    params = inspect.signature(LabelNoiseDataModule.__init__).parameters
    allowed = [p for p in params if p not in ("self", *_FROM_TOP)]
    # noise / seed in `data` are interpolations of the top-level keys (read from there below):
    # checked to be plain, then left out
    for k in _FROM_TOP:
        if k in data:
            _plain(data[k], cfg, f"data.{k}", [_MAX_NODES])
    rest = {k: v for k, v in data.items() if k != "_target_" and k not in _FROM_TOP}
    aug = rest.get("augment")
    if isinstance(aug, dict) and aug.get("_target_") == AUGMENT_TARGET:
        # the augmenter the data configs build (its spec is the top-level `augment`): checked to
        # be plain, never built (the people tools read the un-augmented training set)
        _plain({k: v for k, v in aug.items() if k != "_target_"}, cfg, "data.augment", [_MAX_NODES])
        rest.pop("augment")
    source = rest.pop("source") if isinstance(rest.get("source"), dict) else None
    legacy = source is None and any(k in rest for k in LEGACY_KEYS)
    unknown = sorted(str(k) for k in rest if k not in allowed and not (legacy and k in LEGACY_KEYS))
    if unknown:
        raise UnsafeRunConfig(
            f"data: unknown option(s) {unknown}; expected options of LabelNoiseDataModule {allowed}"
        )
    kwargs = _plain(rest, cfg, "data", [_MAX_NODES])
    if source is not None:  # a source object: only dcloop's own, from plain values
        kwargs["source"] = _source_object(source, cfg)
    elif legacy:  # a run folder written before sources were objects (source: folder, root: ...)
        src, kwargs = legacy_source(kwargs.get("source", "digits"), kwargs)
        kwargs["source"] = src
    for k in _UNUSED:
        kwargs.pop(k, None)
    kwargs["noise"] = plain_value(cfg, "noise")
    seed = plain_value(cfg, "seed")
    seed = 0 if seed is None else seed
    if not is_int(seed):
        raise UnsafeRunConfig(f"seed: {_short(seed)} is not an integer")
    kwargs["seed"] = seed
    return kwargs


def _source_object(spec: dict, cfg: dict) -> Any:
    """``data.source`` given as ``{_target_: <one of SOURCE_TARGETS>, ...plain keys}``."""
    target = spec.get("_target_")
    if target not in SOURCE_TARGETS:
        raise UnsafeRunConfig(
            f"data.source._target_: {_short(target)} is not one of dcloop's source classes "
            f"{list(SOURCE_TARGETS)}; a run folder's data is never built by another class"
        )
    args = _plain(
        {k: v for k, v in spec.items() if k != "_target_"}, cfg, "data.source", [_MAX_NODES]
    )
    module, _, name = target.rpartition(".")
    import importlib

    return getattr(importlib.import_module(module), name)(**args)


def run_label_file(run_dir: str | os.PathLike) -> str | None:
    """The label file (``data.labels``) a run trained on, as a path string, or ``None``.

    Raises:
        UnsafeRunConfig: the value is not a plain string.
    """
    cfg = read_run_config(run_dir)
    if cfg is None:
        return None
    used = plain_value(cfg, "data", "labels")
    if used is not None and not isinstance(used, str):
        raise UnsafeRunConfig(
            f"{Path(run_dir) / 'config.yaml'}: data.labels is {_short(used)}; expected a path"
        )
    return used or None


def load_train_dataset(run_dir: str | os.PathLike, *, required: bool = False):
    """The un-augmented training dataset of a finished run, rebuilt from its config.

    Only dcloop's own data module is built, from plain values (see the module docstring).
    Returns ``None`` and logs a warning when the data cannot be rebuilt.

    Args:
        run_dir: the run folder.
        required: raise ``ValueError`` (naming the reason) instead of returning ``None``.
    """
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = read_run_config(run_dir)
        if cfg is None:
            raise FileNotFoundError(f"no config.yaml in {run_dir}")
        kwargs = data_kwargs(cfg)
    except UnsafeRunConfig as err:
        msg = f"refused to rebuild the run's data from {path}: {err}"
        if required:
            raise UnsafeRunConfig(msg) from err
        log.warning("%s; the report has no thumbnails", msg)
        return None
    except FileNotFoundError as err:
        if required:
            raise
        log.warning("%s: the report has no thumbnails", err)
        return None
    try:
        dm = LabelNoiseDataModule(**kwargs)
        dm.setup("fit")
        return dm.train_dataset
    except Exception as err:  # noqa: BLE001 - thumbnails are optional
        if required:
            raise ValueError(f"could not load the data of {run_dir} ({err})") from err
        log.warning("could not load the run's data (%s): the report has no thumbnails", err)
        return None
