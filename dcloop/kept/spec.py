"""What ``RUN/model/`` holds, read back as data: ``model.json`` and the whitelist of networks.

``model.json`` is plain JSON (see ``docs/predict.md``)::

    {"format": 1, "kind": "single" | "ensemble", "averaging": "mean_softmax",
     "name": ..., "test_accuracy": ..., "class_names": [...], "num_classes": C,
     "input_shape": [...], "input_dtype": "float32" | "int64",
     "net": {"_target_": "dcloop.models.nets.SmallCNN", "in_channels": 3, ...} | null,
     "members": ["member_0.pt", ...], "exported": "export/net.pt2" | null,
     "preprocess": {"kind": "image" | "array" | "audio" | "text" | "tensor", ...}}

Nothing in it is instantiated blindly: the network is rebuilt only when ``net._target_`` is
one of :data:`NET_TARGETS` (dcloop's own networks and torchvision's builders), with
plain keyword values; its weights are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from dcloop.errors import UserInputError

FORMAT = 1
SPEC_FILE = "model.json"
KINDS = ("single", "ensemble")
AVERAGING = ("mean_softmax",)
PREPROCESS_KINDS = ("image", "array", "audio", "text", "tensor")

_OWN = {
    "dcloop.models.nets.MLP": ("MLP", "nets"),
    "dcloop.models.nets.SmallCNN": ("SmallCNN", "nets"),
    "dcloop.models.audio.AudioCNN": ("AudioCNN", "audio"),
    "dcloop.models.text.TextBoW": ("TextBoW", "text"),
    "dcloop.models.text.TextCNN": ("TextCNN", "text"),
    "dcloop.models.torchvision_nets.torchvision_net": ("torchvision_net", "torchvision_nets"),
    "dcloop.models.resnet_small.ResNetSmall": ("ResNetSmall", "resnet_small"),
}
#: ``_target_`` -> ``(module, attribute)`` of every network a saved model may rebuild.
NET_TARGETS: dict[str, tuple[str, str]] = {
    **{k: (f"dcloop.models.{mod}", name) for k, (name, mod) in _OWN.items()},
    # the package-level names the shipped model configs use
    **{f"dcloop.models.{name}": (f"dcloop.models.{mod}", name) for name, mod in _OWN.values()},
}
#: torchvision builders (``torchvision.models.<name>``) a saved model may rebuild.
TORCHVISION_BUILDERS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "wide_resnet50_2",
    "mobilenet_v3_small",
    "efficientnet_b0",
)


def read_spec(model_dir: Path) -> dict[str, Any]:
    """``model_dir/model.json`` checked to be a saved kept model's description.

    Raises:
        UserInputError: no such file, not JSON, or a key with a value it cannot have
            (naming the file, the key and what was expected).
    """
    path = model_dir / SPEC_FILE
    if not path.is_file():
        raise UserInputError(
            f"{str(model_dir)!r} holds no saved model ({SPEC_FILE} missing); expected a run "
            "folder whose run saved its kept model (RUN/model/)"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{str(path)!r} is not a readable JSON file ({err})") from None
    if not isinstance(spec, dict):
        raise UserInputError(f"{str(path)!r}: expected a JSON object, got {type(spec).__name__}")

    def need(key: str, ok, what: str) -> Any:
        value = spec.get(key)
        if not ok(value):
            raise UserInputError(f"{str(path)!r}: {key} is {value!r}; expected {what}")
        return value

    need("format", lambda v: v == FORMAT, f"{FORMAT} (a model saved by this dcloop)")
    need("kind", lambda v: v in KINDS, f"one of {list(KINDS)}")
    need("averaging", lambda v: v in AVERAGING, f"one of {list(AVERAGING)}")
    names = need(
        "class_names",
        lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(n, str) for n in v),
        "a list of at least 2 class names",
    )
    need("num_classes", lambda v: v == len(names), f"{len(names)} (the number of class names)")
    need(
        "input_shape",
        lambda v: isinstance(v, list) and all(isinstance(d, int) and d > 0 for d in v),
        "a list of positive ints",
    )
    need("input_dtype", lambda v: v in ("float32", "int64"), "'float32' or 'int64'")
    need(
        "members",
        lambda v: isinstance(v, list) and v and all(_inside(model_dir, f) for f in v),
        "a non-empty list of file names inside the model folder",
    )
    need(
        "exported",
        lambda v: v is None or _inside(model_dir, v),
        "null or a file name inside the model folder",
    )
    if spec["kind"] == "single" and len(spec["members"]) != 1:
        raise UserInputError(f"{str(path)!r}: kind 'single' needs exactly one member")
    need("net", lambda v: v is None or isinstance(v, dict), "null or a mapping")
    need(
        "preprocess",
        lambda v: isinstance(v, dict) and v.get("kind") in PREPROCESS_KINDS,
        f"a mapping with kind one of {list(PREPROCESS_KINDS)}",
    )
    return spec


def _inside(model_dir: Path, name: Any) -> bool:
    if not isinstance(name, str) or not name or name.startswith(("/", "\\")) or ".." in name:
        return False
    return (model_dir / name).resolve().is_relative_to(model_dir.resolve())


def rebuildable(net_cfg: dict[str, Any] | None) -> bool:
    """True when ``net_cfg`` names a whitelisted network with plain keyword values."""
    try:
        net_builder(net_cfg)
    except UserInputError:
        return False
    return True


def net_builder(net_cfg: dict[str, Any] | None):
    """``(builder, kwargs)`` of a saved ``net`` entry; only whitelisted targets.

    Raises:
        UserInputError: the target is not one of :data:`NET_TARGETS` or torchvision's
            builders, or a keyword value is not plain data.
    """
    if not isinstance(net_cfg, dict):
        raise UserInputError("the saved model has no rebuildable network config (net: null)")
    target = net_cfg.get("_target_")
    kwargs = {k: v for k, v in net_cfg.items() if k != "_target_"}
    special = sorted(k for k in kwargs if k.startswith("_") and k.endswith("_"))
    if special:
        raise UserInputError(f"net.{special[0]}: a Hydra key; a saved net takes plain keywords")
    for k, v in kwargs.items():
        if not _plain(v):
            raise UserInputError(f"net.{k} is {v!r}; expected a plain value")
    if target in NET_TARGETS:
        module, attr = NET_TARGETS[target]
    elif isinstance(target, str) and target.startswith("torchvision.models."):
        attr = target.rsplit(".", 1)[-1]
        if attr not in TORCHVISION_BUILDERS:
            raise UserInputError(
                f"net._target_ {target!r} is not a torchvision builder a saved model may "
                f"rebuild ({', '.join(TORCHVISION_BUILDERS)})"
            )
        module = "torchvision.models"
        if kwargs.get("weights") is not None:
            raise UserInputError("net.weights: a saved model never downloads weights")
    else:
        raise UserInputError(
            f"net._target_ {target!r} is not one of the networks a saved model may rebuild "
            f"({', '.join(sorted(NET_TARGETS))}, torchvision.models.<builder>); load its "
            "exported program instead (load_model(run, exported=True))"
        )
    try:
        builder = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserInputError(f"net._target_ {target!r} cannot be imported ({err})") from None
    return builder, kwargs


def build_net(net_cfg: dict[str, Any]) -> nn.Module:
    """A fresh network from a saved ``net`` entry (whitelisted targets only)."""
    builder, kwargs = net_builder(net_cfg)
    net = builder(**kwargs)
    if not isinstance(net, nn.Module):
        raise UserInputError(f"net._target_ {net_cfg['_target_']!r} did not build an nn.Module")
    return net


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False
