"""``dcloop-merge``: the command line of the sequential merge step.

It parses its arguments and finds the round folder before anything heavy loads, so
``dcloop-merge --help`` and a wrong path answer at once; torch and the merge itself
(:mod:`dcloop.scale.merge`) load only to merge.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dcloop.errors import quote, user_error_message

#: The values ``--device`` takes (a CUDA index such as ``cuda:1`` too).
DEVICES = ("auto", "cpu", "cuda")


def find_round_dir(path: str | Path) -> Path:
    """A round folder from ``path``: itself, its latest ``round_<r>``, or its single group's."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{quote(str(p))} does not exist")
    if (p / "meta.json").is_file():
        return p
    rounds = [r for r in p.glob("round_*") if (r / "meta.json").is_file()]
    if not rounds:
        groups = sorted(g for g in p.glob("seq-*") if g.is_dir())
        if len(groups) > 1:
            raise ValueError(
                f"{quote(str(p))} holds {len(groups)} sequential runs "
                f"({[g.name for g in groups]}): pass one of them"
            )
        if groups:
            return find_round_dir(groups[0])
        raise FileNotFoundError(
            f"{quote(str(p))} holds no sequential round folder (round_<r>/meta.json)"
        )
    return max(rounds, key=lambda r: int(r.name.split("_")[1]))


def _message(err: BaseException) -> str:
    """One line for ``err``, each value in it quoted short (a 100,000-character path too)."""
    return user_error_message(err) or " ".join(quote(w) for w in str(err).split())


def _check_device(device: str) -> str:
    base, _, index = device.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ValueError(f"--device {quote(device)}: expected one of auto, cpu, cuda, cuda:<N>")
    return device


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dcloop-merge``."""
    parser = argparse.ArgumentParser(
        prog="dcloop-merge",
        description="Merge the OOF shards of a sequential dcloop run and write its result files.",
    )
    parser.add_argument(
        "path",
        help="a round folder (…/seq-<hash>/round_<r>), its seq-<hash> folder (latest round) "
        "or the multirun folder holding one seq-<hash>",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:<N>"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dcloop-merge`` console script."""
    args = build_parser().parse_args(argv)
    try:
        device = _check_device(args.device)
        round_dir = find_round_dir(args.path)
    except (ValueError, OSError) as err:
        sys.stderr.write(f"dcloop-merge: error: {_message(err)}\n")
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from dcloop.scale import merge  # torch: `dcloop-merge --help` starts fast

    try:
        merge.merge_round(round_dir, device=device)
    except (ValueError, OSError) as err:
        sys.stderr.write(f"dcloop-merge: error: {_message(err)}\n")
        sys.exit(2)
