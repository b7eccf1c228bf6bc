"""Turn a dcloop multirun folder into one table (CSV and markdown) and a plot.

    python scripts/summarize_sweep.py multirun/2026-11-27/21-30-00
    python scripts/summarize_sweep.py multirun/... --x noise.rate --y test_accuracy f1

Every job folder with a ``metrics.json`` (fold-parallel jobs ``<sweep>/<n>/`` and merged
sequential rounds ``<sweep>/seq-*/round_<r>/``) becomes one row: the overrides that
vary across the sweep (from ``.hydra/overrides.yaml``; a sequential round takes its
first fold job's, without ``fold``) and the run's metrics. Writes ``summary.csv``,
``summary.md`` and ``summary.png`` into the sweep folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

METRICS = {
    "test_accuracy": ("test", "accuracy"),
    "precision": ("detection", "precision"),
    "recall": ("detection", "recall"),
    "f1": ("detection", "f1"),
    "auroc": ("detection", "auroc"),
    "noise_rate_est": ("noise", "rate"),
    "num_flagged": ("cleaning", "num_flagged"),
    "wall_time_s": ("wall_time_s",),
}


def _get(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _overrides(job: Path) -> dict[str, str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    items = yaml.safe_load(f.read_text()) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _sequential_overrides(sweep: Path, round_dir: Path) -> dict[str, str]:
    """A merged sequential round: the overrides of its fold jobs, minus ``fold``."""
    meta = json.loads((round_dir / "meta.json").read_text())
    group = round_dir.parent.name
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        ov = _overrides(job)
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        if cfg.get("mode") == "sequential" and int(cfg.get("round", 0)) == meta["round"]:
            from omegaconf import OmegaConf

            from dcloop.scale.fold_run import fingerprint  # only for sequential sweeps

            if f"seq-{fingerprint(OmegaConf.create(cfg))}" == group:
                return {k: v for k, v in ov.items() if k != "fold"}
    return {"group": group}


def collect(sweep: str | Path) -> pd.DataFrame:
    """One row per finished run under ``sweep``: varying overrides + metrics."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep} is not a folder (expected a Hydra multirun folder)")
    rows = []
    for m in sorted(sweep.rglob("metrics.json")):
        job = m.parent
        if (job / "meta.json").is_file():  # merged sequential round
            ov = _sequential_overrides(sweep, job)
            ov["round"] = str(json.loads((job / "meta.json").read_text())["round"])
        else:
            ov = _overrides(job)
        metrics = json.loads(m.read_text())
        row = {"run": str(job.relative_to(sweep)), **ov}
        row.update({name: _get(metrics, path) for name, path in METRICS.items()})
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{sweep} holds no metrics.json: did the sweep finish?")
    df = pd.DataFrame(rows)
    swept = [
        c for c in df.columns if c not in METRICS and c != "run" and df[c].nunique(dropna=False) > 1
    ]
    for c in swept:  # override values are strings: "5", "10", "20" must sort as numbers
        numbers = pd.to_numeric(df[c], errors="coerce")
        if numbers.notna().all():
            df[c] = numbers
    keep = ["run", *swept, *[c for c in METRICS if df[c].notna().any()]]
    return df[keep].sort_values(swept or ["run"], kind="stable").reset_index(drop=True)


def swept_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in METRICS and c != "run"]


def plot(df: pd.DataFrame, path: Path, x: str | None, ys: list[str]) -> Path:
    """One panel per metric in ``ys``; ``x`` on the axis, one line per other combination."""
    keys = swept_keys(df)
    x = x or (keys[0] if keys else "run")
    others = [k for k in keys if k != x]
    ys = [y for y in ys if y in df.columns] or ["test_accuracy"]
    fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 3.6), squeeze=False)
    groups = df.groupby(others, dropna=False) if others else [((), df)]
    for ax, y in zip(axes[0], ys, strict=True):
        for name, g in groups:
            name = name if isinstance(name, tuple) else (name,)
            label = ", ".join(f"{k}={v}" for k, v in zip(others, name, strict=True)) or y
            g = g.sort_values(x)
            ax.plot(g[x].astype(str), g[y], marker="o", label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="a Hydra multirun folder")
    parser.add_argument("--out", help="where to write summary.* (default: the sweep folder)")
    parser.add_argument("--x", help="override on the plot's x axis (default: the first swept)")
    parser.add_argument("--y", nargs="+", default=["test_accuracy", "f1"], help="metrics")
    args = parser.parse_args(argv)
    try:
        df = collect(args.sweep)
    except FileNotFoundError as err:
        sys.stderr.write(f"summarize_sweep: {err}\n")
        return 2
    if args.x is not None and args.x not in swept_keys(df):
        swept = ", ".join(swept_keys(df)) or "none"
        sys.stderr.write(f"summarize_sweep: --x {args.x} is not swept here (swept: {swept})\n")
        return 2
    out = Path(args.out or args.sweep)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(to_markdown(df))
    plot(df, out / "summary.png", args.x, args.y)
    sys.stdout.write(to_markdown(df))
    sys.stdout.write(f"\nwrote {out / 'summary.csv'}, summary.md, summary.png\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
