"""A user's first week (issue 24): safe defaults for their own data, names instead of ids,
run folders that do not collide, one line instead of a traceback."""

import pytest

from dcloop.cli import check_noise_choice
from dcloop.console import run_summary
from dcloop.errors import UserInputError

from conftest import compose_dcloop

USER_DATA = ("folder", "csv", "audio_folder", "text_csv", "coco", "cifar10", "mnist")
DEMO_DATA = ("digits", "audio_synth", "text_synth")


# 1. Never flip a user's own labels by default.


@pytest.mark.parametrize("data", USER_DATA)
def test_users_own_data_gets_no_injected_noise_by_default(tmp_path, data):
    cfg = compose_dcloop(tmp_path, f"data={data}")
    assert cfg.noise.kind == "none" and cfg.noise.rate == 0.0
    assert cfg.data.noise.kind == "none"  # what the data module receives


@pytest.mark.parametrize("data", DEMO_DATA)
def test_demo_data_keeps_its_injected_noise(tmp_path, data):
    cfg = compose_dcloop(tmp_path, f"data={data}")
    assert cfg.noise.kind == "symmetric" and cfg.noise.rate == 0.2


def test_noise_on_own_data_only_when_asked(tmp_path):
    cfg = compose_dcloop(tmp_path, "data=folder", "noise=asymmetric")
    assert cfg.noise.kind == "asymmetric"
    cfg = compose_dcloop(tmp_path, "data=folder", "experiment=sym40_downweight")
    assert cfg.noise.kind == "symmetric" and cfg.noise.rate == 0.4
    cfg = compose_dcloop(tmp_path, "data=digits", "experiment=oracle")
    assert cfg.noise.kind == "none"


def test_a_noise_rate_without_a_noise_kind_is_one_error(tmp_path):
    cfg = compose_dcloop(tmp_path, "data=folder", "noise.rate=0.3")
    with pytest.raises(UserInputError, match=r"noise.rate=0.3 .*noise=symmetric"):
        check_noise_choice(cfg)
    check_noise_choice(compose_dcloop(tmp_path, "data=folder"))  # the default is fine


def _metrics(**extra):
    return {
        "data": {"source": "folder", "num_train": 100, "num_classes": 3},
        "cleaning": {"num_flagged": 4, "num_folds": 5, "action": "downweight"},
        "noise": {"rate": 0.04},
        "test": {"accuracy": 0.9},
        **extra,
    }


def test_summary_says_no_noise_was_injected(tmp_path):
    text = run_summary(_metrics(), tmp_path, [])
    assert "no noise injected" in text
    injected = {"kind": "symmetric", "rate": 0.2, "num_noisy": 20, "rate_actual": 0.2}
    text = run_summary(_metrics(noise_injected=injected), tmp_path, [])
    assert "no noise injected" not in text and "made wrong on purpose" in text


# 2. Class names, not ids, wherever a person reads.

DOLLAR_NAMES = ["price $5 and $6", r"$\notacmd{$", "a class name far too long for any chart axis"]


def _named_run(run_dir, names=DOLLAR_NAMES, source_len=20):
    import numpy as np
    import torch

    from dcloop.cl import verdict
    from dcloop.folds import assign_folds
    from dcloop.results import write_json, write_run_files
    from dcloop.state import SampleTable

    c, per = len(names), 12
    true = np.repeat(np.arange(c), per)
    given = true.copy()
    given[::5] = (true[::5] + 1) % c
    n = len(true)
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), true] = 0.9
    probs = torch.tensor(probs / probs.sum(1, keepdims=True), dtype=torch.float32)
    table = SampleTable(given, assign_folds(given, 3, seed=0))
    result = verdict(table.labels, probs)
    table.record_flags(result.flags, result.quality, result.suggested, 0)
    sources = [f"/{'d' * source_len}/img{i}.png" for i in range(n)]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(run_dir, table, probs, result, sources, names)
    metrics = _metrics()
    metrics["cleaning"].update(num_flagged=int(table.flagged.sum()), num_folds=3)
    metrics["data"].update(num_train=n, num_classes=c)
    write_json(metrics, run_dir / "metrics.json")
    return metrics


def test_label_issues_has_class_names_beside_the_ids(tmp_path):
    from dcloop.csvsafe import read_csv

    _named_run(tmp_path)
    df = read_csv(tmp_path / "label_issues.csv", dtype={"given_name": str, "suggested_name": str})
    cols = list(df.columns)
    assert cols[1:5] == ["given_label", "given_name", "suggested_label", "suggested_name"]
    for r in df.head(10).itertuples():
        assert r.given_name == DOLLAR_NAMES[r.given_label]
        assert r.suggested_name == DOLLAR_NAMES[r.suggested_label]


def test_summary_worst_line_names_the_classes(tmp_path):
    from dcloop.console import summarize

    metrics = _named_run(tmp_path)
    worst = next(ln for ln in summarize(tmp_path, metrics).splitlines() if "worst" in ln)
    assert any(f"{a}->{b}" in worst for a in DOLLAR_NAMES for b in DOLLAR_NAMES), worst


def test_dollar_and_long_class_names_do_not_crash_the_charts(tmp_path):
    import numpy as np

    from dcloop.people.report import axis_names, heatmap_png, write_report

    png = heatmap_png(np.eye(3), DOLLAR_NAMES, "estimated P(given | true)")
    assert png.startswith(b"\x89PNG")
    short = axis_names(DOLLAR_NAMES)
    assert short[0] == r"price \$5 and \$6" and max(len(s) for s in short) <= 20
    _named_run(tmp_path, source_len=300)
    html = write_report(tmp_path).read_text()
    assert "price $5 and $6" in html  # the tables and cards keep the whole name
    assert ">\u2026" + "d" * 40 in html and ">/" + "d" * 300 not in html  # the path's end
    assert "overflow-wrap:anywhere" in html


# 3. Run folders.


def test_default_run_folders_end_in_the_process_id(tmp_path):
    import os

    from omegaconf import OmegaConf

    import dcloop.cli  # noqa: F401 - registers the resolver the config uses

    cfg = compose_dcloop(tmp_path, hydra=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]
    assert run_dir.startswith("outputs/") and run_dir.endswith(f"-{os.getpid()}")


def test_a_folder_another_live_run_holds_is_one_error(tmp_path):
    import subprocess
    import sys

    from dcloop.runfolder import lock_run_folder

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dcloop.runfolder import lock_run_folder; "
            f"lock_run_folder({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            UserInputError, match=rf"in use by another dcloop run \(pid {holder.pid}\)"
        ):
            lock_run_folder(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock_run_folder(tmp_path)  # free once that run has ended, however it ended


def _earlier_run(folder):
    (folder / ".hydra").mkdir(parents=True)
    (folder / "cli.log").write_text("")
    (folder / "annotators").mkdir()
    (folder / "annotators" / "annotator_stats.csv").write_text("annotator\n")
    (folder / "label_issues.csv").write_text("index\n")
    (folder / "metrics.json").write_text("{}")


def test_a_folder_with_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    from dcloop.runfolder import check_run_folder

    check_run_folder(tmp_path / "new")  # missing: fine
    (tmp_path / "fresh" / ".hydra").mkdir(parents=True)
    check_run_folder(tmp_path / "fresh")  # only what Hydra wrote before the run
    run = tmp_path / "run"
    _earlier_run(run)
    with pytest.raises(UserInputError, match=r"is not empty \(annotators, label_issues.csv"):
        check_run_folder(run)
    check_run_folder(run, resume=str(run / "checkpoints" / "last.ckpt"))  # continues it
    check_run_folder(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "cli.log"]


def test_overwrite_never_removes_what_a_run_does_not_write(tmp_path):
    from dcloop.runfolder import check_run_folder

    _earlier_run(tmp_path)
    (tmp_path / "my_photos").mkdir()
    with pytest.raises(UserInputError, match="also holds my_photos"):
        check_run_folder(tmp_path, overwrite=True)
    assert (tmp_path / "metrics.json").exists()
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("path,label\n")  # a user's CSV, no run beside it
    with pytest.raises(UserInputError, match="also holds labels.csv"):
        check_run_folder(data, overwrite=True)


def _cli(cwd, *overrides):
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "dcloop", *overrides],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


#: A small in-process run (train(cfg)): no logger, checkpoint, report or student.
TINY_RUN = (
    "logger=none",
    "trainer.enable_progress_bar=false",
    "checkpoint=false",
    "report=false",
    "kept=ensemble",
    "model=mlp",
    "folds=2",
)

TINY = (
    "model=mlp",
    "trainer.max_epochs=1",
    "folds=2",
    "report=false",
    "checkpoint=false",
    "kept=ensemble",
    "trainer.enable_progress_bar=false",
)


@pytest.mark.slow
def test_two_runs_started_in_one_second_get_two_folders(tmp_path):
    procs = [_cli(tmp_path, *TINY) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


@pytest.mark.slow
def test_a_reused_run_folder_is_one_error_and_overwrite_replaces_it(tmp_path):
    run = tmp_path / "run"
    _earlier_run(run)
    p = _cli(tmp_path, *TINY, f"hydra.run.dir={run}")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 2 and "is not empty" in err.strip().splitlines()[-1], err[-3000:]
    p = _cli(tmp_path, *TINY, f"hydra.run.dir={run}", "overwrite=true")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert not (run / "annotators").exists() and (run / "metrics.json").is_file()
    # Lightning's INFO lines once, through Hydra's log (item 8), not also on its own handler
    assert (out + err).count("GPU available") == 1, out[-2000:] + err[-2000:]
    assert (run / "cli.log").read_text().count("GPU available") == 1


# 4. The last tracebacks become one line, exit 2.


def test_a_decompression_bomb_is_a_bad_file_that_skip_leaves_out(tmp_path, monkeypatch):
    from PIL import Image

    from dcloop.data.datasets import decode_files, image_folder

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    Image.new("L", (120, 120)).save(tmp_path / "dog" / "bomb.png")
    # A 19000 x 19000 PNG is > 2 x PIL's limit; here the limit shrinks instead of the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    ds, _ = image_folder(tmp_path, image_size=8)
    kept, skipped = decode_files(ds, on_bad_file="skip")
    assert len(kept) == 6 and [p for p, _ in skipped] == [str(tmp_path / "dog" / "bomb.png")]
    assert "decompression bomb" in skipped[0][1].lower()


def test_a_19000_pixel_square_png_is_a_bad_file(tmp_path):
    """The issue's bomb as it is on disk: a PNG header saying 19000 x 19000 (PIL refuses it at
    open, before any pixel is decoded), among readable images."""
    import struct
    import zlib

    from PIL import Image

    from dcloop.data.datasets import decode_files, image_folder

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 19000, 19000, 8, 0, 0, 0, 0)  # 8-bit grey
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "huge.png").write_bytes(bomb)
    ds, _ = image_folder(tmp_path, image_size=8)
    kept, skipped = decode_files(ds, on_bad_file="skip")
    assert len(kept) == 6 and [p for p, _ in skipped] == [str(tmp_path / "cat" / "huge.png")]
    assert "decompression bomb" in skipped[0][1].lower()
    with pytest.raises(ValueError, match="huge.png.*decompression bomb"):
        decode_files(ds)  # on_bad_file=error: named


def test_a_full_disk_is_one_line(tmp_path):
    import errno

    from dcloop.errors import user_error_message
    from dcloop.results import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import json

    real = json.dump
    json.dump = full
    try:
        with pytest.raises(OSError) as info:
            write_json({"a": 1}, tmp_path / "metrics.json")
    finally:
        json.dump = real
    message = user_error_message(info.value)
    assert message is not None and "\n" not in message
    assert "metrics.json" in message and "free some space" in message
    # torch.save wraps the OSError in its own RuntimeError: still one line
    wrapped = RuntimeError("PytorchStreamWriter failed writing file data/0")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert "no space left" in user_error_message(wrapped)


@pytest.mark.slow
def test_a_run_into_a_full_tmpfs_is_one_line_exit_2(tmp_path):
    """A real full disk: a 100 KB tmpfs (mounted in a private mount namespace, where the
    machine allows one) as the run folder; the checkpoint does not fit."""
    import os
    import shutil
    import subprocess
    import sys

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unshare = shutil.which("unshare")
    probe = [unshare or "unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs"]
    if unshare is None or subprocess.run([*probe, str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs unshare -rm and user namespaces)")
    run = [sys.executable, "-m", "dcloop", *TINY, "checkpoint=true", f"hydra.run.dir={mnt}/run"]
    script = f"mount -t tmpfs -o size=100k tmpfs {mnt} && exec " + " ".join(run)
    res = subprocess.run(
        [unshare, "-rm", "sh", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr[-3000:]
    assert err[0].startswith("dcloop: error: no space left on the disk") and "free some" in err[0]


def test_a_negative_learning_rate_is_one_line():
    import torch

    from dcloop.errors import user_error_message

    with pytest.raises(ValueError) as info:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=-1)
    assert user_error_message(info.value) == (
        "Invalid learning rate: -1: expected a valid model.optimizer.* setting"
    )


def test_a_garbage_or_hostile_checkpoint_is_one_line(tmp_path):
    import zipfile

    import torch

    from dcloop.errors import user_error_message

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "hostile.ckpt")
    with zipfile.ZipFile(tmp_path / "zip.ckpt", "w") as z:
        z.writestr("a.txt", "not a checkpoint")
    for name, expected in (("hostile", "objects other than tensors"), ("zip", "not a readable")):
        with pytest.raises(Exception) as info:
            torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        message = user_error_message(info.value)
        assert message is not None and expected in message and "\n" not in message


def test_a_garbage_resume_checkpoint_is_named_as_typed(tmp_path, capsys):
    import zipfile

    import torch

    from dcloop.cli import exit_on_user_error

    path = tmp_path / "g.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "not a checkpoint")
    with pytest.raises(Exception) as info:
        torch.load(path, weights_only=True)
    cfg = compose_dcloop(tmp_path, f"resume={path}")
    with pytest.raises(SystemExit) as done:
        exit_on_user_error(info.value, cfg)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dcloop: error: the checkpoint resume={path} is not a readable torch")
    assert err.count("\n") == 1


def test_a_10_mb_value_is_quoted_short():
    from dcloop.errors import user_error_message

    huge = "/data/" + "x" * 10_000_000
    message = user_error_message(UserInputError(f"data.source.root={huge!r} does not exist"))
    assert len(message) < 400 and "chars]" in message and message.endswith("does not exist")


def test_bare_keys_are_named_as_typed_and_a_missing_root_says_which(tmp_path):
    from omegaconf import OmegaConf

    from dcloop.cli import as_typed
    from dcloop.errors import user_error_message

    cfg = compose_dcloop(tmp_path, "data=folder")
    text = as_typed("root not found: Pass root=<folder>; folds=1 is too few", cfg)
    assert text == "root not found: Pass data.source.root=<folder>; folds=1 is too few"
    with pytest.raises(Exception) as info:
        OmegaConf.to_container(cfg.data, throw_on_missing=True)
    message = user_error_message(info.value)
    assert message.startswith("data.source.root is not set") and "object_type" not in message


def test_manifest_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path):
    from PIL import Image

    from dcloop.data.datasets import csv_manifest

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "m.csv").write_text("path,label\na.png,0\nb.png,1\nc.png,-1\n")
    with pytest.raises(UserInputError, match="row 4 has label .-1."):
        csv_manifest(tmp_path, tmp_path / "m.csv")


def test_an_unknown_config_choice_is_exit_2(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "dcloop", "model=nosuch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert (
        res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[0]]
        and "model=nosuch is not a model config; expected one of" in res.stderr
    )


# 5. Say what happened.


def test_summary_says_skipped_files_and_early_stopping(tmp_path):
    metrics = _metrics(early_stopping={"epoch": 7, "monitor": "val/acc", "best": 0.91})
    metrics["data"]["num_skipped_files"] = 3
    text = run_summary(metrics, tmp_path, [])
    assert f"3 unreadable file(s) left out (on_bad_file=skip); the list: {tmp_path}" in text
    assert "early, at epoch 7 (EarlyStopping on val/acc, best 0.9100)" in text


def test_a_run_too_weak_to_judge_says_so(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping

    from dcloop.callbacks.results import _what_happened

    stop = EarlyStopping(monitor="val/acc", mode="max")
    stop.stopped_epoch = 4
    trainer = SimpleNamespace(callbacks=[stop], fast_dev_run=False)
    near_chance = SimpleNamespace(epochs=[{"oof_acc": 0.15}])
    out = _what_happened(trainer, near_chance, _metrics(warnings=["epoch 3: x"]))
    assert out["early_stopping"]["epoch"] == 5 and out["early_stopping"]["monitor"] == "val/acc"
    assert "near chance" in out["weak_run"]["reason"]
    assert out["warnings"][0] == "epoch 3: x" and "too weak to judge" in out["warnings"][1]
    strong = SimpleNamespace(epochs=[{"oof_acc": 0.8}])
    assert "weak_run" not in _what_happened(SimpleNamespace(callbacks=[]), strong, _metrics())
    smoke = SimpleNamespace(callbacks=[], fast_dev_run=1)
    assert "fast_dev_run" in _what_happened(smoke, strong, _metrics())["weak_run"]["reason"]
    # the summary's found line does not call the flags label errors then
    found = next(
        ln for ln in run_summary(_metrics(**out), tmp_path, []).splitlines() if "found" in ln
    )
    assert "4 samples flagged, not likely label errors: the run is too weak" in found
    assert "likely label errors (" in run_summary(_metrics(), tmp_path, [])


def test_the_report_of_a_weak_run_does_not_call_its_flags_label_errors(tmp_path):
    from dcloop.people.report import write_report
    from dcloop.results import write_json

    metrics = _named_run(tmp_path)
    assert "likely label errors" in write_report(tmp_path).read_text()
    metrics["weak_run"] = {"reason": "OOF accuracy 0.300, near chance (0.333)"}
    write_json(metrics, tmp_path / "metrics.json")
    html = write_report(tmp_path).read_text()
    assert "Run too weak to judge the labels" in html and "likely label errors" not in html
    assert "flagged (too weak to judge: see above)" in html


def test_first_flagged_epoch_is_empty_when_no_step_flagged_the_row(tmp_path):
    from dcloop.csvsafe import read_csv

    _named_run(tmp_path)
    df = read_csv(tmp_path / "label_issues.csv")
    assert df.loc[df["flagged"], "first_flagged_epoch"].eq(0).all()
    assert df.loc[~df["flagged"], "first_flagged_epoch"].isna().all()
    assert ",-1," not in (tmp_path / "label_issues.csv").read_text()


def test_export_says_what_label_studio_can_show(tmp_path, capsys):
    from people_run import make_run

    from dcloop.people.cli import export_main

    make_run(tmp_path / "run")  # digits: no files
    assert export_main([str(tmp_path / "run"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "Label Studio will not show them" in out and "--embed" in out
    assert export_main([str(tmp_path / "run"), "--top", "3", "--embed"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_storage_root_is_the_folder_holding_every_file(tmp_path):
    from dcloop.people.export import storage_root

    for name in ("cat/1.png", "dog/sub/2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert storage_root([str(tmp_path / "cat/1.png"), str(tmp_path / "dog/sub/2.png")]) == str(
        tmp_path
    )
    assert storage_root(["digits:12", "digits:13"]) is None


def test_the_label_file_line_counts_as_the_import_does(tmp_path, caplog):
    import logging

    import numpy as np

    from dcloop.data.labelfile import read_label_file

    rows = ["index,label,status"]
    rows += [f"{i},1,corrected" for i in range(8)] + [f"{i},0,confirmed" for i in range(8, 10)]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.INFO, logger="dcloop.data.labelfile"):
        read_label_file(tmp_path / "l.csv", np.zeros(20, dtype=np.int64), ["a", "b"])
    assert "8 labels changed; checked by people: 8 corrected, 2 confirmed" in caplog.text


@pytest.mark.slow
def test_a_run_says_what_happened_in_metrics_json_and_the_summary(tmp_path):
    """Item 5 end to end: a folder run with an unreadable file (on_bad_file=skip) that early
    stopping ends, on random images a model cannot learn (too weak to judge)."""
    import json

    import numpy as np
    from PIL import Image

    from dcloop.console import summarize
    from dcloop.train import train

    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for cls in ("cat", "dog", "eel", "fox"):
        (root / cls).mkdir(parents=True)
        for i in range(15):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not an image")
    run = tmp_path / "run"
    cfg = compose_dcloop(
        run,
        *TINY_RUN,
        "data=folder",
        f"data.source.root={root}",
        "data.source.on_bad_file=skip",
        "data.source.image_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=6",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1.0",  # no epoch improves by 1: stops at epoch 2
    )
    metrics = train(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["data"]["num_skipped_files"] == 1
    assert (run / saved["data"]["skipped_files_list"]).is_file()
    assert saved["early_stopping"]["epoch"] == 2
    assert saved["early_stopping"]["monitor"] == "val/acc"
    assert "near chance" in saved["weak_run"]["reason"]
    text = summarize(run, metrics)
    assert "1 unreadable file(s) left out" in text and str(run / "skipped_files.csv") in text
    assert "early, at epoch 2 (EarlyStopping on val/acc" in text
    assert "too weak to judge" in text
    issues = (run / "label_issues.csv").read_text()
    assert ",-1," not in issues


def test_the_next_runs_label_file_line_repeats_the_imports_counts(tmp_path, caplog, capsys):
    """dcloop-import's counts and the next run's line about the same file agree."""
    import logging
    import re

    from people_run import make_run

    from dcloop.data.labelfile import read_label_file
    from dcloop.people import import_corrections, relabel_queue

    run = tmp_path / "run"
    dm = make_run(run)
    q = relabel_queue(run, top=10)
    q["label"] = q["suggested_name"]
    q.loc[q.index[:3], "label"] = q["given_name"].iloc[:3]  # three kept as given: confirmed
    q.to_csv(tmp_path / "reviewed.csv", index=False)
    path, counts = import_corrections(run, tmp_path / "reviewed.csv", tmp_path / "l.csv")
    assert counts["confirmed"] >= 3 and counts["corrected"] >= 1
    with caplog.at_level(logging.INFO, logger="dcloop.data.labelfile"):
        read_label_file(path, dm.given_labels, dm.class_names, dm.train_dataset.sources)
    said = f"{counts['corrected']} corrected, {counts['confirmed']} confirmed"
    assert f"{counts['corrected']} labels changed; checked by people: {said}" in caplog.text
    # a second review on top of the first: the import names the file's totals too, and
    # those are what the next run counts
    from dcloop.people.cli import import_main

    again = q.iloc[:1].copy()  # row 0 was confirmed; a second reviewer corrects it
    again["label"] = next(c for c in dm.class_names if c != q["given_name"].iloc[0])
    again.to_csv(tmp_path / "reviewed2.csv", index=False)
    caplog.clear()
    assert import_main([str(run), str(tmp_path / "reviewed2.csv"), "--base", str(path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    path2 = sorted(run.glob("labels_corrected_*.csv"))[-1]
    with caplog.at_level(logging.INFO, logger="dcloop.data.labelfile"):
        read_label_file(path2, dm.given_labels, dm.class_names, dm.train_dataset.sources)
    assert line.startswith("dcloop-import: 1 corrected, 0 confirmed"), line
    total = re.search(r"the file holds (\d+) corrected, (\d+) confirmed", line)
    assert total and int(total[1]) == counts["corrected"] + 1, line
    assert int(total[2]) == counts["confirmed"] - 1, line
    assert f"checked by people: {total[1]} corrected, {total[2]} confirmed" in caplog.text


# 8. Fast start and helpful help.


def test_the_command_line_layers_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, dcloop.cli, dcloop.people.cli, dcloop.people; "
        "heavy = [m for m in ('torch', 'lightning', 'pandas') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_input_is_checked_before_torch_loads(tmp_path):
    from dcloop.cli import preflight

    with pytest.raises(UserInputError, match="folds must be an integer >= 2"):
        preflight(compose_dcloop(tmp_path, "folds=1"))
    missing = tmp_path / "nope"
    cfg = compose_dcloop(tmp_path, "data=folder", f"data.source.root={missing}")
    with pytest.raises(UserInputError, match=rf"data.source.root={missing} does not exist"):
        preflight(cfg)
    preflight(compose_dcloop(tmp_path))  # the defaults pass


def test_help_opens_with_what_dcloop_does(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "dcloop", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    assert res.stdout.startswith("dcloop: find label errors while a model trains")
    assert "data=folder --help" in res.stdout and "dcloop-export" in res.stdout
    assert "powered by Hydra" not in res.stdout


@pytest.mark.parametrize("which", ["help", "hydra_help"])
def test_the_faster_help_is_hydras_help(tmp_path, which):
    """dcloop --help fills in only what its template uses (Hydra lists every config group
    twice, a third of the help's time): the text is what Hydra's own get_help gives."""
    from hydra._internal.hydra import Hydra

    from dcloop.cli import _help_text

    class Groups:
        def format_args_help(self, parser):
            return "--help,-h : the flags"

        def format_config_groups(self, predicate, compact=True):
            return "".join(f"{g}: a, b\n" for g in ("data", "hydra/launcher") if predicate(g))

    cfg = compose_dcloop(tmp_path, hydra=True)
    help_cfg = cfg.hydra[which]
    ours = _help_text(Groups(), help_cfg, cfg.data, None, False)
    assert ours == Hydra.get_help(Groups(), help_cfg, cfg.data, None, False)
    assert ("hydra/launcher: a, b" in ours) == (which == "hydra_help")


def test_help_into_a_closed_pipe_is_no_traceback(tmp_path):
    import subprocess
    import sys

    # `true` exits without reading: the help's write finds the pipe closed
    res = subprocess.run(
        f"{sys.executable} -m dcloop --help | true",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr


def test_a_lightning_logger_that_does_not_propagate_keeps_its_lines():
    """Lightning loaded before Hydra set up logging: its logger has its own handler and does
    not propagate; without the handler it must propagate to Hydra's, or its lines vanish."""
    import logging

    from dcloop.cli import _one_log_line_each

    root, logger = logging.getLogger(), logging.getLogger("lightning.fabric")
    own, hydras = logging.StreamHandler(), logging.StreamHandler()
    old = (list(logger.handlers), logger.propagate)
    logger.addHandler(own)
    logger.propagate = False
    root.addHandler(hydras)
    try:
        _one_log_line_each()
        assert own not in logger.handlers and logger.propagate
    finally:
        root.removeHandler(hydras)
        logger.handlers[:], logger.propagate = old


def test_lightning_lines_are_printed_once():
    import logging

    import lightning.pytorch  # noqa: F401 - adds its own console handler

    from dcloop.cli import _one_log_line_each

    root = logging.getLogger()
    added = logging.StreamHandler()
    root.addHandler(added)  # Hydra's console handler
    try:
        _one_log_line_each()
        handlers = logging.getLogger("lightning.pytorch").handlers
        assert not [h for h in handlers if type(h) is logging.StreamHandler]
    finally:
        root.removeHandler(added)


# 7. Label files survive a moved folder.


def _label_file_for(folder, out, with_prints=True):
    from dcloop.data.labelfile import fingerprint

    files = sorted(str(p) for p in folder.rglob("*.png"))
    rows = ["index,source,label,status" + (",fingerprint" if with_prints else "")]
    for i, f in enumerate(files):
        extra = f",{fingerprint(f)}" if with_prints else ""
        rows.append(f"{i},{f},{i % 2},corrected{extra}")
    out.write_text("\n".join(rows) + "\n")
    return files


def test_a_moved_data_folder_keeps_its_label_file(tmp_path, caplog):
    import logging
    import shutil

    import numpy as np
    from PIL import Image

    from dcloop.data.labelfile import read_label_file

    old = tmp_path / "old" / "pets"
    for cls in ("cat", "dog"):
        (old / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(old / cls / f"{i}.png")
    files = _label_file_for(old, tmp_path / "labels.csv")
    new = tmp_path / "elsewhere" / "pets_moved"
    shutil.move(str(old), str(new))
    moved = [f.replace(str(old), str(new)) for f in files]
    labels = np.zeros(len(files), dtype=np.int64)
    with caplog.at_level(logging.WARNING, logger="dcloop.data.labelfile"):
        over = read_label_file(tmp_path / "labels.csv", labels, ["cat", "dog"], moved)
    assert over.labels.tolist() == [0, 1, 0, 1]
    assert f"moved from {old} to {new}" in caplog.text
    assert "the contents of 4 file(s) match" in caplog.text
    # other data at the same relative paths: refused, and said to be other data
    Image.new("RGB", (4, 4), (1, 2, 3)).save(new / "dog" / "1.png")
    with pytest.raises(ValueError, match=r"1 of 4 file\(s\) differ in content .*other data"):
        read_label_file(tmp_path / "labels.csv", labels, ["cat", "dog"], moved)
    # unrelated paths are still the old error
    with pytest.raises(ValueError, match="belongs to other data or another split"):
        read_label_file(tmp_path / "labels.csv", labels, ["cat", "dog"], list("abcd"))


def test_a_moved_folder_keeps_dcloop_imports_label_file_in_the_next_run(tmp_path, caplog):
    """Item 7 through the whole chain: a run on a folder, dcloop-import's label file, the
    folder moved, the next run's data module with that file."""
    import logging
    import shutil

    import numpy as np
    from people_run import make_run
    from PIL import Image

    from dcloop.data import LabelNoiseDataModule
    from dcloop.data.sources import ImageFolder
    from dcloop.people import import_corrections, relabel_queue

    old = tmp_path / "old" / "pets"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog", "fox")):
        (old / name).mkdir(parents=True)
        for i in range(12):
            arr = np.full((8, 8, 3), 40 + 60 * k) + rng.integers(0, 20, (8, 8, 3))
            Image.fromarray(arr.astype(np.uint8)).save(old / name / f"{i}.png")
    run = tmp_path / "run"
    make_run(run, source=ImageFolder(old, image_size=8))
    q = relabel_queue(run, top=5)
    q["label"] = q["suggested_name"]
    q.to_csv(tmp_path / "reviewed.csv", index=False)
    path, counts = import_corrections(run, tmp_path / "reviewed.csv", tmp_path / "l.csv")
    new = tmp_path / "elsewhere" / "pets"
    new.parent.mkdir()
    shutil.move(str(old), str(new))

    def next_run():
        dm = LabelNoiseDataModule(
            ImageFolder(new, image_size=8), noise={"kind": "symmetric", "rate": 0.2}, labels=path
        )
        dm.setup()
        return dm

    with caplog.at_level(logging.WARNING, logger="dcloop.data.labelfile"):
        dm = next_run()
    assert f"moved from {tmp_path / 'old'} to {tmp_path / 'elsewhere'}" in caplog.text
    assert "the contents of" in caplog.text and "match" in caplog.text
    assert int(dm.label_override.confirmed.sum()) == counts["corrected"] + counts["confirmed"]
    # other pictures at the same relative paths: refused as other data
    for p in new.rglob("*.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(p)
    with pytest.raises(ValueError, match="differ in content .*other data"):
        next_run()


def test_import_writes_fingerprints(tmp_path):
    import pandas as pd
    from people_run import make_run

    from dcloop.csvsafe import read_csv
    from dcloop.people import import_corrections, relabel_queue

    run = tmp_path / "run"
    make_run(run)
    q = relabel_queue(run, top=3)
    q["label"] = q["suggested_name"]
    q.to_csv(tmp_path / "reviewed.csv", index=False)
    path, _ = import_corrections(run, tmp_path / "reviewed.csv", tmp_path / "l.csv")
    df = read_csv(path, dtype=str, keep_default_na=False)
    assert "fingerprint" in df.columns and isinstance(df, pd.DataFrame)


# 6. Checkpoints that cost what they should.


def _ckpt_trainer(epoch, max_epochs=10, should_stop=False):
    from types import SimpleNamespace

    return SimpleNamespace(
        current_epoch=epoch,
        max_epochs=max_epochs,
        should_stop=should_stop,
        strategy=SimpleNamespace(broadcast=lambda x: x),
    )


def test_checkpoints_are_skipped_while_they_cost_more_than_their_share(tmp_path):
    import time

    from dcloop.callbacks import EpochCheckpoint

    ckpt = EpochCheckpoint(tmp_path, max_share=0.1)  # the command's default: <= 10 %
    assert ckpt._due(_ckpt_trainer(0))  # nothing written yet: cheap
    ckpt.saved_epoch, ckpt.write_seconds = 0, 1.0
    ckpt._since = time.perf_counter() - 2.0  # 2 s of training since a 1 s write
    assert not ckpt._due(_ckpt_trainer(1))
    assert ckpt._due(_ckpt_trainer(9))  # the last epoch is always saved
    assert ckpt._due(_ckpt_trainer(3, should_stop=True))  # so is an early stop
    ckpt._since = time.perf_counter() - 20.0  # 20 s since: 5 %
    assert ckpt._due(_ckpt_trainer(4))
    every3 = EpochCheckpoint(tmp_path, every_epochs=3)
    every3.saved_epoch = 2
    assert [every3._due(_ckpt_trainer(e)) for e in (3, 4, 5)] == [False, False, True]
    with pytest.raises(ValueError, match="max_share must be in"):
        EpochCheckpoint(tmp_path, max_share=0)
    always = EpochCheckpoint(tmp_path)  # the library default: every epoch, as before
    always.saved_epoch, always.write_seconds = 0, 1.0
    always._since = time.perf_counter() - 0.5
    assert always._due(_ckpt_trainer(1))


def test_the_commands_checkpoint_default_is_a_ten_percent_share(tmp_path):
    from hydra.utils import instantiate

    from dcloop.callbacks import EpochCheckpoint

    cfg = compose_dcloop(tmp_path)
    ckpt = instantiate(cfg.callbacks.checkpoint)
    assert isinstance(ckpt, EpochCheckpoint) and ckpt.max_share == 0.1 and ckpt.save_every == 1
    assert instantiate(compose_dcloop(tmp_path, "checkpoint=false").callbacks.checkpoint) is None


def test_checkpoint_time_has_its_own_name():
    from dcloop.console import timing_line
    from dcloop.timing import PHASES

    assert "checkpoint" in PHASES
    line = timing_line({"train_steps": 20.0, "checkpoint": 11.0, "other": 2.0, "total": 33.0})
    assert "checkpoint 33%" in line


def test_checkpoint_writes_are_timed_as_checkpoint_in_a_real_fit(tmp_path, blobs):
    from functools import partial

    import lightning as L

    from dcloop.callbacks import EpochCheckpoint
    from dcloop.models import MLP, FoldEnsemble
    from dcloop.timing import LoopTiming, phase_times

    model = FoldEnsemble(partial(MLP, (8,), 3, hidden=(16,)), blobs.labels, num_folds=2)
    ckpt = EpochCheckpoint(tmp_path / "checkpoints")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LoopTiming(), ckpt],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=blobs)
    assert ckpt.path.is_file() and ckpt.saved_epoch == 1
    seconds = phase_times(trainer).seconds
    assert seconds["checkpoint"] >= ckpt.write_seconds > 0


def test_the_progress_bar_numbers_epochs_as_the_log(tmp_path):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from dcloop.callbacks.progress import EpochProgressBar

    assert EpochProgressBar.when(False) is None
    seen = []

    class Spy(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(bar.train_progress_bar.desc)

    bar = EpochProgressBar.when(True)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, Spy()],
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    assert [d.split(":")[0] for d in seen] == ["Epoch 1", "Epoch 2"]


def test_the_health_line_counts_in_the_singular_for_one():
    from dcloop.console import _count

    assert _count(1, "test sample") == "1 test sample"
    assert _count(0, "weak group") == "0 weak groups"
    assert _count("-", "test-only sample") == "- test-only samples"  # not computed
