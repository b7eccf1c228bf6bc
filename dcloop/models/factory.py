"""The network and the module settings of a run, from its ``model`` config.

:func:`net_factory` completes ``model.net`` (a Hydra partial) with what the data knows and
builds it once, at once, so a key the network does not take fails in seconds with the fix.
:func:`module_kwargs` turns the rest of ``model`` (optimiser, schedule, loss, vectorisation)
into keyword arguments of :class:`~dcloop.models.FoldEnsemble` or
:class:`~dcloop.models.Classifier`.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dcloop._checks import check_callable
from dcloop.models.fold_ensemble import FoldEnsemble
from dcloop.resolvers import register as register_resolvers

MODEL_CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_MISSING = re.compile(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+)$")
# Keys of the flat `model.optim` block and of `model.loss` (when it is not a partial).
_OPTIM_KEYS = ("lr", "weight_decay", "scheduler", "label_smoothing", "vectorize")
_LOSS_KEYS = ("label_smoothing",)
_ENSEMBLE_ONLY = ("vectorize", "mask_folds")
# Keys only the single network (Classifier) takes: the fold replicas do not mix (dcloop.mixup).
_SINGLE_ONLY = ("mixup",)
register_resolvers()  # ${dcloop_scale:...}: the model configs' replica_net reads it


def net_factory(
    net_cfg: DictConfig,
    in_shape,
    num_classes: int,
    extra: Mapping[str, Any] | None = None,
    *,
    example: torch.Tensor | None = None,
    check: bool = True,
    where: str = "model.net",
) -> Callable[[], nn.Module]:
    """The model config's partial, completed with the data's shape and class count.

    ``in_shape``, ``in_channels``, ``num_classes`` and the data source's ``extra`` keywords
    (``dm.net_kwargs``, e.g. a text vocabulary's ``vocab_size``) are filled in when the
    network's signature takes them and the config does not set them; ``num_classes`` also
    when the constructor only takes ``**kwargs`` (torchvision's ``resnet18(**kwargs)``).

    The network is built once here (the global RNG is left as it was), and run in eval mode
    on a batch of two: ``example`` (one input, no batch dimension) when given, else zeros of
    ``in_shape`` (float; integer zeros, token id 0, when float fails and the network has an
    ``nn.Embedding``). A key the network does not take, a missing argument, a failing
    forward or logits that are not ``(B, num_classes)`` raise here, naming the key, the
    target and the fix.

    Args:
        net_cfg: ``model.net``, a ``_target_`` config with ``_partial_: true``.
        in_shape: shape of one input, e.g. ``(3, 32, 32)``.
        num_classes: C.
        extra: keywords from the data source (``dm.net_kwargs``).
        example: one input of the data set, e.g. ``dm.train_dataset[0][0]``.
        check: ``False`` skips the trial build and forward (the partial is returned as is).
        where: the config path of ``net_cfg``, for messages.

    Returns:
        A factory: ``factory()`` is a fresh network mapping ``(B, *in_shape)`` to ``(B, C)``.

    Raises:
        ValueError: ``net_cfg`` is not a partial, or the network cannot be built or run.
    """
    factory = instantiate(net_cfg)
    if not isinstance(factory, functools.partial):
        raise ValueError(f"{where} must be a factory: set `_partial_: true` on it")
    target = str(net_cfg.get("_target_", getattr(factory.func, "__qualname__", factory.func)))
    params, var_kw = _signature(factory.func)
    known = {
        "in_shape": tuple(in_shape),
        "in_channels": int(in_shape[0]),
        "num_classes": int(num_classes),
        **dict(extra or {}),
    }
    fill = {k: v for k, v in known.items() if k in params and k not in factory.keywords}
    if var_kw and "num_classes" not in params and "num_classes" not in factory.keywords:
        fill["num_classes"] = int(num_classes)  # torchvision builders: **kwargs to the class
    if not var_kw and params:
        unexpected = [k for k in factory.keywords if k not in params]
        if unexpected:
            raise ValueError(_unexpected_message(unexpected, target, where))
    made = functools.partial(factory, **fill)
    if not check:
        return made
    if example is not None:
        inputs = [torch.stack([torch.as_tensor(example)] * 2)]
    else:
        inputs = [torch.zeros(2, *(int(d) for d in in_shape))]
    check_net(made, inputs, int(num_classes), target=target, where=where)
    return made


def replica_net_config(model_cfg: DictConfig) -> DictConfig:
    """The fold replicas' network config: ``model.net`` with ``model.replica_net``'s keys over
    it (e.g. ``{width: 16}``: replicas half as wide as the kept network); a key set to
    ``null`` keeps ``model.net``'s value. ``model.replica_net`` absent, ``null``, empty or all
    ``null``: ``model.net`` itself.

    With ``kept=student`` the K replicas only have to reach a verdict (held-out softmax,
    embeddings); the student, the model the run hands over, is built from ``model.net``.

    Raises:
        ValueError: ``model.replica_net`` is not a mapping, or sets ``_target_`` (the
            replicas are the same network at another size, not another network).
    """
    over = model_cfg.get("replica_net")
    if over is None:
        return model_cfg.net
    if not isinstance(over, DictConfig) or OmegaConf.is_list(over):
        raise ValueError(
            f"model.replica_net must be a mapping of model.net keys (e.g. {{width: 16}}); "
            f"got {OmegaConf.to_container(over) if isinstance(over, DictConfig) else over!r}"
        )
    if "_target_" in over or "_partial_" in over:
        raise ValueError(
            "model.replica_net sets keys of model.net (e.g. width), not _target_/_partial_: the "
            "fold replicas are the kept network at another size, not another network"
        )
    over = {k: v for k, v in over.items() if v is not None}  # null: as model.net
    if not over:
        return model_cfg.net
    with open_dict(model_cfg.net):  # a key net lacks: check_net_keys names it, not OmegaConf
        return OmegaConf.merge(model_cfg.net, over)


def replica_net_changes(model_cfg: DictConfig) -> dict[str, Any]:
    """``{key: value}`` of the fold replicas' network where it differs from ``model.net``
    (``model.replica_net``'s keys, resolved; empty when the replicas are ``model.net``)."""
    rep, net = replica_net_config(model_cfg), model_cfg.net
    over = model_cfg.get("replica_net") or {}
    changed = [k for k in over if over[k] is not None and (k not in net or rep[k] != net[k])]
    return {str(k): _plain_value(rep[k]) for k in changed}


def _plain_value(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def has_replica_net(model_cfg: DictConfig) -> bool:
    """Do the fold replicas differ from ``model.net``: does ``model.replica_net`` set a key
    (not null) to a value other than ``model.net``'s?"""
    return bool(replica_net_changes(model_cfg))


def check_net_keys(net_cfg: DictConfig, *, where: str = "model.net") -> None:
    """Before any data is loaded: does the network take every key that ``net_cfg`` sets?

    Reads the constructor's signature; one that takes only ``**kwargs`` (torchvision's
    builders) is built once with placeholder sizes (3 channels, 10 classes, 32x32) and only
    an unexpected-keyword error counts. The real sizes are checked by :func:`net_factory`.

    Raises:
        ValueError: naming the key, the target and the fix, e.g. ``use model=resnet18 or
            drop it with ~model.net.width``.
    """
    factory = instantiate(net_cfg)
    if not isinstance(factory, functools.partial):
        raise ValueError(f"{where} must be a factory: set `_partial_: true` on it")
    target = str(net_cfg.get("_target_", getattr(factory.func, "__qualname__", factory.func)))
    params, var_kw = _signature(factory.func)
    if not params and not var_kw:
        return
    if not var_kw:
        unexpected = [k for k in factory.keywords if k not in params]
        if unexpected:
            raise ValueError(_unexpected_message(unexpected, target, where))
        return
    placeholders = {"num_classes": 10, "in_channels": 3, "in_shape": (3, 32, 32)}
    fill = {k: v for k, v in placeholders.items() if k in params and k not in factory.keywords}
    if "num_classes" not in params and "num_classes" not in factory.keywords:
        fill["num_classes"] = 10
    with torch.random.fork_rng(devices=[]):
        try:
            factory(**fill)
        except TypeError as err:
            if _UNEXPECTED.search(str(err)):
                raise ValueError(_type_error_message(err, target, where)) from err
        except Exception:  # noqa: BLE001, S110 - placeholder sizes: net_factory checks for real
            pass


def check_net(
    factory: Callable[[], nn.Module],
    inputs: list[torch.Tensor],
    num_classes: int,
    *,
    target: str,
    where: str = "model.net",
) -> None:
    """Build ``factory()`` once (RNG untouched) and check its logits on ``inputs[0]``.

    With no ``inputs`` only the construction is checked.
    """
    with torch.random.fork_rng(devices=[]):
        try:
            net = factory()
        except TypeError as err:
            raise ValueError(_type_error_message(err, target, where)) from err
    if not isinstance(net, nn.Module):
        raise ValueError(f"{where} ({target}) must build an nn.Module; got {type(net).__name__}")
    if not inputs:
        return
    if inputs[0].is_floating_point() and any(
        isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in net.modules()
    ):
        inputs = [inputs[0], torch.zeros_like(inputs[0], dtype=torch.long)]  # token ids?
    net.eval()
    errors: list[Exception] = []
    for x in inputs:
        try:
            with torch.no_grad():
                out = net(x)
            break
        except Exception as err:  # noqa: BLE001 - any failure of the user's forward
            errors.append(err)
    else:
        x, err = inputs[0], errors[0]
        raise ValueError(
            f"{where} ({target}) fails on a batch of shape {tuple(x.shape)} ({x.dtype}) of the "
            f"run's data: {type(err).__name__}: {err}. Check that the network fits the data "
            "(in_channels, input size) or choose another model=..."
        ) from err
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (x.shape[0], num_classes):
        raise ValueError(
            f"{where} ({target}) maps a batch of shape {tuple(x.shape)} to {shape}; dcloop needs "
            f"logits of shape ({x.shape[0]}, {num_classes}) (batch, classes): set its number of "
            f"classes (num_classes is filled in when its constructor takes it) or its head"
        )


def module_kwargs(model_cfg: DictConfig, module: type = FoldEnsemble) -> dict[str, Any]:
    """Keyword arguments of ``module`` (FoldEnsemble or Classifier) from the ``model`` config.

    Reads the partials ``model.optimizer``, ``model.scheduler`` (a partial, ``cosine``,
    ``none`` or null), ``model.loss`` (a partial of a per-sample loss, or a mapping with
    ``label_smoothing``), ``model.vectorize`` and ``model.elr`` (:mod:`dcloop.models.elr`),
    and the older flat block ``model.optim`` (``lr``, ``weight_decay``, ``scheduler``,
    ``label_smoothing``, ``vectorize``). Missing keys keep the module's defaults (AdamW +
    cosine). Keys only the fold ensemble takes
    (``vectorize``) are dropped for a module that does not take them, and ``model.mixup``
    (:mod:`dcloop.mixup`, the single network's) for the fold ensemble.

    Example:
        >>> FoldEnsemble(net, labels, num_folds=5, **module_kwargs(cfg.model))  # doctest: +SKIP

    Raises:
        ValueError: an unknown key, or one setting given twice (``model.optim.lr`` and
            ``model.optimizer``).
    """
    out: dict[str, Any] = {}
    old = model_cfg.get("optim")
    if old is not None:
        old = OmegaConf.to_container(old, resolve=True)
        unknown = sorted(set(old) - set(_OPTIM_KEYS))
        if unknown:
            raise ValueError(
                f"model.optim has unknown keys {unknown}; it takes {', '.join(_OPTIM_KEYS)}"
            )
        out.update(old)
    if model_cfg.get("optimizer") is not None:
        both = [k for k in ("lr", "weight_decay") if k in out]
        if both:
            raise ValueError(
                f"model.optim.{both[0]} and model.optimizer are both set: put the optimiser's "
                f"settings in model.optimizer (e.g. model.optimizer.{both[0]}=...) and drop "
                f"model.optim.{both[0]}"
            )
        out["optimizer"] = _partial(model_cfg.optimizer, "model.optimizer")
    if "scheduler" in model_cfg:
        if "scheduler" in out:
            raise ValueError("model.optim.scheduler and model.scheduler are both set: keep one")
        sched = model_cfg.scheduler
        if sched is None or isinstance(sched, str):
            out["scheduler"] = sched or "none"
        else:
            out["scheduler"] = _partial(sched, "model.scheduler")
    loss = model_cfg.get("loss")
    if loss is not None:
        if "_target_" in loss:
            out["loss"] = _partial(loss, "model.loss")
        else:
            loss = OmegaConf.to_container(loss, resolve=True)
            unknown = sorted(set(loss) - set(_LOSS_KEYS))
            if unknown:
                raise ValueError(
                    f"model.loss has unknown keys {unknown}: give a `_target_` partial of a "
                    f"per-sample loss, or {', '.join(_LOSS_KEYS)}"
                )
            if "label_smoothing" in loss and "label_smoothing" in out:
                raise ValueError(
                    "model.optim.label_smoothing and model.loss.label_smoothing are both set"
                )
            out.update(loss)
    if "vectorize" in model_cfg:
        if "vectorize" in out:
            raise ValueError("model.optim.vectorize and model.vectorize are both set: keep one")
        out["vectorize"] = model_cfg.vectorize
    if model_cfg.get("mixup") is not None:
        out["mixup"] = model_cfg.mixup
    elr = model_cfg.get("elr")
    if elr is not None:
        out["elr"] = OmegaConf.to_container(elr, resolve=True) if OmegaConf.is_config(elr) else elr
    if "loss" in out and out.pop("label_smoothing", 0.0):
        raise ValueError("model.loss is a partial: put label_smoothing in it, not beside it")
    takes, _ = _signature(module)
    for k in [k for k in out if k not in takes]:
        if k not in _ENSEMBLE_ONLY + _SINGLE_ONLY:
            raise ValueError(f"{module.__name__} takes no {k!r} (from model config)")
        del out[k]
    return out


def _partial(node: DictConfig, where: str) -> Callable:
    made = instantiate(node, _partial_=True)
    return check_callable(
        where, made, allow_none=False, expected="a `_target_` config of a callable"
    )


def _signature(func) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): fill and check nothing
        return set(), False
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _config_for(target: str) -> str | None:
    """The ``model=`` option made for ``target``, if dcloop ships one."""
    stem = target.rsplit(".", 1)[-1]
    if (MODEL_CONF / f"{stem}.yaml").is_file():
        return stem
    for path in sorted(MODEL_CONF.glob("*.yaml")):
        net = OmegaConf.load(path).get("net") or {}
        if net.get("_target_") == target:
            return path.stem
    return None


def _unexpected_message(keys: list[str], target: str, where: str) -> str:
    option = _config_for(target)
    use = f"use model={option} (a config made for it) or " if option else ""
    drops = " ".join(f"~{where}.{k}" for k in keys)
    names = ", ".join(f"`{k}`" for k in keys)
    return (
        f"{where}: {target} takes no {names} ({where}.{keys[0]} comes from the model config, "
        f"probably another network's keys): {use}drop {'them' if len(keys) > 1 else 'it'} "
        f"with {drops}"
    )


def _type_error_message(err: TypeError, target: str, where: str) -> str:
    text = str(err)
    if m := _UNEXPECTED.search(text):
        return _unexpected_message([m.group(1)], target, where)
    if m := _MISSING.search(text):
        names = [n.strip(" '") for n in re.split(r",| and ", m.group(1)) if n.strip(" '")]
        sets = " ".join(f"{where}.{n}=..." for n in names)
        return (
            f"{where}: {target} needs {', '.join(names)}, which the config does not set: add {sets}"
        )
    return f"{where}: building {target} failed: {text}"
