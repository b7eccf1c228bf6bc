"""``dcloop-predict RUN INPUTS...``: the kept model of a run on new inputs, to a CSV.

Writes ``predictions.csv`` (``source``, ``predicted``, ``probability``; with
``--all-probs`` one ``prob_<class>`` column per class) and prints one summary line. Bad
input (no saved model, a missing or unreadable file, a file of another kind) is one line
``dcloop-predict: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from dcloop.console import emit
from dcloop.errors import EXIT_USAGE, UserInputError, quote, user_error_message

PROG = "dcloop-predict"
#: Inputs from which on a progress bar is shown (on a terminal).
PROGRESS_FROM = 1000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict new inputs with the kept model saved in a dcloop run folder "
        "(RUN/model/). INPUTS: files, folders, a CSV/JSONL of texts (text models) or a "
        "CSV/JSONL manifest with a 'path' column.",
    )
    p.add_argument("run", metavar="RUN", help="a finished dcloop run folder (or its model/)")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="files, folders, tables")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write")
    p.add_argument("--all-probs", action="store_true", help="one probability column per class")
    p.add_argument("--batch-size", default="256", help="inputs read and run at once")
    p.add_argument("--text-column", default="text", help="the texts' column in a CSV/JSONL")
    p.add_argument(
        "--exported",
        action="store_true",
        help="run the exported program (torch.export) instead of rebuilding the network",
    )
    return p


def predict_main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns 0, or exits with status 2 on bad input."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        emit(_predict(args))
    except Exception as err:  # noqa: BLE001 - bad input is one line, anything else a traceback
        msg = user_error_message(err)
        if msg is None:
            raise
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        raise SystemExit(EXIT_USAGE) from None
    return 0


def _batch_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserInputError(f"--batch-size must be a positive integer; got {text!r}")
    return n


def _predict(args: argparse.Namespace) -> str:
    # the named paths are checked before torch loads: a typo answers at once
    batch_size = _batch_size(args.batch_size)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserInputError(f"--out {quote(out)!r} is a folder; expected a CSV file name")
    if not out.parent.is_dir():
        raise UserInputError(
            f"--out {quote(out)!r}: the folder {quote(out.parent)!r} does not exist"
        )
    if not Path(args.run).expanduser().exists():
        raise UserInputError(
            f"RUN {quote(args.run)!r} does not exist; expected a dcloop run folder"
        )
    for raw in args.inputs:
        if not Path(raw).expanduser().exists():
            raise UserInputError(f"INPUTS: {quote(raw)!r} does not exist")

    from dcloop.kept.model import load_model
    from dcloop.results import write_csv

    start = time.perf_counter()
    model = load_model(args.run, exported=args.exported)
    items = model.items(args.inputs, text_column=args.text_column)
    bar = _bar(len(items))
    try:
        probs = model.predict_items(items, batch_size=batch_size, progress=bar.update)
    finally:
        bar.close()
    df = model.table([it.source for it in items], probs, all_probs=args.all_probs)
    write_csv(df, out)
    return summary(model, df, out, time.perf_counter() - start)


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="input",
        desc=PROG,
        disable=None if total >= PROGRESS_FROM else True,  # None: only on a terminal
        leave=False,
    )


def summary(model, df, out: Path, seconds: float) -> str:
    """The one line printed after a prediction."""
    counts = Counter(df["predicted"])
    top = ", ".join(f"{name} {n}" for name, n in counts.most_common(3))
    acc = "" if model.test_accuracy is None else f", test accuracy {model.test_accuracy:.3f}"
    members = f"{len(model.members)} members" if len(model.members) > 1 else "1 network"
    return (
        f"{PROG}: {len(df)} inputs -> {out} in {seconds:.1f} s with the kept model "
        f"{model.name!r} ({members}{acc}); most predicted: {top}"
    )


def main() -> None:  # pragma: no cover - the console script
    predict_main()


if __name__ == "__main__":  # pragma: no cover - python -m dcloop.kept.cli
    main()
