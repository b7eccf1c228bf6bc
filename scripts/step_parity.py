"""Fold-parallel parity of the cleaning step: the same default run from two source trees.

Runs ``python -m dcloop <overrides>`` from each tree (its own ``dcloop`` package first on
the path) into ``OUT/before`` and ``OUT/after`` and compares what the cleaning step decided:
``label_issues.csv`` byte for byte, the step history and the noise estimate in
``metrics.json``, the test accuracy. Used for issue 20 item 6 (the step as one function):
``before`` is the tree without the change, ``after`` the tree with it.

    git archive <commit> | tar -x -C /tmp/before   # and /tmp/after likewise
    python scripts/step_parity.py /tmp/before /tmp/after --out /tmp/step_parity \\
        > scripts/results/step_parity.md
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

OVERRIDES = ["trainer.max_epochs=6", "kept=ensemble", "report=false"]


def run(tree: Path, out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "dcloop", *overrides, f"hydra.run.dir={out}"]
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", default=OVERRIDES)
    args = p.parse_args()
    runs = {}
    for name in ("before", "after"):
        out = args.out / name
        run(getattr(args, name), out, args.overrides)
        runs[name] = (out, json.loads((out / "metrics.json").read_text()))
    (b, mb), (a, ma) = runs["before"], runs["after"]
    same_table = filecmp.cmp(b / "label_issues.csv", a / "label_issues.csv", shallow=False)
    extra = sorted(set(ma["cleaning"]) - set(mb["cleaning"]))
    print("# Cleaning step parity, fold-parallel mode (before vs after)\n")
    print(f"Command: `python scripts/step_parity.py {' '.join(sys.argv[1:])}`  ")
    print(f"Each run: `python -m dcloop {shlex.join(args.overrides)}`\n")
    print("| check | before | after | same |")
    print("|---|---|---|---|")
    print(f"| label_issues.csv (bytes) | | | {same_table} |")
    nb, na = mb["cleaning"]["num_flagged"], ma["cleaning"]["num_flagged"]
    print(f"| flagged | {nb} | {na} | {nb == na} |")
    rb, ra = mb["noise"]["rate"], ma["noise"]["rate"]
    print(f"| estimated noise | {rb:.6f} | {ra:.6f} | {rb == ra} |")
    hb, ha = mb["history"], ma["history"]
    print(f"| step history ({len(hb)} steps) | | | {hb == ha} |")
    tb, ta = mb["test"]["accuracy"], ma["test"]["accuracy"]
    print(f"| test accuracy | {tb:.4f} | {ta:.4f} | {tb == ta} |")
    print(f"\nKeys the after run's `cleaning` block adds: {extra or 'none'}")


if __name__ == "__main__":
    main()
