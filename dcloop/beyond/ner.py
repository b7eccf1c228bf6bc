"""Token classification (NER) label issues.

Input is CoNLL-style text: one token per line with its tag in the last column, blank lines
between sentences, ``-DOCSTART-`` lines skipped. Out-of-fold per-token probabilities come
either from the user's own model (a list of ``(L_i, K)`` arrays, or one ``.npy`` holding
them) or from a small built-in token classifier (hashed token and context-window features,
logistic regression, k-fold by sentence: :func:`token_oof_probs`). cleanlab's
``token_classification`` functions then give the token issues and the sentences ranked
(:func:`find_token_issues`).

The other view, spans as samples (:func:`spans_as_samples`): each BIO entity span becomes
one classification sample (its text plus ``window`` tokens of context each side, labelled
with the entity type) for ordinary confident learning (:func:`find_span_issues`).

Example:
    >>> from dcloop.beyond.ner import read_conll, token_oof_probs, find_token_issues
    >>> sents = read_conll("train.conll")                     # doctest: +SKIP
    >>> probs = token_oof_probs(sents.tokens, sents.labels, len(sents.tag_names))  # +SKIP
    >>> issues, ranked = find_token_issues(sents, probs)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcloop.results import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Sentences:
    """Tokenised, tagged sentences.

    Attributes:
        tokens: one list of tokens per sentence.
        tags: one list of tag strings per sentence (same lengths as ``tokens``).
        tag_names: the K tag names; class ``k`` is ``tag_names[k]`` (sorted, ``O`` first).
    """

    tokens: list[list[str]]
    tags: list[list[str]]
    tag_names: list[str]

    @property
    def labels(self) -> list[np.ndarray]:
        """Tag ids per sentence, int64 ``(L_i,)`` each."""
        lookup = {t: k for k, t in enumerate(self.tag_names)}
        return [np.array([lookup[t] for t in s], dtype=np.int64) for s in self.tags]

    def __len__(self) -> int:
        return len(self.tokens)


def _tag_order(tags: set[str]) -> list[str]:
    return sorted(tags, key=lambda t: (t != "O", t[2:] if t[:2] in ("B-", "I-") else t, t))


def make_sentences(
    tokens: Sequence[Sequence[str]],
    tags: Sequence[Sequence[str]],
    tag_names: Sequence[str] | None = None,
) -> Sentences:
    """Validated :class:`Sentences` from token and tag lists.

    Raises:
        ValueError: if the number of sentences or of tokens in a sentence differ between
            ``tokens`` and ``tags``, a sentence is empty, or a tag is not in ``tag_names``.
    """
    if len(tokens) != len(tags):
        raise ValueError(f"tokens has {len(tokens)} sentences but tags has {len(tags)}")
    toks, tgs = [], []
    for i, (a, b) in enumerate(zip(tokens, tags, strict=True)):
        if len(a) != len(b):
            raise ValueError(f"sentence {i} has {len(a)} tokens but {len(b)} tags")
        if not a:
            raise ValueError(f"sentence {i} is empty; every sentence needs at least one token")
        toks.append([str(t) for t in a])
        tgs.append([str(t) for t in b])
    seen = {t for s in tgs for t in s}
    if tag_names is None:
        names = _tag_order(seen)
    else:
        names = [str(t) for t in tag_names]
        unknown = sorted(seen - set(names))
        if unknown:
            raise ValueError(f"tag(s) {unknown[:10]} are not in tag_names {names}")
    return Sentences(toks, tgs, names)


#: Tag prefixes of the BIO (IOB1, IOB2) and BIOES schemes: ``B-PER``, ``I-PER``, ...
TAG_PREFIXES: tuple[str, ...] = ("B", "I", "E", "S")


def _check_tag(tag: str, path: Path, lineno: int) -> None:
    """Raise ``ValueError`` naming the line unless ``tag`` is ``O`` or ``<B|I|E|S>-<type>``."""
    prefix, dash, kind = tag.partition("-")
    if tag == "O" or (dash and prefix in TAG_PREFIXES and kind):
        return
    raise ValueError(
        f"{str(path)!r} line {lineno}: tag {tag!r} is not in the BIO/BIOES scheme; expected "
        f"'O' or {'/'.join(TAG_PREFIXES)}-<type> such as 'B-PER' (the tag is the last column)"
    )


def read_conll(path: str | os.PathLike, *, tag_names: Sequence[str] | None = None) -> Sentences:
    """Reads a CoNLL-style file: ``token ... tag`` per line, blank line between sentences.

    The first column is the token and the last the tag; columns are split on whitespace.
    Tags are ``O`` or ``B-``/``I-``/``E-``/``S-`` followed by the entity type.
    ``-DOCSTART-`` lines are skipped. The file is only read.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the line of a token without a tag or with a tag outside the
            BIO/BIOES scheme (:data:`TAG_PREFIXES`), or an empty file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"CoNLL file not found: {str(p)!r}")
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    cur_t: list[str] = []
    cur_g: list[str] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if cur_t:
                    tokens.append(cur_t)
                    tags.append(cur_g)
                    cur_t, cur_g = [], []
                continue
            if len(parts) < 2:
                raise ValueError(
                    f"{str(p)!r} line {lineno}: expected 'token ... tag' (at least 2 columns), "
                    f"got {line.rstrip()!r}"
                )
            _check_tag(parts[-1], p, lineno)
            cur_t.append(parts[0])
            cur_g.append(parts[-1])
    if cur_t:
        tokens.append(cur_t)
        tags.append(cur_g)
    if not tokens:
        raise ValueError(f"{str(p)!r} holds no sentences")
    return make_sentences(tokens, tags, tag_names)


def write_conll(path: str | os.PathLike, sentences: Sentences) -> Path:
    """Writes sentences as ``token tag`` lines (atomically)."""

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for toks, tgs in zip(sentences.tokens, sentences.tags, strict=True):
                for a, b in zip(toks, tgs, strict=True):
                    f.write(f"{a} {b}\n")
                f.write("\n")

    return atomic_write(Path(path), dump)


# --------------------------------------------------------------- probabilities
def _token_features(toks: Sequence[str], i: int, window: int) -> dict[str, float]:
    w = toks[i]
    f = {
        "w=" + w.lower(): 1.0,
        "suf3=" + w[-3:].lower(): 1.0,
        "pre3=" + w[:3].lower(): 1.0,
        "title": float(w.istitle()),
        "upper": float(w.isupper()),
        "digit": float(any(c.isdigit() for c in w)),
        "first": float(i == 0),
    }
    for d in range(1, window + 1):
        for sign, j in (("-", i - d), ("+", i + d)):
            word = toks[j].lower() if 0 <= j < len(toks) else "<pad>"
            f[f"w{sign}{d}={word}"] = 1.0
            if 0 <= j < len(toks):
                f[f"title{sign}{d}"] = float(toks[j].istitle())
    return f


def check_token_probs(labels: Sequence[np.ndarray], probs: Sequence[Any], num_tags: int) -> list:
    """Checks per-token probabilities against the labels: one ``(L_i, K)`` array each.

    Raises:
        ValueError: naming the first sentence whose probabilities have the wrong shape.
    """
    if len(probs) != len(labels):
        raise ValueError(f"pred_probs has {len(probs)} sentences but the labels have {len(labels)}")
    out = []
    for i, (lab, p) in enumerate(zip(labels, probs, strict=True)):
        arr = np.asarray(p, dtype=np.float64)
        if arr.shape != (len(lab), num_tags):
            raise ValueError(
                f"pred_probs of sentence {i} has shape {arr.shape}, expected "
                f"({len(lab)}, {num_tags}) = (tokens, tags)"
            )
        out.append(arr)
    return out


def token_oof_probs(
    tokens: Sequence[Sequence[str]],
    labels: Sequence[np.ndarray],
    num_tags: int,
    *,
    folds: int = 5,
    window: int = 2,
    seed: int = 0,
    n_features: int = 2**18,
) -> list[np.ndarray]:
    """Out-of-fold per-token probabilities from a small built-in token classifier.

    Features: the hashed word, its 3-letter prefix and suffix, capitalisation, digits, and
    the words within ``window`` on each side. Model: multinomial logistic regression.
    Sentences are split into ``folds`` seeded folds; each fold is predicted by a model
    trained on the others.

    Returns:
        One ``(L_i, K)`` float array per sentence, rows summing to 1.
    """
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import LogisticRegression

    n = len(tokens)
    if len(labels) != n:
        raise ValueError(f"tokens has {n} sentences but labels has {len(labels)}")
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in [2, {n}] (number of sentences), got {folds}")
    hasher = FeatureHasher(n_features=n_features, input_type="dict")
    feats = [_token_features(s, i, window) for s in tokens for i in range(len(s))]
    x = hasher.transform(feats)
    y = np.concatenate([np.asarray(lab) for lab in labels])
    sent_of = np.repeat(np.arange(n), [len(s) for s in tokens])
    fold_of_sent = np.random.default_rng(seed).permutation(n) % folds
    fold = fold_of_sent[sent_of]
    probs = np.zeros((len(y), num_tags))
    for k in range(folds):
        tr, te = fold != k, fold == k
        if not te.any():
            continue
        clf = LogisticRegression(max_iter=1000, C=2.0)
        clf.fit(x[tr], y[tr])
        probs[np.ix_(te, clf.classes_)] = clf.predict_proba(x[te])
    probs = (probs + 1e-6) / (probs + 1e-6).sum(1, keepdims=True)
    bounds = np.cumsum([0] + [len(s) for s in tokens])
    return [probs[bounds[i] : bounds[i + 1]] for i in range(n)]


# ----------------------------------------------------------------------- issues
def find_token_issues(
    sentences: Sentences, pred_probs: Sequence[Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Token label issues and sentences ranked, through cleanlab.token_classification.

    Args:
        sentences: the tagged sentences.
        pred_probs: out-of-fold probabilities, one ``(L_i, K)`` array per sentence.

    Returns:
        ``(issues, ranked)``. ``issues``: one row per flagged token, worst first (cleanlab's
        order): ``sentence, token_index, token, given_tag, suggested_tag, quality``.
        ``ranked``: one row per sentence, lowest quality first: ``sentence, quality,
        num_issues, text``.
    """
    from cleanlab.token_classification.filter import find_label_issues
    from cleanlab.token_classification.rank import get_label_quality_scores

    labels = sentences.labels
    probs = check_token_probs(labels, pred_probs, len(sentences.tag_names))
    lab_lists = [lab.tolist() for lab in labels]
    flagged = find_label_issues(lab_lists, probs, n_jobs=1)
    sent_scores, token_scores = get_label_quality_scores(lab_lists, probs)
    names = sentences.tag_names
    rows = []
    for s, t in flagged:
        rows.append(
            {
                "sentence": int(s),
                "token_index": int(t),
                "token": sentences.tokens[s][t],
                "given_tag": sentences.tags[s][t],
                "suggested_tag": names[int(np.argmax(probs[s][t]))],
                "quality": float(np.asarray(token_scores[s])[t]),
            }
        )
    issues = pd.DataFrame(
        rows,
        columns=["sentence", "token_index", "token", "given_tag", "suggested_tag", "quality"],
    )
    counts = np.bincount([r["sentence"] for r in rows], minlength=len(sentences))
    ranked = pd.DataFrame(
        {
            "sentence": np.arange(len(sentences)),
            "quality": np.asarray(sent_scores, dtype=float),
            "num_issues": counts,
            "text": [" ".join(t) for t in sentences.tokens],
        }
    )
    ranked = ranked.sort_values(["quality", "sentence"], kind="stable").reset_index(drop=True)
    return issues, ranked


def spans_as_samples(sentences: Sentences, *, window: int = 3) -> pd.DataFrame:
    """BIO entity spans as classification samples with their context.

    A span starts at ``B-X`` (or an ``I-X`` that does not continue a span of type X) and
    runs over the following ``I-X`` tokens.

    Returns:
        One row per span: ``sentence, start, end`` (token range, end exclusive), ``label``
        (entity type X), ``text``, ``left`` and ``right`` (``window`` tokens of context).
    """
    rows = []
    for s, (toks, tags) in enumerate(zip(sentences.tokens, sentences.tags, strict=True)):
        i = 0
        while i < len(tags):
            tag = tags[i]
            if tag[:2] not in ("B-", "I-"):
                i += 1
                continue
            kind, j = tag[2:], i + 1
            while j < len(tags) and tags[j] == f"I-{kind}":
                j += 1
            rows.append(
                {
                    "sentence": s,
                    "start": i,
                    "end": j,
                    "label": kind,
                    "text": " ".join(toks[i:j]),
                    "left": " ".join(toks[max(0, i - window) : i]),
                    "right": " ".join(toks[j : j + window]),
                }
            )
            i = j
    return pd.DataFrame(
        rows, columns=["sentence", "start", "end", "label", "text", "left", "right"]
    )


def find_span_issues(
    spans: pd.DataFrame, *, folds: int = 5, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Confident learning on spans as samples (built-in k-fold span classifier).

    Features: the span's words, shape and its context words (hashed); logistic regression,
    k-fold out-of-fold probabilities; cleanlab's ``find_label_issues`` and label quality.

    Returns:
        ``(table, pred_probs)``: ``spans`` plus ``given``, ``suggested``, ``quality``,
        ``flagged``, sorted flagged first, worst first; and the ``(S, T)`` OOF matrix
        (columns: sorted entity types).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if len(spans) < folds:
        raise ValueError(f"need at least folds={folds} spans, got {len(spans)}")
    types = sorted(spans["label"].unique())
    y = spans["label"].map({t: k for k, t in enumerate(types)}).to_numpy()
    feats = []
    for r in spans.itertuples():
        f = {f"w={w.lower()}": 1.0 for w in r.text.split()}
        f.update({f"l={w.lower()}": 1.0 for w in r.left.split()[-2:]})
        f.update({f"r={w.lower()}": 1.0 for w in r.right.split()[:2]})
        f["len"] = float(len(r.text.split()))
        f["title"] = float(r.text.istitle())
        feats.append(f)
    x = FeatureHasher(n_features=2**16, input_type="dict").transform(feats)
    probs = np.zeros((len(y), len(types)))
    n_splits = int(min(folds, np.bincount(y).min())) if np.bincount(y).min() >= 2 else 2
    cv = StratifiedKFold(max(n_splits, 2), shuffle=True, random_state=seed)
    for tr, te in cv.split(x, y):
        clf = LogisticRegression(max_iter=1000, C=2.0).fit(x[tr], y[tr])
        probs[np.ix_(te, clf.classes_)] = clf.predict_proba(x[te])
    probs = (probs + 1e-6) / (probs + 1e-6).sum(1, keepdims=True)
    flagged = find_label_issues(y, probs, n_jobs=1)
    table = spans.copy()
    table["given"] = table["label"]
    table["suggested"] = [types[k] for k in probs.argmax(1)]
    table["quality"] = get_label_quality_scores(y, probs)
    table["flagged"] = flagged
    table = table.sort_values(["flagged", "quality"], ascending=[False, True], kind="stable")
    return table.reset_index(drop=True), probs


# ------------------------------------------------------------------- synthetic
_NAMES = {
    "PER": [
        "Alice",
        "Bob",
        "Carla",
        "Dmitri",
        "Emeka",
        "Fatima",
        "Goran",
        "Hana",
        "Ivan",
        "Julia",
        "Kenji",
        "Lena",
    ],
    "LOC": [
        "Paris",
        "Lagos",
        "Oslo",
        "Lima",
        "Kyoto",
        "Cairo",
        "Quito",
        "Perth",
        "Dakar",
        "Riga",
        "Hanoi",
        "Tunis",
    ],
    "ORG": [
        "Acme",
        "Globex",
        "Initech",
        "Umbrella",
        "Hooli",
        "Vehement",
        "Soylent",
        "Stark",
        "Wayne",
        "Cyberdyne",
        "Tyrell",
        "Aperture",
    ],
}
_TEMPLATES = [
    ["{PER}", "visited", "{LOC}", "last", "week", "."],
    ["{PER}", "works", "for", "{ORG}", "in", "{LOC}", "."],
    ["The", "office", "of", "{ORG}", "is", "in", "{LOC}", "."],
    ["{PER}", "met", "{PER}", "at", "{ORG}", "."],
    ["Yesterday", "{ORG}", "hired", "{PER}", "."],
    ["Flights", "to", "{LOC}", "were", "cancelled", "."],
]


def make_synthetic_conll(
    num_sentences: int = 300, *, noise_rate: float = 0.1, seed: int = 0
) -> tuple[Sentences, list[tuple[int, int]]]:
    """Template sentences with PER/LOC/ORG entities; ``noise_rate`` of entities retagged.

    Returns:
        ``(sentences, corrupted)``: the noisy sentences and the ``(sentence, token)`` of
        every corrupted token (the entity's B- token gets another entity type).
    """
    rng = np.random.default_rng(seed)
    tokens, tags, ents = [], [], []
    for s in range(num_sentences):
        tpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        toks, tgs = [], []
        for w in tpl:
            if w.startswith("{"):
                kind = w[1:-1]
                ents.append((s, len(toks), kind))
                toks.append(str(rng.choice(_NAMES[kind])))
                tgs.append(f"B-{kind}")
            else:
                toks.append(w)
                tgs.append("O")
        tokens.append(toks)
        tags.append(tgs)
    pick = rng.choice(len(ents), size=int(round(noise_rate * len(ents))), replace=False)
    corrupted = []
    kinds = sorted(_NAMES)
    for e in sorted(pick):
        s, t, kind = ents[e]
        other = [k for k in kinds if k != kind]
        tags[s][t] = f"B-{other[int(rng.integers(len(other)))]}"
        corrupted.append((s, t))
    return make_sentences(tokens, tags, ["O"] + [f"B-{k}" for k in kinds]), corrupted
