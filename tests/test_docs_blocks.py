"""Every ```python block of README.md and docs/*.md runs (issue 24 item 9), so the docs stay
true. The blocks of one page run in order in one namespace (a later block may use what an
earlier one made), in a fresh folder, with small data: epochs and workers are cut down by
:data:`SMALL`. A block that uses names it does not define gets them from :data:`GIVEN`
(keyed by a line of the block); a block that cannot run here is in :data:`SKIP` with the
reason and the test that runs the same calls.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Textual cuts that keep the examples small: (pattern, replacement).
SMALL = [
    (r"max_epochs=\d+", "max_epochs=1"),
    (r"num_workers=\d+", "num_workers=0"),
    (r"warmup_epochs=\d+", "warmup_epochs=1"),
    (r"trainer\.max_epochs=\d+", "trainer.max_epochs=1"),
    (r"\bL\.Trainer\(", "L.Trainer(logger=False, enable_progress_bar=False, "),
    (r'device="cuda"', 'device="cpu"'),  # the tests run on CPU
]

#: Blocks that cannot run in a test, by a line they contain: why, and what covers them.
SKIP: dict[str, str] = {}


def docs_run(folder: str | Path, kind: str = "images"):
    """A finished tiny run with its kept model in ``folder`` (what the prediction examples
    load): ``(cfg, dm, fold_ensemble)``. ``kind``: ``images`` (a folder of 8x8 PNGs, also
    written to ``new_images/``) or ``text`` (the embedded topic texts)."""
    import numpy as np
    from PIL import Image

    from dcloop.kept import replica_nets, save_kept_model
    from dcloop.train import _net, build

    from conftest import RUN_QUIET, compose_dcloop

    folder = Path(folder).resolve()
    if kind == "images":
        rng = np.random.default_rng(0)
        for k, name in enumerate(["red", "green"]):
            for where, count in ((Path("docs_images") / name, 12), (Path("new_images"), 2)):
                where.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    arr = rng.integers(0, 90, (8, 8, 3)).astype(np.uint8)
                    arr[..., k] += 120
                    Image.fromarray(arr).save(where / f"{name}{i}.png")
        data = ("data=folder", f"data.source.root={Path('docs_images').resolve()}")
        data += ("data.source.image_size=8", "data.num_workers=0", "model=cnn")
    else:
        data = ("data=text_synth", "data.source.num_per_class=40", "model=text_bow")
    cfg = compose_dcloop(folder, *RUN_QUIET, "trainer.max_epochs=1", "folds=2", *data)
    run = build(cfg, folder)
    run.trainer.fit(run.model, datamodule=run.dm)
    nets = replica_nets(run.model, _net(cfg, run.dm, replica=True))
    save_kept_model(
        folder, cfg=cfg, dm=run.dm, nets=nets, kind="ensemble", name="ensemble",
        test_accuracy=0.5,
    )  # fmt: skip
    return cfg, run.dm, run.model


#: The prepared inputs ``x`` of the prediction examples: a few of the run's test inputs.
_X = "import torch; x = torch.stack([dm.test_dataset[i][0] for i in range(3)])\n"

#: Names a block uses without defining them: code run first, by a line of the block.
GIVEN = {
    "model = dcloop.load_model(RUN)": 'cfg, dm, _ = docs_run("run"); RUN = "run"\n' + _X,
    'dcloop.load_model("outputs/2026-01-01/12-00-00")': (
        'cfg, dm, _ = docs_run("outputs/2026-01-01/12-00-00")\n' + _X
    ),
    'dcloop.load_model("outputs/2026-01-02/09-00-00")': (
        'docs_run("outputs/2026-01-02/09-00-00", "text")'
    ),
    "nets = replica_nets(fold_ensemble": (
        'cfg, dm, fold_ensemble = docs_run("saved"); run_dir = Path("saved")'
    ),
    "cal = calibrate(evidence, labels, folds)": """
import numpy as np
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(3), 40)
folds = np.arange(120) % 4
logits = rng.normal(size=(120, 3)); logits[np.arange(120), labels] += 3
evidence = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
""",
    "dm = LabelNoiseDataModule(MyImages(paths, labels, names)": """
from PIL import Image
names = ["cat", "dog"]
paths, labels = [], []
for k, name in enumerate(names):
    for i in range(12):
        Image.new("RGB", (32, 32), (40 * i, 100 * k, 0)).save(f"{name}{i}.png")
        paths.append(f"{name}{i}.png"); labels.append(k)
""",
    'export_queue("outputs/run1", top=100)': """
import pandas as pd
from people_run import make_run
make_run(Path("outputs/run1"))
from dcloop.people import relabel_queue
q = relabel_queue("outputs/run1", top=10)
q["label"] = q["suggested_name"]
q.to_csv("reviewed.csv", index=False)
pd.DataFrame({"item": [0, 0, 1, 1], "annotator": ["a", "b", "a", "b"],
              "label": ["1", "1", "2", "3"]}).to_csv("annotations.csv", index=False)
""",
}

#: Modules a block needs that are optional: skipped (with the module named) when missing.
OPTIONAL = ("transformers",)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of ``page``."""
    blocks, code, start = [], None, 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if code is None and line.strip() == "```python":
            code, start = [], n + 1
        elif code is not None and line.strip() == "```":
            blocks.append((start, "\n".join(code)))
            code = None
        elif code is not None:
            code.append(line)
    return blocks


def _small(code: str) -> str:
    for pattern, repl in SMALL:
        code = re.sub(pattern, repl, code)
    return code


def _marked(table: dict[str, str], code: str) -> str | None:
    return next((v for k, v in table.items() if k in code), None)


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_the_docs_have_python_blocks():
    assert ROOT.joinpath("README.md") in PAGES_WITH_CODE and len(PAGES_WITH_CODE) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    import os
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).parent))  # people_run for the people page
    namespace: dict = {"__name__": "__docs__", "Path": Path, "os": os, "docs_run": docs_run}
    ran, skipped = 0, []
    try:
        for line, code in python_blocks(page):
            why = _marked(SKIP, code)
            missing = [m for m in OPTIONAL if f"from {m}" in code or f"import {m}" in code]
            missing = [m for m in missing if _importable(m) is False]
            if why or missing:
                skipped.append(f"{page.name}:{line} ({why or 'needs ' + ', '.join(missing)})")
                continue
            given = _marked(GIVEN, code)
            if given:
                exec(compile(given, f"{page.name}:{line}:given", "exec"), namespace)
            try:
                exec(compile(_small(code), f"{page.name}:{line}", "exec"), namespace)
            except Exception as err:  # noqa: BLE001 - name the block in the failure
                pytest.fail(f"{page.name}, the python block at line {line}: {err!r}")
            ran += 1
    finally:
        sys.path.remove(str(Path(__file__).parent))
    assert ran or skipped
    if skipped and not ran:
        pytest.skip("; ".join(skipped))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
