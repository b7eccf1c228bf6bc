"""A default run's time with and without data health (``health=true`` vs ``health=false``).

Runs ``dcloop`` (``dcloop.train.train`` on the composed default config: digits, cnn, K = 5,
30 epochs, kept=student) once per setting, alternating, ``--repeats`` times each, and reports
the wall time of each run (``metrics.json``'s ``wall_time_s``) and its ``data_health`` phase.
Target (issue 22): a default run's time grows by <= 10 %.

Usage:

    python scripts/bench_health_overhead.py [--repeats 1] [--extra trainer.max_epochs=30 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "dcloop" / "conf")


def run(health: bool, extra: list[str], out: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dcloop.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={out}",
                f"health={str(health).lower()}",
                "logger=none",
                "checkpoint=false",
                "trainer.enable_progress_bar=false",
                *extra,
            ],
        )
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    return {
        "health": health,
        "wall_s": round(wall, 1),
        "data_health_s": round(metrics.get("timing", {}).get("data_health", 0.0), 2),
        "test_s": round(metrics.get("timing", {}).get("test", 0.0), 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--out", default=str(ROOT / "scripts/results/bench_health_overhead"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for health in (False, True):
                rows.append(run(health, args.extra, Path(tmp) / f"{r}-{health}"))
                print(json.dumps(rows[-1]), flush=True)
    off = statistics.median(r["wall_s"] for r in rows if not r["health"])
    on = statistics.median(r["wall_s"] for r in rows if r["health"])
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores, shared)",
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "median_wall_off_s": off,
        "median_wall_on_s": on,
        "growth": round(on / off - 1, 4),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    md = [
        "# A default run with and without data health",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; load average at the end "
        f"{meta['load_average']} (other jobs share the host: compare the data_health "
        "phase with the wall time more than two wall times with each other).",
        f"- Median wall time: health=false {off} s, health=true {on} s "
        f"(growth {meta['growth']:+.1%}). Target: <= +10 %.",
        "",
        "| health | wall s | data_health phase s (fit end) | test phase s (incl. the "
        "test-end pass) |",
        "|---|---:|---:|---:|",
    ]
    md += [
        f"| {r['health']} | {r['wall_s']} | {r['data_health_s']} | {r['test_s']} |" for r in rows
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
