"""How long the command-line tools take to answer ``--help`` and a bad input (issue 24 item 8).

Each command runs ``--repeat`` times in a fresh process; the table gives the median wall time
and the median CPU time (user + system) of the process. On a shared machine the wall time
includes waiting for a core, so the CPU time is the figure to compare; the load average at
the start is printed beside the table.

    python scripts/bench_cli_start.py --repeat 5 --json scripts/results/bench_cli_start.json \
        > scripts/results/bench_cli_start.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

#: (label, argv after the tool, expected exit status)
CASES = [
    ("dcloop --help", ["dcloop", "--help"], 0),
    ("dcloop data=folder --help", ["dcloop", "data=folder", "--help"], 0),
    ("dcloop folds=1", ["dcloop", "folds=1"], 2),
    ("dcloop model=nosuch", ["dcloop", "model=nosuch"], 2),
    (
        "dcloop data=folder data.source.root=/missing",
        ["dcloop", "data=folder", "data.source.root=/missing"],
        2,
    ),
    ("dcloop model.optimizer.lr=-1", ["dcloop", "model.optimizer.lr=-1"], 2),
    ("dcloop cl.action=nosuch", ["dcloop", "cl.action=nosuch"], 2),
    ("dcloop-export --help", ["dcloop-export", "--help"], 0),
    ("dcloop-import --help", ["dcloop-import", "--help"], 0),
    ("dcloop-annotators --help", ["dcloop-annotators", "--help"], 0),
    ("dcloop-report --help", ["dcloop-report", "--help"], 0),
    ("dcloop-export /missing", ["dcloop-export", "/missing"], 2),
    ("dcloop-merge --help", ["dcloop-merge", "--help"], 0),
    ("dcloop-merge /missing", ["dcloop-merge", "/missing"], 2),
    ("dcloop-beyond --help", ["dcloop-beyond", "--help"], 0),
    (
        "dcloop-beyond pairs --x /missing.npy --y /missing.npy",
        ["dcloop-beyond", "pairs", "--x", "/missing.npy", "--y", "/missing.npy"],
        2,
    ),
    ("dcloop-predict --help", ["dcloop-predict", "--help"], 0),
    ("dcloop-predict /missing x.png", ["dcloop-predict", "/missing", "x.png"], 2),
]


def run_once(argv: list[str], cwd: str) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(
        [
            str(BIN / argv[0]),
            *argv[1:],
            *(
                [f"hydra.run.dir={cwd}/run{time.time_ns()}"]
                if argv[0] == "dcloop" and "--help" not in argv
                else []
            ),
        ],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for label, argv, expected in CASES:
            walls, cpus, codes = [], [], set()
            for _ in range(a.repeat):
                wall, cpu, code = run_once(argv, cwd)
                walls.append(wall)
                cpus.append(cpu)
                codes.add(code)
            rows.append((label, statistics.median(walls), statistics.median(cpus), codes, expected))
    print(
        f"# CLI start-up ({a.repeat} runs each, median; load average {load:.1f} on "
        f"{os.cpu_count()} cores)\n"
    )
    print("| command | exit | wall s | CPU s |")
    print("|---|---|---|---|")
    for label, wall, cpu, codes, expected in rows:
        code = ",".join(str(c) for c in sorted(codes))
        flag = "" if codes == {expected} else f" (expected {expected})"
        print(f"| `{label}` | {code}{flag} | {wall:.2f} | {cpu:.2f} |")
    if a.json:
        out = {
            "repeat": a.repeat,
            "load_average": round(load, 2),
            "cores": os.cpu_count(),
            "rows": [
                {
                    "command": label,
                    "exit": sorted(codes),
                    "expected_exit": expected,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                }
                for label, wall, cpu, codes, expected in rows
            ],
        }
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
