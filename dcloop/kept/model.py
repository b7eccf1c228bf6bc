"""The kept model of a run, loaded for prediction: :func:`load_model` and :class:`KeptModel`.

Loading needs torch (and torchvision / torchaudio for their networks), never lightning,
the fold-parallel module or the callbacks: a saved model is usable where only inference
runs. Nothing from the model folder is unpickled or instantiated blindly (see
:mod:`dcloop.kept.spec`).

Example:
    >>> import dcloop
    >>> model = dcloop.load_model("outputs/2026-01-01/12-00-00")  # doctest: +SKIP
    >>> model.predict("new_images/")  # doctest: +SKIP
                     source predicted  probability
    0  new_images/a.png     cat        0.91
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from dcloop.errors import UserInputError
from dcloop.kept.inputs import Item, collect
from dcloop.kept.prepare import Preparer
from dcloop.kept.spec import build_net, read_spec

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def model_dir_of(run: str | os.PathLike) -> Path:
    """``RUN/model`` (or ``run`` itself when it is the model folder)."""
    p = Path(run).expanduser()
    if not p.exists():
        raise UserInputError(f"RUN {str(run)!r} does not exist; expected a dcloop run folder")
    if (p / MODEL_DIR).is_dir():
        return p / MODEL_DIR
    return p


def load_model(
    run: str | os.PathLike, *, exported: bool = False, device: str | torch.device = "cpu"
) -> KeptModel:
    """The kept model saved in a run folder, ready to predict.

    Args:
        run: the run folder (or its ``model/`` folder).
        exported: run the exported program (``torch.export``) with each member's weights
            instead of rebuilding the network from its config; needed for a network dcloop
            does not know.
        device: where the network runs.

    Raises:
        UserInputError: no saved model there, or one that cannot be rebuilt (naming why).
    """
    mdir = model_dir_of(run)
    spec = read_spec(mdir)
    program = None
    if exported or spec["net"] is None:
        if not spec["exported"]:
            raise UserInputError(
                f"{str(mdir)!r}: no exported program was saved (its network did not "
                "export); load it without exported=True"
            )
        program = _exported(mdir / spec["exported"])
    nets = []
    for f in spec["members"]:
        net = build_net(spec["net"]) if program is None else copy.deepcopy(program)
        try:
            state = torch.load(mdir / f, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserInputError(f"{str(mdir / f)!r}: member weights missing") from None
        except Exception as err:  # noqa: BLE001 - weights_only refuses anything but tensors
            raise UserInputError(
                f"{str(mdir / f)!r} is not a file of plain tensors: {type(err).__name__}"
            ) from None
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise UserInputError(
                f"{str(mdir / f)!r} does not fit the saved network: {str(err).splitlines()[0]}"
            ) from None
        nets.append(net)
    return KeptModel(nets, spec, mdir, device=device)


def _eval(net: nn.Module) -> nn.Module:
    try:
        return net.eval()
    except NotImplementedError:  # an exported program: exported in eval mode already
        return net


def _exported(path: Path) -> nn.Module:
    """The ``torch.export`` program as a module (weights loaded per member after)."""
    try:
        return torch.export.load(path).module()
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file
        raise UserInputError(
            f"cannot load the exported program {str(path)!r}: {type(err).__name__}: {err}"
        ) from None


class KeptModel:
    """A saved kept model: one network (``single``) or K members averaged (``ensemble``).

    Attributes:
        class_names: the C class names, in the order of the probability columns.
        kind: ``"single"`` or ``"ensemble"``.
        name: the model's name in the run's ``metrics.json`` (e.g. ``"ensemble"``).
        test_accuracy: its test accuracy in the run (``None`` when not measured).
        members: the networks (eval mode).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        spec: dict[str, Any],
        model_dir: Path,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.members = [_eval(m.to(self.device)) for m in members]
        self.class_names: list[str] = list(spec["class_names"])
        self.kind: str = spec["kind"]
        self.name: str | None = spec.get("name")
        self.test_accuracy: float | None = spec.get("test_accuracy")
        self.input_shape = tuple(spec["input_shape"])
        self.preparer = Preparer(spec["preprocess"], model_dir, self.input_shape)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.inference_mode()
    def predict_proba(self, x: Tensor, *, batch_size: int = 512) -> Tensor:
        """Class probabilities of prepared inputs: ``(N, *input_shape) -> (N, C)``.

        The members' softmax, averaged (``mean_softmax``): for an ensemble kept model this
        is what the run's test accuracy measured.
        """
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise UserInputError(
                f"inputs of shape {tuple(x.shape)}; this model takes (N, "
                f"{', '.join(map(str, self.input_shape))})"
            )
        out = []
        for start in range(0, x.shape[0], int(batch_size)):
            xb = x[start : start + int(batch_size)].to(self.device)
            probs = self.members[0](xb).float().softmax(-1)
            for net in self.members[1:]:
                probs += net(xb).float().softmax(-1)
            out.append((probs / len(self.members)).cpu())
        if not out:
            return torch.zeros(0, self.num_classes)
        return torch.cat(out)

    def prepare(self, items: Sequence[Item]) -> Tensor:
        """The input tensor ``(n, *input_shape)`` of listed inputs (see :func:`collect`)."""
        texts = [it.text for it in items if it.text is not None]
        if texts and len(texts) == len(items):
            return self.preparer.texts(texts)
        return torch.stack([self.preparer.file(it.path, it.row) for it in items])

    def predict(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        *,
        texts: Sequence[str] | None = None,
        all_probs: bool = False,
        batch_size: int = 256,
        text_column: str = "text",
        progress: Callable[[int], Any] | None = None,
    ) -> pd.DataFrame:
        """Predict files, folders, tables of texts or manifests (as ``dcloop-predict``).

        Args:
            inputs: paths (see :mod:`dcloop.kept.inputs`).
            texts: raw texts instead of ``inputs`` (text models).
            all_probs: add one ``prob_<class>`` column per class.
            batch_size: inputs read and run at once.
            text_column: the column / key of the texts in a CSV / JSONL table.
            progress: called with the number of inputs done after each batch.

        Returns:
            One row per input: ``source``, ``predicted`` (class name), ``probability`` (of
            that class), and with ``all_probs`` the probability of every class.
        """
        items = self.items(inputs, texts=texts, text_column=text_column)
        probs = self.predict_items(items, batch_size=batch_size, progress=progress)
        return self.table([it.source for it in items], probs, all_probs=all_probs)

    def predict_items(
        self,
        items: Sequence[Item],
        *,
        batch_size: int = 256,
        progress: Callable[[int], Any] | None = None,
    ) -> Tensor:
        """``(N, C)`` probabilities of listed inputs, read and run ``batch_size`` at a time."""
        probs = []
        for start in range(0, len(items), int(batch_size)):
            chunk = items[start : start + int(batch_size)]
            probs.append(self.predict_proba(self.prepare(chunk), batch_size=batch_size))
            if progress is not None:
                progress(len(chunk))
        return torch.cat(probs) if probs else torch.zeros(0, self.num_classes)

    def items(self, inputs=None, *, texts=None, text_column: str = "text") -> list[Item]:
        """The inputs as :class:`~dcloop.kept.inputs.Item` rows (nothing read yet)."""
        if (inputs is None) == (texts is None):
            raise UserInputError("give either inputs (paths) or texts, not both or neither")
        if texts is not None:
            if self.preparer.kind != "text":
                raise UserInputError(f"texts= needs a text model; this one reads {self.kind}")
            if isinstance(texts, str):
                texts = [texts]
            return [Item(f"text:{i}", text=str(t)) for i, t in enumerate(texts)]
        return collect(inputs, self.preparer.kind, text_column=text_column)

    def table(self, sources: Sequence[str], probs: Tensor, *, all_probs: bool) -> pd.DataFrame:
        """The predictions table of ``probs`` ``(N, C)``."""
        conf, pred = probs.max(-1)
        df = pd.DataFrame(
            {
                "source": list(sources),
                "predicted": [self.class_names[i] for i in pred.tolist()],
                "probability": conf.numpy().astype(float),
            }
        )
        if all_probs:
            for k, name in enumerate(self.class_names):
                df[f"prob_{name}"] = probs[:, k].numpy().astype(float)
        return df

    def __repr__(self) -> str:
        return (
            f"KeptModel(name={self.name!r}, kind={self.kind!r}, members={len(self.members)}, "
            f"classes={self.num_classes}, input_shape={self.input_shape})"
        )
