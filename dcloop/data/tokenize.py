"""Tokenising text without downloads: word / character n-grams into fixed-length id rows.

:class:`NgramTokenizer` learns its vocabulary from the training split only (the most
frequent features with at least ``min_count`` occurrences, at most ``max_vocab`` of them);
every other feature is hashed into ``hash_buckets`` extra ids (fastText's trick for large
vocabularies; ``hash_buckets=0`` maps them to ``unk``). Ids: ``0`` pad, ``1`` unknown, then
the vocabulary, then the hash buckets. Every text becomes exactly ``max_len`` ids
(truncated, or padded with ``0`` at the end), so batch shapes never depend on the data and
the models need no host synchronisation to handle lengths.

:class:`HFTokenizer` wraps a Hugging Face ``tokenizers`` tokenizer saved in a local
``tokenizer.json`` (only if the ``tokenizers`` package is installed; nothing is fetched).

Example:
    >>> tok = NgramTokenizer(ngrams=(1,), max_len=6).fit(["a cat sat", "a dog sat"])
    >>> tok.encode("a cat ran").tolist()
    [2, 4, 1, 0, 0, 0]
    >>> tok.decode(tok.encode("a cat sat"))
    'a cat sat'
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from dcloop._checks import check_int, is_int

PAD_ID = 0
UNK_ID = 1
_SPECIAL = ("<pad>", "<unk>")
_WORD = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


def words(text: str, *, lowercase: bool = True) -> list[str]:
    """Word tokens of ``text``: runs of letters/digits/apostrophes, and single punctuation."""
    return _WORD.findall(text.lower() if lowercase else text)


class NgramTokenizer:
    """Word n-grams (and optionally character n-grams) to fixed-length rows of ids.

    Features of a text, in order: its words (``ngrams`` contains 1), then its word
    n-grams for every other n in ``ngrams`` (joined by a space), then the character n-grams
    of each word (``char_ngrams``, on ``<word>`` with boundary marks). For a CNN keep
    ``ngrams=(1,)`` so that positions are word positions.

    Args:
        ngrams: word n-gram orders, e.g. ``(1, 2)`` (fastText's bigrams).
        char_ngrams: character n-gram orders, e.g. ``(3,)``; ``()`` for none.
        max_vocab: at most this many features get their own id (the most frequent).
        min_count: a feature needs this many occurrences in the training texts.
        hash_buckets: ids for the features outside the vocabulary (``0``: they are ``unk``).
        max_len: ids per text (truncate / pad).
        lowercase: lower-case before splitting.
    """

    def __init__(
        self,
        *,
        ngrams: Sequence[int] = (1,),
        char_ngrams: Sequence[int] = (),
        max_vocab: int = 20000,
        min_count: int = 1,
        hash_buckets: int = 0,
        max_len: int = 64,
        lowercase: bool = True,
    ) -> None:
        for name, orders in (("ngrams", ngrams), ("char_ngrams", char_ngrams)):
            if isinstance(orders, (str, int)) or not all(is_int(n) and n >= 1 for n in orders):
                raise ValueError(f"tokenizer {name} must be a list of ints >= 1; got {orders!r}")
        if not ngrams and not char_ngrams:
            raise ValueError("tokenizer needs at least one of ngrams / char_ngrams")
        for name, v, low in (
            ("max_vocab", max_vocab, 1),
            ("min_count", min_count, 1),
            ("hash_buckets", hash_buckets, 0),
            ("max_len", max_len, 1),
        ):
            check_int(f"tokenizer.{name}", v, minimum=low)
        self.ngrams = tuple(int(n) for n in ngrams)
        self.char_ngrams = tuple(int(n) for n in char_ngrams)
        self.max_vocab, self.min_count = int(max_vocab), int(min_count)
        self.hash_buckets, self.max_len = int(hash_buckets), int(max_len)
        self.lowercase = bool(lowercase)
        self.itos: list[str] = list(_SPECIAL)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.fitted = False

    # ------------------------------------------------------------------ features
    def features(self, text: str) -> list[str]:
        """The features of ``text`` in order (see the class docstring)."""
        ws = words(text, lowercase=self.lowercase)
        out: list[str] = []
        for n in self.ngrams:
            out += ws if n == 1 else [" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)]
        for n in self.char_ngrams:
            for w in ws:
                w = f"<{w}>"
                out += [w[i : i + n] for i in range(len(w) - n + 1)]
        return out

    def fit(self, texts: Iterable[str]) -> NgramTokenizer:
        """Learn the vocabulary from ``texts`` (the training split only); returns self."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(self.features(t))
        kept = [f for f, c in counts.items() if c >= self.min_count]
        kept.sort(key=lambda f: (-counts[f], f))  # deterministic: count, then the feature
        self.itos = list(_SPECIAL) + kept[: self.max_vocab]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.fitted = True
        return self

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids (pad, unk, vocabulary and hash buckets)."""
        return len(self.itos) + self.hash_buckets

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        """The id of features outside the vocabulary (with ``hash_buckets=0``)."""
        return UNK_ID

    def _id(self, feature: str) -> int:
        i = self.stoi.get(feature)
        if i is not None:
            return i
        if self.hash_buckets:  # crc32: the same bucket in every process (hash() is salted)
            return len(self.itos) + zlib.crc32(feature.encode("utf-8")) % self.hash_buckets
        return UNK_ID

    def encode(self, text: str) -> torch.Tensor:
        """``(max_len,)`` int64 ids of ``text`` (padded with ``0`` at the end)."""
        ids = [self._id(f) for f in self.features(text)[: self.max_len]]
        return torch.tensor(ids + [PAD_ID] * (self.max_len - len(ids)), dtype=torch.int64)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, max_len)`` int64 ids."""
        if not len(texts):
            return torch.zeros(0, self.max_len, dtype=torch.int64)
        return torch.stack([self.encode(t) for t in texts])

    def decode(self, ids) -> str:
        """The features of ``ids`` joined by spaces (pad dropped; hashed ids as ``<hash:k>``)."""
        out = []
        for i in torch.as_tensor(ids).tolist():
            if i == PAD_ID:
                continue
            out.append(self.itos[i] if i < len(self.itos) else f"<hash:{i - len(self.itos)}>")
        return " ".join(out)


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer from a local ``tokenizer.json``.

    Needs the ``tokenizers`` package (not a dcloop dependency); nothing is downloaded. Ids
    are shifted by one so that ``0`` stays the pad id of dcloop's text models.

    Args:
        path: a ``tokenizer.json`` file, or a folder holding one.
        max_len: ids per text.
    """

    def __init__(self, path: str | os.PathLike, *, max_len: int = 64) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ValueError(
                "tokenizer kind 'hf' needs the 'tokenizers' package (pip install tokenizers); "
                "it is not installed"
            ) from err
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p}")
        self._tok = Tokenizer.from_file(str(p))
        self.max_len = int(max_len)
        self.fitted = True

    def fit(self, texts: Iterable[str]) -> HFTokenizer:  # a pretrained vocabulary: nothing to do
        return self

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size()) + 1

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> torch.Tensor:
        ids = [i + 1 for i in self._tok.encode(text).ids[: self.max_len]]
        out = torch.zeros(self.max_len, dtype=torch.int64)
        if ids:
            out[: len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        if not len(texts):
            return torch.zeros(0, self.max_len, dtype=torch.int64)
        return torch.stack([self.encode(t) for t in texts])

    def decode(self, ids) -> str:
        return self._tok.decode([i - 1 for i in torch.as_tensor(ids).tolist() if i != PAD_ID])


#: ``tokenizer.kind`` values.
TOKENIZER_KINDS = ("ngram", "hf")


def make_tokenizer(spec=None):
    """A tokenizer from a config mapping: ``kind`` (``ngram`` or ``hf``) and its options."""
    spec = dict(spec or {})
    kind = spec.pop("kind", "ngram")
    if kind == "ngram":
        for key in ("ngrams", "char_ngrams"):
            if key in spec and spec[key] is not None:
                spec[key] = tuple(spec[key])
        try:
            return NgramTokenizer(**spec)
        except TypeError as err:
            raise ValueError(f"tokenizer: {err}") from err
    if kind == "hf":
        path = spec.pop("path", None)
        if path is None:
            raise ValueError("tokenizer kind 'hf' needs path=<local tokenizer.json>; got None")
        return HFTokenizer(path, max_len=int(spec.pop("max_len", 64)))
    raise ValueError(f"tokenizer kind must be one of {list(TOKENIZER_KINDS)}; got {kind!r}")
