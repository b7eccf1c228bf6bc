"""Text classification data: a CSV / JSONL file of your own, and an embedded synthetic default.

Both are *source objects* for :class:`~dcloop.data.LabelNoiseDataModule` (``data.source:
{_target_: ...}``): they read and split the rows, fit the tokenizer on the training split
only, and give the network its ``vocab_size`` / ``pad_id`` / ``max_len``
(:attr:`TextSource.net_kwargs`). Items are ``(x, y, index)`` with ``x`` the ``(max_len,)``
int64 token ids of the text (``0`` = padding); :class:`TextDataset` keeps the raw texts
too, for the report, the relabel queue and text augmentation (which edits strings and
re-tokenises).

Sources point at the row: ``"<file>:row 17"`` (data row 17, 0-based, header not counted)
or ``"text_synth:row 17"``. Bad input (a missing column, an empty text or label, an
unknown label, a file that is not UTF-8) raises :class:`~dcloop.errors.UserInputError`
naming the file and the row.

Example:
    >>> from dcloop.data import LabelNoiseDataModule
    >>> from dcloop.data.text import TextSynth
    >>> dm = LabelNoiseDataModule(source=TextSynth(), noise={"kind": "symmetric", "rate": 0.2})
    >>> dm.setup()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dcloop._checks import as_label_array, check_callable, check_label_range, parse_class_labels
from dcloop.data.splits import stratified_split_indices
from dcloop.data.tokenize import make_tokenizer
from dcloop.errors import UserInputError

log = logging.getLogger(__name__)

#: File suffixes read as JSON lines (anything else is read as CSV).
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class TextDataset(Dataset):
    """Texts, their labels and their token ids; items ``(ids (max_len,), y, index)``.

    Args:
        texts: the raw strings.
        labels: ``(N,)`` class ids.
        tokenizer: a fitted tokenizer (``encode(str) -> (max_len,) int64``).
        sources: where each row came from (default ``"row:<i>"``).
        ids: precomputed ``(N, max_len)`` ids (default: encoded here).
        transform: optional callable on the ids of one item.
        num_classes, class_names: as in :class:`~dcloop.data.IndexedTensorDataset`.
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels,
        tokenizer,
        *,
        sources: Sequence[str] | None = None,
        ids: Tensor | None = None,
        transform=None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.texts = [str(t) for t in texts]
        self.labels = as_label_array(labels)
        if len(self.labels) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if num_classes is not None:
            check_label_range(self.labels, int(num_classes))
        self.tokenizer = tokenizer
        self.ids = tokenizer.encode_batch(self.texts) if ids is None else ids
        self._sources = (
            list(sources) if sources is not None else [f"row:{i}" for i in range(len(texts))]
        )
        self.transform = check_callable("transform", transform)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = int(i)
        x = self.ids[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i]), i

    def encode(self, text: str) -> Tensor:
        """Token ids of a (possibly augmented) text, with this dataset's tokenizer."""
        return self.tokenizer.encode(text)

    def source(self, i: int) -> str:
        return self._sources[int(i)]

    @property
    def sources(self) -> list[str]:
        return list(self._sources)

    def _replace(self, idx=None, **changes) -> TextDataset:
        rows = np.arange(len(self)) if idx is None else as_label_array(idx, name="indices")
        kw: dict[str, Any] = {
            "sources": [self._sources[int(i)] for i in rows],
            "ids": self.ids[torch.as_tensor(rows, dtype=torch.long)],
            "transform": self.transform,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }
        labels = changes.pop("labels", self.labels[rows])
        kw.update(changes)
        return TextDataset([self.texts[int(i)] for i in rows], labels, self.tokenizer, **kw)

    def subset(self, indices) -> TextDataset:
        return self._replace(indices)

    def with_labels(self, new_labels) -> TextDataset:
        new = as_label_array(new_labels, name="new_labels")
        if new.shape[0] != len(self):
            raise ValueError(f"new_labels must have length {len(self)}, got {new.shape[0]}")
        return self._replace(labels=new)

    def with_transform(self, transform) -> TextDataset:
        return self._replace(transform=transform)


# --------------------------------------------------------------------------- reading files
def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserInputError(
            f"text file {str(path)!r} is not UTF-8: byte {err.start} (line {line}) is "
            f"{data[err.start : err.start + 1]!r}; save it as UTF-8"
        ) from None


def read_table(
    path: str | os.PathLike, text_column: str, label_column: str | None
) -> tuple[list[str], list[str] | None]:
    """Texts and raw labels of a CSV or JSONL file (``.jsonl``/``.ndjson``/``.json``: JSON lines).

    Raises:
        FileNotFoundError: no such file.
        UserInputError: not UTF-8, not parseable, a missing column, an empty text or label
            (naming the file and the 0-based data row).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text data file not found: {str(p)!r}")
    content = _decode_utf8(p)
    columns = [text_column] + ([label_column] if label_column is not None else [])
    if p.suffix.lower() in JSONL_SUFFIXES:
        records = []
        for line_no, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserInputError(
                    f"{str(p)!r} line {line_no} is not JSON ({err.msg}); expected one object "
                    "per line"
                ) from None
            if not isinstance(rec, dict):
                raise UserInputError(f"{str(p)!r} line {line_no} is not a JSON object")
            missing = [c for c in columns if c not in rec]
            if missing:
                raise UserInputError(
                    f"{str(p)!r} row {len(records)} (line {line_no}) lacks key(s) {missing}; "
                    f"found {sorted(rec)}"
                )
            records.append({c: "" if rec[c] is None else str(rec[c]) for c in columns})
        cols = {c: [r[c] for r in records] for c in columns}
    else:
        import io

        import pandas as pd

        try:
            df = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise UserInputError(f"{str(p)!r} is empty; expected a header with {columns}") from None
        except pd.errors.ParserError as err:
            raise UserInputError(f"{str(p)!r} is not a readable CSV ({err})") from None
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserInputError(
                f"{str(p)!r} lacks column(s) {missing}; found {list(df.columns)} (set "
                "data.source.text_column / label_column)"
            )
        cols = {c: df[c].tolist() for c in columns}
    texts = [t.strip() for t in cols[text_column]]
    if not texts:
        raise UserInputError(f"{str(p)!r} has no rows")
    for name, values in ((text_column, texts),) + (
        ((label_column, cols[label_column]),) if label_column is not None else ()
    ):
        empty = [i for i, v in enumerate(values) if not str(v).strip()]
        if empty:
            raise UserInputError(
                f"{str(p)!r} row {empty[0]} has an empty {name!r} ({len(empty)} such row(s), "
                f"rows are 0-based, header not counted)"
            )
    labels = [str(v).strip() for v in cols[label_column]] if label_column is not None else None
    return texts, labels


def _class_names(classes) -> list[str] | None:
    """``classes``: ``None``, a list of names, or a text file with one name a line."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        p = Path(classes).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"classes file not found: {str(p)!r}")
        names = [ln.strip() for ln in _decode_utf8(p).splitlines() if ln.strip()]
    else:
        names = [str(n) for n in classes]
    if len(set(names)) != len(names) or len(names) < 2:
        raise UserInputError(f"classes must be at least 2 unique names; got {names[:20]}")
    return names


# ------------------------------------------------------------------------------- sources
class TextSource:
    """Shared part of the text sources: the split, the tokenizer, the net keywords."""

    name = "text"

    def __init__(self, tokenizer: Mapping[str, Any] | None = None) -> None:
        self.tokenizer_spec = dict(tokenizer or {})
        make_tokenizer(self.tokenizer_spec)  # validate now (config errors before any loading)
        self.tokenizer = None
        self.net_kwargs: dict[str, Any] = {}

    def _build(self, texts, labels, sources, names, split: dict[str, np.ndarray], test=None):
        tok = make_tokenizer(self.tokenizer_spec).fit([texts[i] for i in split["train"]])
        self.tokenizer = tok
        self.net_kwargs = {
            "vocab_size": int(tok.vocab_size),
            "pad_id": int(tok.pad_id),
            "max_len": int(tok.max_len),
        }
        full = TextDataset(
            texts, labels, tok, sources=sources, num_classes=len(names), class_names=names
        )
        out = {k: full.subset(v) for k, v in split.items()}
        if test is not None:
            t_texts, t_labels, t_sources = test
            out["test"] = TextDataset(
                t_texts, t_labels, tok, sources=t_sources, num_classes=len(names),
                class_names=names,
            )  # fmt: skip
        log.info(
            "text %s: vocabulary %d ids, max_len %d, %d classes",
            self.name, tok.vocab_size, tok.max_len, len(names),
        )  # fmt: skip
        return out, list(names)


class TextCSV(TextSource):
    """Your texts: a CSV (header row) or JSON-lines file with a text and a label column.

    Labels are class names or integer class ids (``classes`` fixes the names and their
    order: a list or a file with one name a line). Without ``test_path``, ``test_frac`` and
    ``val_frac`` of the rows go to test and validation (stratified, seeded); with it, that
    file is the test set and the rows of ``path`` are train + validation.

    Args:
        path: the data file.
        text_column, label_column: column (CSV) or key (JSONL) names.
        test_path: optional separate test file with the same columns.
        classes: optional class names (list or file).
        tokenizer: tokenizer options (``kind: ngram`` with :class:`NgramTokenizer`'s
            options, or ``kind: hf`` with ``path`` of a local ``tokenizer.json``).
    """

    name = "text_csv"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        text_column: str = "text",
        label_column: str = "label",
        test_path: str | os.PathLike | None = None,
        classes=None,
        tokenizer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(tokenizer)
        if path is None:
            raise ValueError("data.source.path must be a CSV or JSONL file; got None")
        self.path, self.test_path = str(path), None if test_path is None else str(test_path)
        self.text_column, self.label_column = str(text_column), str(label_column)
        self.classes = classes

    def load(self, *, seed: int, val_frac: float, test_frac: float):
        texts, raw = read_table(self.path, self.text_column, self.label_column)
        labels, names = parse_class_labels(raw, _class_names(self.classes), where=repr(self.path))
        sources = [f"{self.path}:row {i}" for i in range(len(texts))]
        test = None
        if self.test_path is not None:
            t_texts, t_raw = read_table(self.test_path, self.text_column, self.label_column)
            t_labels, _ = parse_class_labels(t_raw, names, where=repr(self.test_path))
            test = (t_texts, t_labels, [f"{self.test_path}:row {i}" for i in range(len(t_texts))])
            test_frac = 0.0
        tr, va, te = stratified_split_indices(
            labels, seed=seed, val_frac=val_frac, test_frac=test_frac
        )
        split = {"train": tr, "val": va} | ({} if test is not None else {"test": te})
        return self._build(texts, labels, sources, names, split, test)


# --------------------------------------------------------------------------- synthetic data
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ou"]


def _pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable pseudo-words of 2-3 syllables."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(2, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _NUCLEI[rng.integers(len(_NUCLEI))]
                    for _ in range(k))  # fmt: skip
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def synthetic_texts(
    *,
    num_classes: int = 4,
    num_per_class: int = 500,
    topic_words: int = 40,
    shared_words: int = 15,
    common_words: int = 400,
    topic_frac: float = 0.25,
    min_len: int = 8,
    max_len: int = 40,
    synth_seed: int = 0,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Deterministic synthetic topic texts: ``(texts, labels (N,), class names)``.

    Each class has ``topic_words`` words of its own and shares ``shared_words`` words with
    each of its two neighbours (class ``c`` with ``c - 1`` and ``c + 1``, cyclic); every
    class also draws from ``common_words`` function-like words (Zipf). A text has a length
    uniform in ``[min_len, max_len]`` and a topic share drawn around ``topic_frac`` (some
    texts have almost no topic word): short texts with shared words are genuinely
    ambiguous, so a model trained on noisy labels is not perfect and cleaning matters.
    """
    rng = np.random.default_rng(synth_seed)
    c = int(num_classes)
    if c < 2:
        raise ValueError(f"text_synth num_classes must be >= 2; got {num_classes!r}")
    pool = _pseudo_words(common_words + c * topic_words + c * shared_words, rng)
    common = pool[:common_words]
    own = [pool[common_words + k * topic_words : common_words + (k + 1) * topic_words]
           for k in range(c)]  # fmt: skip
    base = common_words + c * topic_words
    shared = [pool[base + k * shared_words : base + (k + 1) * shared_words] for k in range(c)]
    # shared[k] is between class k and class k+1
    topic = [own[k] + shared[k] + shared[(k - 1) % c] for k in range(c)]
    topic_p = [_zipf(len(t), 0.8) for t in topic]
    for k in range(c):  # the shared words are rarer than the class's own top words
        order = rng.permutation(len(topic[k]))
        topic[k] = [topic[k][i] for i in order]
    common_p = _zipf(common_words, 1.05)
    names = [f"topic_{k}" for k in range(c)]
    texts, labels = [], []
    for k in range(c):
        for _ in range(int(num_per_class)):
            n = int(rng.integers(min_len, max_len + 1))
            share = float(np.clip(rng.beta(2.0, 2.0 / topic_frac - 2.0), 0.03, 0.9))
            is_topic = rng.random(n) < share
            t_idx = rng.choice(len(topic[k]), size=n, p=topic_p[k])
            c_idx = rng.choice(common_words, size=n, p=common_p)
            toks = [topic[k][t] if it else common[ci]
                    for it, t, ci in zip(is_topic, t_idx, c_idx, strict=True)]  # fmt: skip
            texts.append(" ".join(toks))
            labels.append(k)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, dtype=np.int64)[order], names


class TextSynth(TextSource):
    """The embedded default: synthetic topic texts made in-process (see :func:`synthetic_texts`).

    Args:
        num_classes, num_per_class, topic_words, shared_words, common_words, topic_frac,
            min_len, max_len, synth_seed: passed to :func:`synthetic_texts`
            (``synth_seed`` fixes the data set; the run's seed picks splits and noise).
        tokenizer: tokenizer options, as for :class:`TextCSV`.
    """

    name = "text_synth"

    def __init__(self, *, tokenizer: Mapping[str, Any] | None = None, **synth: Any) -> None:
        super().__init__(tokenizer)
        import inspect

        allowed = [p for p in inspect.signature(synthetic_texts).parameters]
        unknown = sorted(set(synth) - set(allowed))
        if unknown:
            raise ValueError(f"text_synth has unknown key(s) {unknown}; allowed: {allowed}")
        self.synth = synth

    def load(self, *, seed: int, val_frac: float, test_frac: float):
        texts, labels, names = synthetic_texts(**self.synth)
        sources = [f"text_synth:row {i}" for i in range(len(texts))]
        tr, va, te = stratified_split_indices(
            labels, seed=seed, val_frac=val_frac, test_frac=test_frac
        )
        return self._build(texts, labels, sources, names, {"train": tr, "val": va, "test": te})
