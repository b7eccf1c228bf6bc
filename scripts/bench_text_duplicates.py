"""Near-duplicate texts by token-set Jaccard (:func:`dcloop.health.text_duplicates`): quality
on AG News with planted copies, and time at scale (issue 22).

* Quality: :func:`bench_health_planted_run.write_agnews` per seed (AG News 4,000 + 40
  off-topic texts + 40 copies edited by 1-3 word deletions, swaps or upper-casings), tokenized
  as a run tokenizes it (``data=text_csv``'s ``NgramTokenizer``: unigrams, 8,000 words, seen
  twice). Every text in a flagged pair counts as flagged. Truths: the planted pairs only (AG
  News's own repeated stories then count as false), and planted + AG News's own (two AG News
  texts sharing at least half of their lower-case words, ``bench_health_planted.TEXT_JACCARD``,
  fixed before this detector; the same family of measure, so this column favours it).
* Scale: Zipf-distributed synthetic texts (40 tokens of 20,000, exponent 1.1) with 1 % exact
  copies edited in 2 tokens, N up to 100,000: seconds, pairs found, recall of the copies, and
  the brute-force dense product's time at the smallest N.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_text_duplicates.py --out
scripts/results/bench_text_duplicates``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_health_planted as bhp  # noqa: E402
from bench_health_planted_run import write_agnews  # noqa: E402

from dcloop.data.tokenize import UNK_ID, NgramTokenizer  # noqa: E402
from dcloop.health import text_duplicates  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def flagged(pairs: torch.Tensor, n: int) -> np.ndarray:
    f = np.zeros(n, bool)
    f[pairs.flatten().numpy()] = True
    return f


def quality(seed: int, workdir: Path) -> dict:
    truth = write_agnews(seed, workdir / f"agnews_seed{seed}")
    texts = truth["text"].tolist()
    tok = NgramTokenizer(ngrams=(1,), max_vocab=8000, min_count=2, max_len=128).fit(texts)
    ids = torch.as_tensor(tok.encode_batch(texts))
    n = len(texts)
    orig = truth["original"].to_numpy()
    planted = np.zeros(n, bool)
    for c in np.flatnonzero(orig >= 0):
        planted[c] = planted[orig[c]] = True
    own = planted | bhp.natural_text_duplicates(texts)
    rows = {}
    for t in THRESHOLDS:
        t0 = time.perf_counter()
        res = text_duplicates(ids, threshold=t, pad_id=tok.pad_id, unk_id=UNK_ID)
        sec = time.perf_counter() - t0
        f = flagged(res.pairs, n)
        rows[t] = {
            "pairs": int(res.pairs.shape[0]),
            "planted_only": bhp.prf(f, planted),
            "planted_and_own": bhp.prf(f, own),
            "seconds": round(sec, 3),
        }
    return {
        "seed": seed,
        "texts": n,
        "own_pairs_texts": int(own.sum() - planted.sum()),
        **{"thresholds": rows},
    }


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 20001) ** 1.1
    ids = g.choice(20000, size=(n, 40), p=p / p.sum()) + 2  # 0 pad, 1 unknown
    copies = g.choice(n, n // 100, replace=False)
    src = g.choice(np.setdiff1d(np.arange(n), copies), copies.size, replace=False)
    ids[copies] = ids[src]
    for _ in range(2):  # two tokens of each copy replaced
        ids[copies, g.integers(0, 40, copies.size)] = g.integers(2, 20002, copies.size)
    partner = np.full(n, -1)
    partner[copies] = src
    return torch.from_numpy(ids), partner


def scale(sizes: list[int], threshold: float = 0.6) -> list[dict]:
    out = []
    for n in sizes:
        ids, partner = synthetic(n)
        t0 = time.perf_counter()
        res = text_duplicates(ids, threshold=threshold, unk_id=1)
        sec = time.perf_counter() - t0
        found = {tuple(sorted(p)) for p in res.pairs.tolist()}
        want = {tuple(sorted((int(c), int(partner[c])))) for c in np.flatnonzero(partner >= 0)}
        row = {
            "n": n,
            "seconds": round(sec, 2),
            "pairs": len(found),
            "copies": len(want),
            "copies_found": len(found & want),
        }
        if n == sizes[0]:  # the dense product every pair, for comparison
            import scipy.sparse as sp

            from dcloop.health.textdup import _sets

            t0 = time.perf_counter()
            m = _sets(ids, "ids", 0, 1)
            inter = (m @ m.T).toarray()
            size = np.asarray(m.sum(1)).ravel()
            jac = inter / np.maximum(size[:, None] + size[None, :] - inter, 1)
            dense = int((np.triu(jac, 1) >= threshold).sum())
            row["dense_seconds"] = round(time.perf_counter() - t0, 2)
            row["dense_pairs"] = dense
            del sp
        out.append(row)
        print(row, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 20000, 100000])
    ap.add_argument("--workdir", default="/tmp/bench_health_planted_run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    qual = [quality(s, Path(args.workdir)) for s in args.seeds]
    big = scale(args.sizes)
    meta = bhp.page_meta(argv, t0)
    command = meta["command"]
    md = [
        "# Near-duplicate texts by token-set Jaccard (text_duplicates)",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; wall {meta['wall_s']} s.",
        f"- AG News: {qual[0]['texts']} texts per seed (80 planted; see the docstring); texts "
        f"of AG News's own repeated stories: {', '.join(str(q['own_pairs_texts']) for q in qual)}"
        " per seed.",
        "",
        "## AG News with planted copies: F1 per threshold (flagged texts / precision / recall "
        "/ F1)",
        "",
        "| threshold | "
        + " | ".join(
            f"seed {q['seed']}: planted only | seed {q['seed']}: planted + own" for q in qual
        )
        + " | seconds (seed 0) |",
        "|---:|" + "---:|" * (2 * len(qual) + 1),
    ]

    def cell(r: dict) -> str:
        return f"{r['flagged']} / {r['precision']:.3f} / {r['recall']:.3f} / {r['f1']:.3f}"

    for t in THRESHOLDS:
        cells = []
        for q in qual:
            r = q["thresholds"][t]
            cells += [cell(r["planted_only"]), cell(r["planted_and_own"])]
        md.append(f"| {t} | " + " | ".join(cells) + f" | {qual[0]['thresholds'][t]['seconds']} |")
    md += [
        "",
        "## Scale: synthetic Zipf texts with 1 % edited copies (threshold 0.6)",
        "",
        "| N | seconds | pairs found | planted copies found | dense product: seconds, pairs |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in big:
        dense = f"{r['dense_seconds']} s, {r['dense_pairs']}" if "dense_seconds" in r else "-"
        md.append(
            f"| {r['n']} | {r['seconds']} | {r['pairs']} | {r['copies_found']} of {r['copies']} |"
            f" {dense} |"
        )
    bhp.write_page(args.out, "\n".join(md) + "\n", {**meta, "agnews": qual, "scale": big})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
