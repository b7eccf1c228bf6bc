"""``dcloop-beyond``: label checks beyond classification, from the command line.

Subcommands::

    dcloop-beyond make-coco OUT [--images 60] [--noise-rate 0.15] [--seed 0]
    dcloop-beyond pairs --x X.npy --y Y.npy [--truth MASK.npy] [--k 10] [--out DIR]
    dcloop-beyond ner FILE.conll [--probs PROBS.npy] [--folds 5] [--out DIR]
    dcloop-beyond discrepancy (--run-dir RUN | --train A.npy --test B.npy) [--out DIR]

Arguments and the named input files are checked before numpy, torch or the subcommand's
module load, so ``--help`` and a wrong value or path answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcloop.argtypes import number
from dcloop.console import emit
from dcloop.errors import quote, user_error_message

log = logging.getLogger(__name__)


def _write_csv(table: Any, path: Path) -> None:
    from dcloop.results import write_csv  # torch: `dcloop-beyond --help` starts fast

    write_csv(table, path)


def _write_json(obj: Any, path: Path) -> None:
    from dcloop.results import write_json  # torch: `dcloop-beyond --help` starts fast

    write_json(obj, path)


def _existing_file(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {quote(str(p))!r}")
    return p


def _load_npy(path: str, what: str) -> Any:
    import numpy as np

    return np.load(_existing_file(path, what), allow_pickle=False)


def _check_inputs(args: argparse.Namespace) -> None:
    """The named input files exist (one clear line before anything heavy loads)."""
    if args.command == "pairs":
        _existing_file(args.x, "X embeddings")
        _existing_file(args.y, "Y embeddings")
        if args.truth:
            _existing_file(args.truth, "truth mask")
    elif args.command == "ner":
        p = Path(args.file).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"CoNLL file not found: {quote(str(p))!r}")
        if args.probs:
            _existing_file(args.probs, "token probabilities")
    elif args.command == "discrepancy":
        if args.run_dir:
            d = Path(args.run_dir).expanduser() / "discrepancy"
            if not (d / "train_embeddings.npy").is_file():
                raise FileNotFoundError(
                    f"{quote(str(d / 'train_embeddings.npy'))!r} not found; run dcloop with "
                    "discrepancy=true first, or pass --train/--test .npy embeddings"
                )
        elif not (args.train and args.test):
            raise ValueError("pass --run-dir RUN, or both --train A.npy and --test B.npy")
        else:
            _existing_file(args.train, "train embeddings")
            _existing_file(args.test, "test embeddings")


def _make_coco(args: argparse.Namespace) -> None:
    from dcloop.beyond.detection import make_synthetic_coco

    info = make_synthetic_coco(
        args.out, num_images=args.images, noise_rate=args.noise_rate, seed=args.seed
    )
    emit(
        f"synthetic COCO: {info['num_annotations']} annotations, {len(info['corrupted'])} "
        f"with a wrong category\n  images      {info['root']}/images/\n"
        f"  annotations {info['annotations']}\n  truth       {info['truth']}\n"
        f"  try: dcloop data=coco data.source.root={info['root']} "
        f"data.source.annotations={info['annotations']} noise=none"
    )


def _pairs(args: argparse.Namespace) -> None:
    from dcloop.beyond.pairs import precision_recall, score_pairs

    x = _load_npy(args.x, "X embeddings")
    y = _load_npy(args.y, "Y embeddings")
    table = score_pairs(x, y, k=args.k, seed=args.seed)
    out = Path(args.out)
    _write_csv(table, out / "pair_outliers.csv")
    lines = [f"scored {len(table)} pairs -> {out / 'pair_outliers.csv'} (worst first)"]
    if args.truth:
        truth = _load_npy(args.truth, "truth mask").astype(bool)
        pr = precision_recall(table, truth, top=args.top)
        _write_json(pr, out / "pair_metrics.json")
        for name, m in pr.items():
            lines.append(
                f"  {name:9s} precision {m['precision']:.3f} recall {m['recall']:.3f} "
                f"AUROC {m['auroc']:.3f} (top {m['top']})"
            )
    lines.append("  worst rows: " + ", ".join(str(i) for i in table["index"].head(10)))
    emit("\n".join(lines))


def _split_probs(arr: Any, lengths: list[int]) -> list[Any]:
    import numpy as np

    if arr.ndim != 2 or arr.shape[0] != sum(lengths):
        raise ValueError(
            f"--probs must be a (tokens, tags) array with one row per token of the file "
            f"({sum(lengths)} tokens), got shape {arr.shape}"
        )
    bounds = np.cumsum([0, *lengths])
    return [arr[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]


def _ner(args: argparse.Namespace) -> None:
    from dcloop.beyond.ner import (
        find_span_issues,
        find_token_issues,
        read_conll,
        spans_as_samples,
        token_oof_probs,
    )

    sents = read_conll(args.file)
    if args.probs:
        probs = _split_probs(
            _load_npy(args.probs, "token probabilities"), [len(t) for t in sents.tokens]
        )
    else:
        probs = token_oof_probs(
            sents.tokens, sents.labels, len(sents.tag_names), folds=args.folds, seed=args.seed
        )
    issues, ranked = find_token_issues(sents, probs)
    out = Path(args.out)
    _write_csv(issues, out / "token_issues.csv")
    _write_csv(ranked, out / "sentences_ranked.csv")
    lines = [
        f"{len(sents)} sentences, {sum(len(t) for t in sents.tokens)} tokens, "
        f"tags {sents.tag_names}: {len(issues)} token issues",
        f"  {out / 'token_issues.csv'}, {out / 'sentences_ranked.csv'}",
    ]
    spans = spans_as_samples(sents)
    if len(spans) >= args.folds and spans["label"].nunique() > 1:
        table, _ = find_span_issues(spans, folds=args.folds, seed=args.seed)
        _write_csv(table, out / "span_issues.csv")
        lines.append(
            f"  spans as samples: {int(table['flagged'].sum())} of {len(table)} "
            f"flagged -> {out / 'span_issues.csv'}"
        )
    for r in ranked.head(5).itertuples():
        lines.append(f"  q={r.quality:.3f}  {r.text}")
    emit("\n".join(lines))


def _discrepancy(args: argparse.Namespace) -> None:
    from dcloop.beyond.discrepancy import discrepancy_report

    if args.run_dir:
        d = Path(args.run_dir).expanduser() / "discrepancy"
        train = _load_npy(str(d / "train_embeddings.npy"), "train embeddings")
        test = _load_npy(str(d / "test_embeddings.npy"), "test embeddings")
        out = Path(args.out) if args.out else d
    else:
        if not (args.train and args.test):
            raise ValueError("pass --run-dir RUN, or both --train A.npy and --test B.npy")
        train = _load_npy(args.train, "train embeddings")
        test = _load_npy(args.test, "test embeddings")
        out = Path(args.out or "discrepancy")
    maps = [] if args.no_maps else ["umap", "tsne"]
    res = discrepancy_report(
        train, test, out, k=args.k, alpha=args.alpha, maps=maps, seed=args.seed
    )
    t = res["test_only"]
    emit(
        f"train {res['num_train']} / test {res['num_test']} embeddings (D={res['dim']})\n"
        f"  domain AUC  logistic {res['domain_auc']['logistic']:.3f}  "
        f"kNN {res['domain_auc']['knn']:.3f}  (0.5 = indistinguishable)\n"
        f"  test-only   {t['num_flagged']} test samples in {t['num_patterns']} pattern(s) "
        f"(>= {t['min_test_neighbours']} of k={t['k']} neighbours from test; base rate "
        f"{t['base_rate']:.2f})\n  results     {out}/"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dcloop-beyond``."""
    p = argparse.ArgumentParser(prog="dcloop-beyond", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("make-coco", help="write a small synthetic COCO dataset")
    c.add_argument("out")
    c.add_argument("--images", type=number(int, 1), default=60)
    c.add_argument("--noise-rate", type=number(float, 0.0, 1.0), default=0.15)
    c.add_argument("--seed", type=number(int, 0), default=0)
    c.set_defaults(func=_make_coco)

    c = sub.add_parser("pairs", help="outlier scores of (X, Y) pairs from .npy embeddings")
    c.add_argument("--x", required=True, help="(N, Dx) .npy")
    c.add_argument("--y", required=True, help="(N, Dy) or (N,) .npy")
    c.add_argument("--truth", help="(N,) bool .npy of known corrupted pairs (for P/R)")
    c.add_argument(
        "--top", type=number(int, 1), default=None, help="pairs flagged per method for P/R"
    )
    c.add_argument("--k", type=number(int, 1), default=10)
    c.add_argument("--seed", type=number(int, 0), default=0)
    c.add_argument("--out", default="pairs_out")
    c.set_defaults(func=_pairs)

    c = sub.add_parser("ner", help="token label issues of a CoNLL file")
    c.add_argument("file")
    c.add_argument("--probs", help="(tokens, tags) .npy of out-of-fold probabilities")
    c.add_argument("--folds", type=number(int, 2), default=5)
    c.add_argument("--seed", type=number(int, 0), default=0)
    c.add_argument("--out", default="ner_out")
    c.set_defaults(func=_ner)

    c = sub.add_parser("discrepancy", help="train/test discrepancy of embeddings")
    c.add_argument("--run-dir", help="a dcloop run made with discrepancy=true")
    c.add_argument("--train", help="(N, D) .npy")
    c.add_argument("--test", help="(M, D) .npy")
    c.add_argument("--k", type=number(int, 1), default=10)
    c.add_argument("--alpha", type=number(float, 0.0, 1.0), default=0.01)
    c.add_argument("--seed", type=number(int, 0), default=0)
    c.add_argument("--no-maps", action="store_true", help="skip the UMAP/t-SNE PNGs")
    c.add_argument("--out", default=None)
    c.set_defaults(func=_discrepancy)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dcloop-beyond`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        _check_inputs(args)
        args.func(args)
    except (ValueError, OSError) as err:  # bad input, unreadable files: one line
        message = user_error_message(err) or " ".join(quote(w) for w in str(err).split())
        sys.stderr.write(f"dcloop-beyond {args.command}: error: {message}\n")
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
