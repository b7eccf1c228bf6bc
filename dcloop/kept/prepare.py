"""New inputs prepared exactly as the run prepared its training data.

The ``preprocess`` entry of ``model.json`` says how (see :func:`preprocess_of` for what a
run writes, by data source):

* ``image``: an image file read with PIL in ``mode`` (``RGB`` / ``L``), scaled to [0, 1];
  ``resize: "pil"`` resizes on read to ``size`` (bilinear, as ``ImageFolder`` /
  ``CsvManifest``), ``resize: "tensor"`` after read (antialiased bilinear on the 8-bit
  image, as ``Torchvision(image_size=...)``); no mean/std normalisation (dcloop's data
  has none).
* ``array``: a ``.npy`` file of one ``(H, W)`` image or a stack ``(N, H, W)``, divided by
  ``scale`` (digits: scikit-learn's 0..16 pixel values, ``scale`` 16), resized as above.
* ``audio``: a sound file, mono, resampled to ``sample_rate`` and cropped or zero-padded to
  ``num_samples`` (:func:`dcloop.data.audio.read_audio`).
* ``text``: a text, tokenised with the run's own vocabulary (``vocab.json``) or its
  ``tokenizer.json`` (Hugging Face).
* ``tensor``: a ``.npy`` file of the model's input shape (a data source dcloop does not
  know how to read).

Bad input (a file that is not of the model's kind, an unreadable file) raises
:class:`~dcloop.errors.UserInputError` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcloop.data.audio import AUDIO_EXTENSIONS, read_audio
from dcloop.data.datasets import IMAGE_EXTENSIONS, IndexedTensorDataset, _load_image
from dcloop.data.sources import _resize
from dcloop.data.tokenize import HFTokenizer, NgramTokenizer
from dcloop.errors import UserInputError

#: Files each preprocessing kind reads (text reads tables, or ``.txt`` files in a folder).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": IMAGE_EXTENSIONS,
    "array": (".npy",),
    "audio": AUDIO_EXTENSIONS,
    "text": (".txt",),
    "tensor": (".npy",),
}
VOCAB_FILE = "vocab.json"
HF_FILE = "tokenizer.json"


class Preparer:
    """``preprocess`` of ``model.json`` as a callable: one source -> one input tensor.

    Args:
        spec: the ``preprocess`` mapping.
        model_dir: the model folder (for the vocabulary file).
        input_shape: the shape one input must have.
    """

    def __init__(self, spec: dict[str, Any], model_dir: Path, input_shape: Sequence[int]):
        self.kind = spec["kind"]
        self.spec = spec
        self.input_shape = tuple(int(d) for d in input_shape)
        self.size = tuple(spec["size"]) if spec.get("size") else None
        self.tokenizer = _tokenizer(spec, model_dir) if self.kind == "text" else None
        self._last: tuple[str, np.ndarray] | None = None  # the .npy stack being read

    @property
    def extensions(self) -> tuple[str, ...]:
        return EXTENSIONS[self.kind]

    def texts(self, texts: Sequence[str]) -> Tensor:
        """``(N, max_len)`` token ids of ``texts`` (text models)."""
        if self.tokenizer is None:
            raise UserInputError(f"this model reads {self.kind} files, not texts")
        return self.tokenizer.encode_batch([str(t).strip() for t in texts])

    def file(self, path: str, row: int | None = None) -> Tensor:
        """The prepared input of one file (``row``: of an ``.npy`` stack)."""
        try:
            if self.kind == "image":
                return self._image(path)
            if self.kind == "audio":
                return read_audio(
                    path, int(self.spec["sample_rate"]), int(self.spec["num_samples"])
                )
            if self.kind in ("array", "tensor"):
                return self._array(path, row)
            if self.kind == "text":
                text = Path(path).read_text(encoding="utf-8-sig")
                return self.texts([text])[0]
        except (OSError, ValueError) as err:
            if isinstance(err, UserInputError):
                raise
            raise UserInputError(f"cannot read {path!r} as a {self.kind} input: {err}") from None
        raise UserInputError(f"unknown preprocess kind {self.kind!r}")

    def _image(self, path: str) -> Tensor:
        mode = self.spec["mode"]
        if self.spec.get("resize") == "pil":
            x = _load_image(path, mode, self.size)
        else:
            x = self._resized(_load_image(path, mode, None))
        return self._check(x, path)

    def _resized(self, x: Tensor) -> Tensor:
        """As :func:`dcloop.data.sources._resize` resized the run's data (8-bit kept)."""
        if self.size is None or tuple(x.shape[-2:]) == self.size:
            return x
        eight_bit = self.spec.get("kind") == "image"
        stored = x.mul(255.0).round_().to(torch.uint8) if eight_bit else x
        ds = _resize(IndexedTensorDataset(stored[None], [0]), self.size)
        return ds[0][0]

    def _array(self, path: str, row: int | None) -> Tensor:
        if self._last is not None and self._last[0] == path:
            arr = self._last[1]  # the rows of one stack: the file is read once
        else:
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UserInputError(f"cannot read {path!r} as a .npy array: {err}") from None
            self._last = (path, arr)
        if row is not None:
            arr = arr[row]
        x = torch.from_numpy(np.ascontiguousarray(arr))
        if self.kind == "tensor":
            dtype = torch.int64 if self.spec.get("dtype") == "int64" else torch.float32
            return self._check(x.to(dtype), path)
        x = x.to(torch.float32) / float(self.spec.get("scale", 1.0))
        if x.ndim == 2:
            x = x[None]
        return self._check(self._resized(x), path)

    def _check(self, x: Tensor, path: str) -> Tensor:
        if tuple(x.shape) != self.input_shape:
            raise UserInputError(
                f"{path!r} gives an input of shape {tuple(x.shape)}; this model takes "
                f"{self.input_shape}"
            )
        return x


def _tokenizer(spec: dict[str, Any], model_dir: Path):
    tok = spec.get("tokenizer") or {}
    if tok.get("kind") == "hf":
        return HFTokenizer(model_dir / HF_FILE, max_len=int(tok["max_len"]))
    options = {k: v for k, v in tok.items() if k not in ("kind", "vocab")}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    out = NgramTokenizer(**options)
    vocab = json.loads((model_dir / VOCAB_FILE).read_text(encoding="utf-8"))
    if not (isinstance(vocab, list) and all(isinstance(s, str) for s in vocab)):
        raise UserInputError(f"{str(model_dir / VOCAB_FILE)!r}: expected a JSON list of strings")
    out.itos = list(vocab)
    out.stoi = {s: i for i, s in enumerate(out.itos)}
    out.fitted = True
    return out


def tokenizer_spec(tokenizer) -> tuple[dict[str, Any], list[str] | None, str | None]:
    """``(preprocess["tokenizer"], vocabulary, tokenizer.json path)`` of a run's tokenizer."""
    if isinstance(tokenizer, NgramTokenizer):
        opts = {
            "kind": "ngram",
            "ngrams": list(tokenizer.ngrams),
            "char_ngrams": list(tokenizer.char_ngrams),
            "max_vocab": tokenizer.max_vocab,
            "min_count": tokenizer.min_count,
            "hash_buckets": tokenizer.hash_buckets,
            "max_len": tokenizer.max_len,
            "lowercase": tokenizer.lowercase,
            "vocab": VOCAB_FILE,
        }
        return opts, list(tokenizer.itos), None
    if isinstance(tokenizer, HFTokenizer):
        return {"kind": "hf", "max_len": tokenizer.max_len, "file": HF_FILE}, None, None
    raise ValueError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")


def hf_json(tokenizer) -> str:
    """The Hugging Face tokenizer's JSON (written to ``model/tokenizer.json``)."""
    return tokenizer._tok.to_str()


def is_kind_file(path: str, kind: str) -> bool:
    return os.path.splitext(path)[1].lower() in EXTENSIONS[kind]
