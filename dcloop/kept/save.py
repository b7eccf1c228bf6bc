"""Saving the kept model of a run: ``RUN/model/`` (see :mod:`dcloop.kept.spec` for the format).

``train()`` calls :func:`save_kept_model` at its end with the network(s) it keeps: one
(``kind="single"``: a student or a refit network) or the K fold replicas
(``kind="ensemble"``: their softmax averaged). :func:`replica_nets` turns a
:class:`~dcloop.models.FoldEnsemble` into K plain networks.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.export import Dim

from dcloop.data.datasets import _normalize_mode
from dcloop.data.sources import (
    AudioFolder,
    AudioSynth,
    CsvManifest,
    Digits,
    ImageFolder,
    Torchvision,
)
from dcloop.data.text import TextSource
from dcloop.kept.prepare import HF_FILE, VOCAB_FILE, hf_json, tokenizer_spec
from dcloop.kept.spec import AVERAGING, FORMAT, KINDS, SPEC_FILE, build_net, rebuildable
from dcloop.models.factory import (  # (lightning: saving runs inside training)
    net_factory,
    replica_net_config,
)
from dcloop.models.fold_ensemble import FoldEnsemble
from dcloop.results import _umask

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def replica_nets(model: FoldEnsemble, factory, *, only: int | None = None) -> list[nn.Module]:
    """The K fold replicas of ``model`` as K plain networks (copies, on the CPU, eval mode).

    Args:
        model: a :class:`~dcloop.models.FoldEnsemble`.
        factory: builds one fresh network of the replicas' architecture
            (``dcloop.train._net(cfg, dm)``).
        only: the one replica to copy (a list of one); ``None``: all K.
    """
    params, buffers = model._stacked()
    k = next(iter(params.values())).shape[0] if params else model.num_folds
    if only is not None and not 0 <= only < k:
        raise ValueError(f"only={only} is not a replica of this ensemble: expected 0..{k - 1}")
    nets = []
    with torch.random.fork_rng(devices=[]):
        for i in range(k) if only is None else [only]:
            net = factory()
            own = net.state_dict()  # (non-persistent buffers are stacked, not saved)
            stacked = {**params, **buffers}
            net.load_state_dict({n: stacked[n][i].detach().cpu().clone() for n in own})
            nets.append(net.eval())
    return nets


def save_kept_model(
    run_dir: str | os.PathLike,
    *,
    cfg: DictConfig,
    dm,
    nets: list[nn.Module],
    kind: str,
    name: str,
    test_accuracy: float | None,
) -> Path:
    """Write the kept model to ``run_dir/model/`` (replaced atomically if it exists).

    Call it on one process (global rank zero under DDP).

    Args:
        run_dir: the run folder.
        cfg: the run's config (``cfg.model.net`` is saved as the network's plain config).
        dm: the run's data module, set up (class names, input shape, preprocessing).
        nets: the kept network (``kind="single"``) or the K members (``"ensemble"``).
        kind: ``"single"`` or ``"ensemble"``.
        name: the model's name in ``metrics.json`` (e.g. ``"ensemble"``, ``"student"``).
        test_accuracy: its test accuracy (``None`` when not measured).

    Returns:
        The model folder.

    Raises:
        ValueError: ``kind`` is not one of them, ``nets`` is empty, or ``"single"`` with
            more than one network.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}; got {kind!r}")
    if not nets or not all(isinstance(n, nn.Module) for n in nets):
        raise ValueError(f"nets must be a non-empty list of nn.Module; got {nets!r}")
    if kind == "single" and len(nets) != 1:
        raise ValueError(f"kind='single' takes one network; got {len(nets)}")
    run_dir = Path(run_dir)
    final = run_dir / MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=run_dir))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as a plain mkdir would (mkdtemp: 0o700)
        _write(tmp, cfg=cfg, dm=dm, nets=nets, kind=kind, name=name, acc=test_accuracy)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "kept model %r (%s, %d member%s) saved in %s",
        name,
        kind,
        len(nets),
        "s" if len(nets) > 1 else "",
        final,
    )
    return final


def _write(out: Path, *, cfg, dm, nets, kind, name, acc) -> dict[str, Any]:
    example = dm.train_dataset[0][0]
    input_shape = [int(d) for d in example.shape]
    dtype = "int64" if example.dtype in (torch.int32, torch.int64) else "float32"
    preprocess, extra_files = preprocess_of(dm, input_shape, dtype)
    for fname, text in extra_files.items():
        (out / fname).write_text(text, encoding="utf-8")
    net_cfg = _fitting_net_config(cfg, dm, nets[0])
    members = []
    for i, net in enumerate(nets):
        fname = f"member_{i}.pt"
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        torch.save(state, out / fname)
        members.append(fname)
    exported = export_program(out, nets, example, dtype)
    if net_cfg is None and exported is None:
        log.warning(
            "kept model: %s is neither a network dcloop rebuilds nor exportable; the saved "
            "weights load only with its own class (%s)",
            type(nets[0]).__name__,
            out.parent / MODEL_DIR,
        )
    spec = {
        "format": FORMAT,
        "kind": kind,
        "averaging": AVERAGING[0],
        "name": str(name),
        "test_accuracy": None if acc is None else float(acc),
        "class_names": [str(c) for c in dm.class_names],
        "num_classes": int(dm.num_classes),
        "input_shape": input_shape,
        "input_dtype": dtype,
        "net": net_cfg,
        "members": members,
        "exported": exported,
        "preprocess": preprocess,
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return spec


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _fitting_net_config(cfg, dm, net: nn.Module) -> dict[str, Any] | None:
    """The saved ``net`` entry whose network takes ``net``'s weights: ``model.net``'s (the
    student, a kept ensemble) or, for copies of replicas narrowed by ``model.replica_net``,
    the replicas'. Neither fits (the user's own nets): ``model.net``'s, with a warning."""
    order = [False] if replica_net_config(cfg.model) == cfg.model.net else [False, True]
    configs = [plain_net_config(cfg, dm, replica=r) for r in order]
    want = _shapes(net)
    for config in configs:
        if config is None:
            continue
        with torch.random.fork_rng(devices=[]):
            built = build_net(config)
        if _shapes(built) == want:
            return config
    if configs[0] is not None:
        log.warning(
            "kept model: the saved network config (%s) does not take the weights of the "
            "networks saved with it; the model may not reload from it",
            configs[0],
        )
    return configs[0]


def plain_net_config(cfg, dm, *, replica: bool = False) -> dict[str, Any] | None:
    """``cfg.model.net`` completed as the run built it (``in_shape``, ``num_classes``, the
    data's ``vocab_size``...), as plain JSON, or ``None`` when it is not plain data or not a
    network :func:`~dcloop.kept.load_model` may rebuild (then only the exported program
    loads). ``replica``: the fold replicas' network (``model.replica_net`` over it)."""
    net_cfg = replica_net_config(cfg.model) if replica else cfg.model.net
    target = str(net_cfg.get("_target_"))
    factory = net_factory(net_cfg, dm.input_shape, dm.num_classes, dm.net_kwargs, check=False)
    kwargs: dict[str, Any] = {}
    f = factory
    while isinstance(f, functools.partial):  # innermost first: outer keywords win
        kwargs = {**f.keywords, **kwargs}
        f = f.func
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    if kwargs.get("weights_path") is not None:  # the member files hold the weights
        kwargs["weights_path"] = None
    net = {"_target_": target, **kwargs}
    try:
        net = json.loads(json.dumps(net))
    except (TypeError, ValueError):
        net = None
    if net is None or not rebuildable(net):
        log.info(
            "kept model: the network %s is not one dcloop rebuilds from a config (%s); the "
            "saved model loads from its exported program",
            target,
            OmegaConf.to_container(net_cfg),
        )
        return None
    return net


def preprocess_of(
    dm, input_shape: list[int], dtype: str = "float32"
) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``preprocess`` entry for the run's data source, and extra files to write."""
    src = dm.source_object
    if isinstance(src, (ImageFolder, CsvManifest)):
        size = list(src.image_size) if src.image_size else None
        return {"kind": "image", "mode": src.mode, "size": size, "resize": "pil"}, {}
    if isinstance(src, Torchvision):
        mode = _normalize_mode("L" if input_shape[0] == 1 else "RGB")
        return {"kind": "image", "mode": mode, "size": input_shape[-2:], "resize": "tensor"}, {}
    if isinstance(src, Digits):
        size = list(src.image_size) if src.image_size else None
        return {"kind": "array", "scale": 16.0, "size": size}, {}
    if isinstance(src, (AudioFolder, AudioSynth)):
        rate = int(src.sample_rate)
        return {"kind": "audio", "sample_rate": rate, "num_samples": int(input_shape[-1])}, {}
    if isinstance(src, TextSource) and src.tokenizer is not None:
        tok, vocab, _ = tokenizer_spec(src.tokenizer)
        files = {VOCAB_FILE: json.dumps(vocab)} if vocab is not None else {}
        if tok["kind"] == "hf":
            files[HF_FILE] = hf_json(src.tokenizer)
        return {"kind": "text", "tokenizer": tok}, files
    log.info(
        "kept model: no reader for data source %r; it predicts .npy arrays of shape %s",
        getattr(src, "name", type(src).__name__),
        input_shape,
    )
    return {"kind": "tensor", "dtype": dtype}, {}


EXPORT_FILE = "export/net.pt2"


def export_program(out: Path, nets: list[nn.Module], example, dtype: str) -> str | None:
    """The network as one ``torch.export`` program (``export/net.pt2``, any batch size).

    One program serves every member: its module loads each ``member_k.pt`` (the state_dict
    keys are the network's), so the cost is one export whatever K. Best effort: a network
    that does not export, or whose program computes something else than a member with that
    member's weights, is logged and nothing is exported (the model then loads from its
    config and weights).
    """
    x = torch.stack([torch.as_tensor(example)] * 2)
    x = x.to(torch.int64 if dtype == "int64" else torch.float32)
    check = torch.cat([x] * 2)  # another batch size than the one exported with
    first = copy.deepcopy(nets[0]).cpu().eval()  # the caller's networks stay as they are
    try:
        with torch.no_grad():
            program = torch.export.export(first, (x,), dynamic_shapes=({0: Dim.AUTO},))
            module = program.module()
            for net in nets:
                net = copy.deepcopy(net).cpu().eval()
                module.load_state_dict(net.state_dict())
                if not torch.allclose(module(check), net(check), atol=1e-5, rtol=1e-4):
                    raise RuntimeError("the exported program's output differs from the network's")
        (out / EXPORT_FILE).parent.mkdir()
        with warnings.catch_warnings():  # constants outside the state_dict (AudioCNN's mel)
            warnings.filterwarnings("ignore", message="No complete tensor found")
            torch.export.save(program, out / EXPORT_FILE)
    except Exception as err:  # noqa: BLE001 - any network may refuse to export
        log.info(
            "kept model: no exported program (%s does not export: %s: %s); it loads from its "
            "config and weights",
            type(first).__name__,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        shutil.rmtree(out / "export", ignore_errors=True)
        return None
    return EXPORT_FILE
