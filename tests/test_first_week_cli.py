"""A user's first week (issue 24 item 8): every ``dcloop-*`` tool answers ``--help`` and a
wrong input before torch, lightning or pandas load (the time it takes is measured by
scripts/bench_cli_start.py, not here)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
HEAVY = ("torch", "lightning", "pandas", "sklearn", "matplotlib")

#: Runs one console script's entry point as the installed wrapper does, then prints its exit
#: status and the heavy modules loaded by then.
PROBE = f"""
import importlib, json, sys
module, func, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [module, *argv]
try:
    code = getattr(importlib.import_module(module), func)()
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"code": code or 0, "heavy": heavy}}))
"""


def _probe(script: str, *argv: str, cwd: Path) -> tuple[dict, str]:
    module, func = SCRIPTS[script].split(":")
    res = subprocess.run(
        [sys.executable, "-c", PROBE, module, func, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def test_every_tool_is_covered():
    assert {"dcloop", "dcloop-merge", "dcloop-beyond"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(s for s in SCRIPTS if s != "dcloop"))
def test_help_loads_nothing_heavy(script, tmp_path):
    out, err = _probe(script, "--help", cwd=tmp_path)
    assert out == {"code": 0, "heavy": []}, err[-2000:]


@pytest.mark.parametrize(
    ("script", "argv", "says"),
    [
        ("dcloop-merge", ["/no/such/round"], "dcloop-merge: error: /no/such/round does not exist"),
        ("dcloop-merge", ["{tmp}", "--device", "gpu"], "--device gpu: expected one of auto"),
        ("dcloop-merge", ["{tmp}"], "holds no sequential round folder"),
        (
            "dcloop-beyond",
            ["pairs", "--x", "/no/x.npy", "--y", "/no/y.npy"],
            "X embeddings file not found: '/no/x.npy'",
        ),
        ("dcloop-beyond", ["ner", "/no/a.conll"], "CoNLL file not found: '/no/a.conll'"),
        ("dcloop-beyond", ["discrepancy"], "pass --run-dir RUN, or both --train"),
        ("dcloop-beyond", ["discrepancy", "--run-dir", "{tmp}"], "discrepancy=true first"),
        ("dcloop-beyond", ["make-coco", "{tmp}/c", "--images", "0"], "'0': expected a value >= 1"),
        ("dcloop-beyond", ["make-coco", "{tmp}/c", "--noise-rate", "1.5"], "in [0.0, 1.0)"),
        ("dcloop-beyond", ["ner", "/no/a.conll", "--folds", "x"], "'x' is not an integer"),
        ("dcloop-export", ["/no/such/run"], "/no/such/run"),
        ("dcloop-export", ["{tmp}", "--top", "0"], "argument --top: '0': expected a value >= 1"),
        ("dcloop-report", ["{tmp}", "--worst", "-3"], "argument --worst: '-3': expected a value"),
        ("dcloop-annotators", ["{tmp}", "a.csv", "--seed", "-1"], "argument --seed: '-1'"),
        ("dcloop-beyond", ["make-coco", "{tmp}/c", "--seed", "x"], "'x' is not an integer"),
        ("dcloop-predict", ["/no/such/run", "/no/such/data"], "RUN '/no/such/run' does not"),
        ("dcloop-predict", ["{tmp}", "/no/such/data"], "INPUTS: '/no/such/data' does not exist"),
        ("dcloop-predict", ["{tmp}", "{tmp}", "--batch-size", "0"], "--batch-size must be"),
    ],
)
def test_input_errors_are_one_line_before_anything_heavy(script, argv, says, tmp_path):
    out, err = _probe(script, *(a.format(tmp=tmp_path) for a in argv), cwd=tmp_path)
    lines = err.strip().splitlines()
    assert out["code"] == 2, err[-2000:]
    assert says in lines[-1], err[-2000:]
    assert not [ln for ln in lines if ln.startswith("Traceback")], err[-2000:]
    assert out["heavy"] == [], (out, err[-2000:])


def test_merge_still_merges_through_the_light_entry(tmp_path, monkeypatch):
    """The light entry point hands a found round folder on to the merge (torch loads then)."""
    import dcloop.scale.merge as merge
    from dcloop.scale.merge_cli import main

    d = tmp_path / "seq-abc" / "round_1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text("{}")
    (tmp_path / "seq-abc" / "round_0").mkdir()
    (tmp_path / "seq-abc" / "round_0" / "meta.json").write_text("{}")
    calls = []
    monkeypatch.setattr(merge, "merge_round", lambda p, device: calls.append((p, device)))
    main([str(tmp_path), "--device", "cpu"])
    assert calls == [(d, "cpu")]
    assert merge.main is main and merge.find_round_dir(tmp_path) == d


LONG = "/" + "x" * 100_000  # longer than any file name: Python 3.11's is_dir() raises on it


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("dcloop-export", [LONG]),
        ("dcloop-import", [LONG, "x.csv"]),
        ("dcloop-annotators", [LONG, "a.csv"]),
        ("dcloop-report", [LONG]),
        ("dcloop-merge", [LONG]),
        ("dcloop-beyond", ["ner", LONG]),
        ("dcloop-beyond", ["pairs", "--x", LONG, "--y", LONG]),
        ("dcloop-predict", [LONG, LONG]),
    ],
)
def test_a_path_too_long_for_the_file_system_is_one_short_line(script, argv, tmp_path):
    out, err = _probe(script, *argv, cwd=tmp_path)
    lines = err.strip().splitlines()
    assert out["code"] == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"{script}") and "error: file name too long: /xxx" in lines[0]
    assert len(lines[0]) < 400, lines[0][:400]
    assert "[100001 chars]" in lines[0]


def test_a_bare_key_opening_a_message_is_named_as_typed(tmp_path):
    """``cl.action=nosuch`` used to end in 'action must be one of ...' (the callback's
    own name for it); the message names the override as the user typed it."""
    from dcloop.cli import as_typed

    from conftest import compose_dcloop

    cfg = compose_dcloop(tmp_path)
    said = "action must be one of ['prune', 'downweight', 'detect']; got 'nosuch'"
    assert as_typed(said, cfg).startswith("cl.action must be one of ['prune'")
    said = "batch_size must be an integer >= 1; got data.batch_size=0"
    assert as_typed(said, cfg) == ("data.batch_size must be an integer >= 1; got data.batch_size=0")
    assert as_typed("folds must be an integer >= 2", cfg) == "folds must be an integer >= 2"
    assert as_typed("nosuchkey must be x", cfg) == "nosuchkey must be x"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.batch_size=0", "data.batch_size must be an integer >= 1; got data.batch_size=0"),
        ("data.eval_batch_size=-2", "data.eval_batch_size must be an integer >= 1"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
        ("model.optimizer.lr=-1", "model.optimizer.lr"),
        ("model.optimizer.weight_decay=-0.1", "model.optimizer.weight_decay"),
        ("model.optimizer.lr=fast", "model.optimizer.lr"),
    ],
)
def test_common_mistyped_numbers_are_checked_before_torch(override, says, tmp_path):
    from dcloop.cli import preflight
    from dcloop.errors import UserInputError

    from conftest import compose_dcloop

    with pytest.raises(UserInputError, match=re.escape(says)):
        preflight(compose_dcloop(tmp_path, override))


@pytest.mark.parametrize(
    "model", sorted(p.stem for p in (ROOT / "dcloop" / "conf" / "model").glob("*.yaml"))
)
def test_the_model_defaults_pass_the_preflight(model, tmp_path):
    from dcloop.cli import preflight

    from conftest import compose_dcloop

    preflight(compose_dcloop(tmp_path, f"model={model}"))


def test_the_cl_choices_checked_before_torch_are_the_librarys():
    from dcloop.calibrate import CALIBRATE_METHODS
    from dcloop.cl import BACKENDS, FILTER_BY, SCORE_METHODS
    from dcloop.cli import CL_CHOICES
    from dcloop.safety import ACTIONS, READY_RULES

    assert CL_CHOICES == {
        "action": ACTIONS,
        "filter_by": FILTER_BY,
        "quality_method": SCORE_METHODS,
        "backend": BACKENDS,
        "calibrate": CALIBRATE_METHODS,
        "ready": READY_RULES,
    }


@pytest.mark.parametrize("key", ["action", "filter_by", "quality_method", "backend", "ready"])
def test_a_wrong_cl_choice_is_one_error_before_torch(key, tmp_path):
    from dcloop.cli import preflight
    from dcloop.errors import UserInputError

    from conftest import compose_dcloop

    with pytest.raises(UserInputError, match=rf"^cl\.{key} must be one of \[.*got 'nosuch'$"):
        preflight(compose_dcloop(tmp_path, f"cl.{key}=nosuch"))
