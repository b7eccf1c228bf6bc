"""Text augmentation for weak classes: EDA (Wei & Zou, 2019) and back-translation as a hook.

Four EDA ops edit the words of a text; at level ``l`` of ``1..L`` each op changes
``n = max(1, round(alpha_l * len(words)))`` words, with ``alpha`` interpolated from mild
(level 1) to strong (level L) (:data:`TEXT_OPS`), and each op is applied with probability
``p``. Level 0 leaves a text unchanged. The label is never touched (an augmented item
keeps its ``y`` and ``index``); the edited text is re-tokenised by the dataset.

Synonyms (for ``synonym`` and ``insert``) come from, in this order with ``synonyms="auto"``:

* a table you give (``synonym_table``: JSON ``{word: [synonyms]}``, or CSV rows
  ``word,synonym[;synonym...]``);
* WordNet, when ``nltk`` *and* its WordNet data are already on the machine (never
  downloaded);
* otherwise co-occurrence neighbours from the training split: words whose context
  distributions (PPMI over a +-2 word window) have the highest cosine similarity. This is
  the distributional hypothesis, needs no resource, and uses only the training texts. Its
  known weakness: words of opposite meaning share contexts ("good"/"bad"), so for
  sentiment give a table or use WordNet; for topic labels it keeps the topic.

Back-translation is a pluggable hook: a callable ``list[str] -> list[str]`` of the same
length (e.g. a local MarianMT pair, see ``docs/text.md``), given as a ``_target_``. It is
called once at setup on every training text, in batches; during training a text at level
``l`` is replaced by its back-translation with probability ``p * l / L`` before the EDA ops.

Everything is deterministic under the draw seed the policy sampler gives each item.

Example:
    >>> aug = TextAugment(["swap"], level=3, num_levels=3, p=1.0)
    >>> aug("the cat sat on the mat", seed=0) != "the cat sat on the mat"
    True
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcloop._checks import check_callable
from dcloop.augment.image import check_ops
from dcloop.augment.policy import AugmentedDataset

log = logging.getLogger(__name__)

#: op name -> (mild alpha, strong alpha, what it does).
TEXT_OPS: dict[str, tuple[float, float, str]] = {
    "synonym": (0.05, 0.3, "replace n words that have synonyms by a random synonym"),
    "insert": (0.05, 0.3, "insert a synonym of a random word at a random place, n times"),
    "swap": (0.05, 0.3, "swap two random words, n times"),
    "delete": (0.05, 0.3, "delete each word with probability alpha (one word always stays)"),
    "backtranslate": (0.0, 0.0, "the text's back-translation (needs the backtranslate hook)"),
}
#: Where synonyms come from.
SYNONYM_SOURCES: tuple[str, ...] = ("auto", "table", "wordnet", "cooccurrence", "none")

# Short function words EDA does not replace (a subset of the NLTK stop list, built in).
STOPWORDS = frozenset(
    "a an the and or but if of at by for with about against between into through during "
    "before after above below to from up down in out on off over under again further then "
    "once here there when where why how all any both each few more most other some such no "
    "nor not only own same so than too very s t can will just don should now i me my we our "
    "you your he him his she her it its they them their what which who whom this that these "
    "those am is are was were be been being have has had having do does did doing".split()
)


def alpha(op: str, level: int, num_levels: int) -> float:
    """The magnitude of ``op`` at ``level`` (0 at level 0)."""
    if level <= 0:
        return 0.0
    mild, strong, _ = TEXT_OPS[op]
    t = (level - 1) / (num_levels - 1) if num_levels > 1 else 1.0
    return mild + t * (strong - mild)


# ----------------------------------------------------------------------------- synonyms
def read_synonym_table(path: str | os.PathLike) -> dict[str, list[str]]:
    """A synonym table: JSON ``{word: [synonyms]}`` or CSV ``word,synonym[;synonym...]``
    (one or more rows per word; a header row ``word,...`` is skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"synonym table not found: {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"synonym table {str(p)!r} is not UTF-8 ({err})") from None
    table: dict[str, list[str]] = {}
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"synonym table {str(p)!r} is not JSON ({err.msg})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"synonym table {str(p)!r} must be a JSON object word -> [synonyms]")
        items = [(str(k), [str(s) for s in v]) for k, v in data.items()]
    else:
        items = []
        for i, row in enumerate(csv.reader(io.StringIO(text))):
            if not row or (i == 0 and row[0].strip().lower() == "word"):
                continue
            if len(row) < 2:
                raise ValueError(f"synonym table {str(p)!r} line {i + 1}: expected word,synonym")
            syns = [s.strip() for cell in row[1:] for s in cell.replace("|", ";").split(";")]
            items.append((row[0], syns))
    for word, syns in items:
        w = word.strip().lower()
        got = table.setdefault(w, [])
        got += [s.lower() for s in syns if s.strip() and s.lower() != w and s.lower() not in got]
    return {w: s for w, s in table.items() if s}


def wordnet_available() -> bool:
    """Whether ``nltk`` and its WordNet data are on this machine (nothing is downloaded)."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        return True
    except (ImportError, LookupError, OSError):
        try:  # the data may be zipped only
            import nltk

            nltk.data.find("corpora/wordnet.zip")
            return True
        except (ImportError, LookupError, OSError):
            return False


def wordnet_synonyms(words: Sequence[str]) -> dict[str, list[str]]:
    """WordNet synonyms (lemma names of every synset) of ``words``."""
    from nltk.corpus import wordnet

    out = {}
    for w in words:
        syns = []
        for s in wordnet.synsets(w):
            for lemma in s.lemma_names():
                lemma = lemma.replace("_", " ").lower()
                if lemma != w and lemma not in syns:
                    syns.append(lemma)
        if syns:
            out[w] = syns
    return out


def cooccurrence_synonyms(
    texts: Sequence[str],
    *,
    max_words: int = 3000,
    min_count: int = 3,
    window: int = 2,
    top: int = 5,
    min_similarity: float = 0.2,
) -> dict[str, list[str]]:
    """Nearest words by context (PPMI cosine) among the ``max_words`` most frequent
    non-stop words of ``texts``; at most ``top`` per word, similarity >= ``min_similarity``."""
    docs = [t.lower().split() for t in texts]
    counts = Counter(w for d in docs for w in d)
    vocab = [w for w, c in counts.most_common() if c >= min_count and w not in STOPWORDS]
    vocab = vocab[:max_words]
    if len(vocab) < 2:
        return {}
    idx = {w: i for i, w in enumerate(vocab)}
    ctx_words = [w for w, c in counts.most_common(max_words) if c >= min_count]
    cidx = {w: i for i, w in enumerate(ctx_words)}
    m = np.zeros((len(vocab), len(ctx_words)), dtype=np.float32)
    for d in docs:
        for i, w in enumerate(d):
            r = idx.get(w)
            if r is None:
                continue
            for j in range(max(0, i - window), min(len(d), i + window + 1)):
                c = cidx.get(d[j]) if j != i else None
                if c is not None:
                    m[r, c] += 1.0
    total = m.sum()
    if total == 0:
        return {}
    pw = m.sum(1, keepdims=True) / total
    pc = m.sum(0, keepdims=True) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log((m / total) / (pw * pc))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0).astype(np.float32)
    norm = np.linalg.norm(ppmi, axis=1, keepdims=True)
    unit = ppmi / np.maximum(norm, 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -1.0)
    out: dict[str, list[str]] = {}
    k = min(top, len(vocab) - 1)
    best = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    for r, w in enumerate(vocab):
        near = [vocab[c] for c in best[r] if sim[r, c] >= min_similarity]
        if near:
            out[w] = near
    return out


def build_synonyms(
    source: str, texts: Sequence[str], table: str | os.PathLike | None
) -> tuple[dict[str, list[str]], str]:
    """The synonym map and the name of the source used (see the module docstring)."""
    if source not in SYNONYM_SOURCES:
        raise ValueError(f"augment synonyms must be one of {list(SYNONYM_SOURCES)}; got {source!r}")
    if source == "none":
        return {}, "none"
    if source == "table" or (source == "auto" and table is not None):
        if table is None:
            raise ValueError("augment synonyms=table needs synonym_table=<CSV or JSON file>")
        return read_synonym_table(table), "table"
    if source == "wordnet" or (source == "auto" and wordnet_available()):
        if not wordnet_available():
            raise ValueError(
                "augment synonyms=wordnet needs nltk and its WordNet data on this machine "
                "(dcloop never downloads); use synonyms=cooccurrence or a synonym_table"
            )
        vocab = sorted({w for t in texts for w in t.lower().split() if w not in STOPWORDS})
        return wordnet_synonyms(vocab), "wordnet"
    return cooccurrence_synonyms(texts), "cooccurrence"


# ---------------------------------------------------------------------------------- ops
def synonym_replace(ws: list[str], n: int, syn: Mapping[str, list[str]], rng) -> list[str]:
    """Replace up to ``n`` distinct non-stop words that have synonyms."""
    out = list(ws)
    cand = [i for i, w in enumerate(ws) if w.lower() not in STOPWORDS and syn.get(w.lower())]
    rng.shuffle(cand)
    for i in cand[:n]:
        out[i] = rng.choice(syn[ws[i].lower()])
    return out


def random_insert(ws: list[str], n: int, syn: Mapping[str, list[str]], rng) -> list[str]:
    """Insert a synonym of a random word at a random position, ``n`` times."""
    out = list(ws)
    for _ in range(n):
        cand = [w for w in out if syn.get(w.lower())]
        if not cand:
            break
        out.insert(rng.randrange(len(out) + 1), rng.choice(syn[rng.choice(cand).lower()]))
    return out


def random_swap(ws: list[str], n: int, rng) -> list[str]:
    """Swap two random positions, ``n`` times."""
    out = list(ws)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(ws: list[str], a: float, rng) -> list[str]:
    """Delete each word with probability ``a``; one (random) word always stays."""
    if len(ws) <= 1:
        return list(ws)
    out = [w for w in ws if rng.random() >= a]
    return out if out else [rng.choice(ws)]


class TextAugment:
    """EDA ops (and back-translation) at one level: ``(text, seed, index) -> text``.

    Args:
        ops: names from :data:`TEXT_OPS`, applied in the order given.
        level: this level, in ``0..num_levels``.
        num_levels: L.
        p: probability that each op is applied.
        synonyms: word -> synonyms (lower case).
        backtranslated: the back-translation of each training text (by index), for
            the ``backtranslate`` op.
    """

    def __init__(
        self,
        ops: Sequence[str],
        *,
        level: int,
        num_levels: int,
        p: float = 0.5,
        synonyms: Mapping[str, list[str]] | None = None,
        backtranslated: Sequence[str] | None = None,
    ) -> None:
        check_ops(ops, TEXT_OPS, "text")
        if "backtranslate" in ops and backtranslated is None:
            raise ValueError("text op 'backtranslate' needs augment.backtranslate (a hook)")
        self.ops, self.level, self.num_levels = list(ops), int(level), int(num_levels)
        self.p = float(p)
        self.synonyms = dict(synonyms or {})
        self.backtranslated = backtranslated

    def __call__(self, text: str, seed: int | None = None, index: int | None = None) -> str:
        if self.level <= 0:
            return text
        rng = random.Random(seed)
        ws = text.split()
        if "backtranslate" in self.ops and index is not None:
            if rng.random() < self.p * self.level / self.num_levels:
                ws = str(self.backtranslated[int(index)]).split() or ws
        for op in self.ops:
            if op == "backtranslate" or rng.random() >= self.p:
                continue
            a = alpha(op, self.level, self.num_levels)
            n = max(1, round(a * len(ws)))
            if op == "synonym":
                ws = synonym_replace(ws, n, self.synonyms, rng)
            elif op == "insert":
                ws = random_insert(ws, n, self.synonyms, rng)
            elif op == "swap":
                ws = random_swap(ws, n, rng)
            else:
                ws = random_delete(ws, a, rng)
        return " ".join(ws)


# ------------------------------------------------------------------------- back-translation
def check_translator(fn: Any) -> Callable[[list[str]], list[str]]:
    """``fn`` if it is callable (the hook's contract is checked on each call)."""
    return check_callable(
        "augment.backtranslate", fn, allow_none=False, expected="a callable list[str] -> list[str]"
    )


def backtranslate_all(
    fn: Callable[[list[str]], list[str]], texts: Sequence[str], batch_size: int = 64
) -> list[str]:
    """``fn`` over ``texts`` in batches; checks the contract (a list of str, same length)."""
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        got = fn(chunk)
        if isinstance(got, (str, bytes)) or not isinstance(got, Sequence):
            raise ValueError(
                f"augment.backtranslate must return a list of str; got {type(got).__name__}"
            )
        if len(got) != len(chunk):
            raise ValueError(
                f"augment.backtranslate returned {len(got)} texts for {len(chunk)}; "
                "it must return one text per input, in order"
            )
        bad = [i for i, t in enumerate(got) if not isinstance(t, str)]
        if bad:
            raise ValueError(
                f"augment.backtranslate returned a {type(got[bad[0]]).__name__} at position "
                f"{bad[0]}; expected str"
            )
        out += [t if t.strip() else s for t, s in zip(got, chunk, strict=True)]
    return out


def resolve_hook(spec: Any) -> Callable[[list[str]], list[str]] | None:
    """The back-translation hook from config: ``None``, a callable, or a ``_target_`` map."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        from hydra.utils import instantiate

        spec = instantiate(dict(spec))
    return check_translator(spec)


# ------------------------------------------------------------------------------ dataset
class TextAugmentedDataset(AugmentedDataset):
    """:class:`~dcloop.augment.AugmentedDataset` for texts: the key ``(index, level, seed)``
    picks the level's :class:`TextAugment`, which edits ``dataset.texts[index]``; the result is
    re-tokenised with ``dataset.encode``. Level 0 returns the stored ids."""

    def __init__(self, dataset, transforms: Sequence[TextAugment | None]) -> None:
        if not hasattr(dataset, "texts") or not hasattr(dataset, "encode"):
            raise ValueError("text augmentation needs a dataset with .texts and .encode()")
        super().__init__(dataset, transforms)

    def __getitem__(self, key) -> tuple[torch.Tensor, int, int]:
        index, level, seed = self.parse_key(key)
        fn = self.transforms[level]
        if fn is None:
            return self.dataset[index]
        _, y, i = self.dataset[index]
        return self.dataset.encode(fn(self.dataset.texts[index], seed, index)), y, i


def text_transforms(
    ops: Sequence[str],
    num_levels: int,
    *,
    p: float,
    texts: Sequence[str],
    synonyms: str = "auto",
    synonym_table: str | os.PathLike | None = None,
    backtranslate: Callable[[list[str]], list[str]] | None = None,
) -> tuple[list[TextAugment | None], str]:
    """``[None, level 1, ..., level L]`` for a training set, and the synonym source used."""
    check_ops(ops, TEXT_OPS, "text")
    needs_syn = any(op in ("synonym", "insert") for op in ops)
    syn, used = build_synonyms(synonyms, texts, synonym_table) if needs_syn else ({}, "none")
    bt = None
    if "backtranslate" in ops:
        if backtranslate is None:
            raise ValueError("text op 'backtranslate' needs augment.backtranslate (a _target_)")
        bt = backtranslate_all(backtranslate, texts)
    elif backtranslate is not None:
        bt = backtranslate_all(backtranslate, texts)
        ops = [*ops, "backtranslate"]
    log.info("text augmentation: ops %s, synonyms from %s (%d words)", ops, used, len(syn))
    levels = [
        TextAugment(ops, level=lv, num_levels=num_levels, p=p, synonyms=syn, backtranslated=bt)
        for lv in range(1, num_levels + 1)
    ]
    return [None, *levels], used
