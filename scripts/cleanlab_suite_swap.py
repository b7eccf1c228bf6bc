"""Run cleanlab's own tests with dcloop.cl's functions swapped in, as a user switching would.

cleanlab's tests are not part of dcloop (cleanlab is AGPL): give the folder that holds them
(for example a checkout of github.com/cleanlab/cleanlab, ``tests/``). The suite runs twice in
fresh processes: once as is (which tests pass with cleanlab itself) and once with the public
functions below replaced by dcloop.cl's namesakes in cleanlab's modules, where the tests call
them (from the first test on: the data the test modules build at import, with cleanlab's own
cross-validation, stays cleanlab's). The result compares the two runs test by test.

    OMP_NUM_THREADS=1 python scripts/cleanlab_suite_swap.py /path/to/cleanlab/tests \\
        --out scripts/results/cleanlab_suite_swap.md

This file is also the pytest plugin of the swapped run (``-p cleanlab_suite_swap`` with
``DCLOOP_SWAP=1``); it holds none of cleanlab's code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

#: (cleanlab module, function) pairs replaced by ``dcloop.cl.<function>``.
SWAPPED = (
    ("cleanlab.filter", "find_label_issues"),
    ("cleanlab.count", "compute_confident_joint"),
    ("cleanlab.count", "estimate_joint"),
    ("cleanlab.count", "estimate_noise_matrices"),
    ("cleanlab.rank", "get_label_quality_scores"),
)
DEFAULT_FILES = ("test_filter_count.py", "test_rank.py")


def pytest_collection_finish(session) -> None:  # pragma: no cover - in the pytest child
    """Plugin hook: swap the functions in once the test modules are imported (their module-level
    data, built with cleanlab's cross-validation, stays cleanlab's), before any test runs."""
    if os.environ.get("DCLOOP_SWAP") != "1":
        return
    import importlib

    import dcloop.cl

    for module, name in SWAPPED:
        setattr(importlib.import_module(module), name, getattr(dcloop.cl, name))


def run_suite(test_dir: Path, files: list[str], swap: bool, junit: Path) -> None:
    env = dict(os.environ, DCLOOP_SWAP="1" if swap else "0", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
           "cleanlab_suite_swap", f"--junitxml={junit}", "--rootdir", str(test_dir),
           *[str(test_dir / f) for f in files]]  # fmt: skip
    subprocess.run(cmd, cwd=test_dir, env=env, check=False, capture_output=True)


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """``{test id: (outcome, first line of the failure message)}`` from a junit file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (
                    (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                )
        out[name] = (outcome, message)
    return out


def render(plain: dict, swapped: dict, files: list[str], command: str, label: str = "") -> str:
    valid = sorted(t for t, (o, _) in plain.items() if o == "passed")
    passed = [t for t in valid if swapped.get(t, ("missing", ""))[0] == "passed"]
    failed = [t for t in valid if t not in passed]
    broken = sorted(t for t, (o, _) in plain.items() if o != "passed")
    pct = 100.0 * len(passed) / max(len(valid), 1)
    lines = [
        "# cleanlab's own tests with dcloop.cl swapped in",
        "",
        f"Command: `{command}`  ",
        *([f"Run: {label}  "] if label else []),
        f"Test files: {', '.join(files)} (cleanlab's `tests/`, not part of dcloop).  ",
        "Swapped: " + ", ".join(f"`{m}.{n}`" for m, n in SWAPPED) + " -> `dcloop.cl.<name>`.",
        "",
        f"- tests collected: {len(plain)}; passing with cleanlab itself: {len(valid)}",
        f"- of those, passing with dcloop.cl swapped in: **{len(passed)} / {len(valid)} "
        f"({pct:.1f} %)**",
        "",
    ]
    if failed:
        lines += ["## Failing with dcloop.cl swapped in", "", "| test | message |", "| --- | --- |"]
        lines += [f"| `{t}` | {swapped.get(t, ('', 'not run'))[1]} |" for t in failed]
        lines.append("")
    if broken:
        lines += [
            "## Not counted: failing with cleanlab itself (this cleanlab version)",
            "",
            "| test | message |",
            "| --- | --- |",
        ]
        lines += [f"| `{t}` | {plain[t][1]} |" for t in broken]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_dir", type=Path, help="folder holding cleanlab's test files")
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES))
    parser.add_argument("--out", type=Path, help="write the markdown summary here")
    parser.add_argument("--label", default="", help="a line saying which dcloop code ran")
    args = parser.parse_args(argv)
    test_dir = args.test_dir.resolve()
    missing = [f for f in args.files if not (test_dir / f).is_file()]
    if missing:
        parser.error(f"not found in {test_dir}: {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for swap in (False, True):
            junit = Path(tmp) / f"swap{int(swap)}.xml"
            run_suite(test_dir, args.files, swap, junit)
            runs[swap] = outcomes(junit)
    command = "python scripts/cleanlab_suite_swap.py <cleanlab>/tests " + " ".join(
        (["--files", *args.files] if list(args.files) != list(DEFAULT_FILES) else [])
        + ([f"--out {args.out}"] if args.out else [])
        + ([f'--label "{args.label}"'] if args.label else [])
    )
    text = render(runs[False], runs[True], args.files, command.strip(), args.label)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
