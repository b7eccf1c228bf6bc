"""Screenshot of a run's report.html (headless Chromium) for the docs.

Without ``--run-dir`` it first makes a real default run (the ``dcloop`` defaults: digits,
20 % symmetric noise, K=5, 30 epochs; logger and checkpoints off, which do not change the
results) in a temporary folder. Needs Debian's ``chromium`` (``make system-deps``).

Example::

    python scripts/screenshot_report.py                        # docs/report_screenshot.png
    python scripts/screenshot_report.py --run-dir outputs/2026-11-27/17-53-10 --out /tmp/s.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import dcloop
from dcloop.people.cli import load_train_dataset
from dcloop.people.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def default_run(out: Path) -> None:
    from dcloop.train import train

    conf = str(Path(dcloop.__file__).parent / "conf")
    quiet = ["logger=none", "checkpoint=false", "trainer.enable_progress_bar=false"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=[f"output_dir={out}", *quiet])
    train(cfg)


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise FileNotFoundError("chromium not found; install it with `make system-deps`")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", help="an existing run (default: make a default run)")
    p.add_argument("--out", default=str(ROOT / "docs" / "report_screenshot.png"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "default_run"
        if not args.run_dir:
            default_run(run_dir)
        page = write_report(run_dir, dataset=load_train_dataset(run_dir))
        screenshot(page, Path(args.out), args.width, args.height)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
