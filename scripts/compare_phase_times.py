"""Phase times of the same runs made twice (before / after a change), from their metrics.json.

Reads ``<workdir>/<dataset>_<setting>_<seed>/<run>/metrics.json`` of two ``bench_kept.py``
work folders (the same tasks and seeds) and writes, per dataset, one phase's seconds (wall,
as ``metrics.json``'s ``timing`` records them), its share of the run's wall time, and the
run's CPU seconds x one plain run (``cost.cpu_ratio``), before and after. Shares are less
sensitive than seconds to other work on the host changing between the two benchmarks.

Usage:

    python scripts/compare_phase_times.py --before /tmp/bk/relabel --after /tmp/bk/warm \\
        --run default2 --phase confident_learning --out scripts/results/NAME
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def read(workdir: Path, run: str, phase: str) -> dict[tuple[str, str, int], dict]:
    out = {}
    for path in sorted(workdir.glob(f"*_*_*/{run}/metrics.json")):
        dataset, setting, seed = path.parent.parent.name.rsplit("_", 2)
        m = json.loads(path.read_text())
        t = m["timing"]
        out[(dataset, setting, int(seed))] = {
            "phase_s": float(t[phase]),
            "total_s": float(t["total"]),
            "cpu_ratio": float(m["cost"]["cpu_ratio"]),
            "f1": (m.get("detection") or {}).get("f1"),
            "kept": m["kept"]["test_accuracy"],
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--run", default="default2", help="the run folder inside each task folder")
    p.add_argument("--phase", default="confident_learning")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    before = read(args.before, args.run, args.phase)
    after = read(args.after, args.run, args.phase)
    keys = sorted(set(before) & set(after))
    if not keys:
        sys.exit(f"no task with {args.run}/metrics.json in both {args.before} and {args.after}")
    rows = []
    for ds in sorted({k[0] for k in keys}):
        mine = [k for k in keys if k[0] == ds]
        row = {"dataset": ds, "runs": len(mine)}
        for name, data in (("before", before), ("after", after)):
            v = [data[k] for k in mine]
            row[name] = {
                "phase_s": float(np.mean([x["phase_s"] for x in v])),
                "share": float(np.mean([x["phase_s"] / x["total_s"] for x in v])),
                "cpu_ratio": float(np.mean([x["cpu_ratio"] for x in v])),
                "f1": float(np.mean([x["f1"] for x in v if x["f1"] is not None])),
                "kept": float(np.mean([x["kept"] for x in v])),
            }
        rows.append(row)
    command = "python scripts/compare_phase_times.py " + " ".join(sys.argv[1:])
    lines = [
        f"# The `{args.phase}` phase before and after",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU; "
        f"runs `{args.run}` of the task folders in both (same tasks and seeds): "
        f"before `{args.before}`, after `{args.after}`.",
        "- Phase seconds are wall seconds from metrics.json's timing (other work on the host "
        "stretches them); the share is of the same run's wall time.",
        "",
        "| data | runs | phase s before | after | share before | after "
        "| CPU x plain before | after | F1 before | after | kept acc. before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['dataset']} | {r['runs']} | {b['phase_s']:.2f} | {a['phase_s']:.2f} | "
            f"{100 * b['share']:.1f} % | {100 * a['share']:.1f} % | {b['cpu_ratio']:.2f} | "
            f"{a['cpu_ratio']:.2f} | {b['f1']:.3f} | {a['f1']:.3f} | {100 * b['kept']:.1f} | "
            f"{100 * a['kept']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
