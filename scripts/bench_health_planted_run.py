"""Planted outliers and near-duplicates, found by a dcloop run: precision, recall and F1.

:mod:`bench_health_planted` scores training-free signals on the planted data. This script
asks what a *run* reports: it writes the same planted data as a data set on disk (images
as a class-folder tree, texts as a CSV), trains dcloop on it with data health on (the
default), and scores the run's own ``data_issues/outliers.csv`` and
``data_issues/near_duplicates.csv`` against the plants that landed in the training split.

* ``--data cifar``: the CIFAR subset's 5,000 training photos plus the 50 outliers (25 noise,
  25 digits) and 50 shifted, colour-jittered, JPEG re-encoded copies of
  :func:`bench_health_planted.planted_images` (seed ``--seed``), written as PNG (lossless:
  the pixels the planted benchmark scored); the subset's ``test/`` is the test set. Recipe:
  ``experiment=cifar_resnet``.
* ``--data agnews``: AG News's 4,000 rows plus the 40 off-topic texts and 40 edited copies
  of :func:`bench_health_planted.planted_texts`, one CSV; the run holds out its test and
  validation rows as usual (the plants that land there are not training samples and are not
  scored). Recipe: ``bench_text``'s (TextBoW, 20 epochs).
* ``--data fsdd``: the spoken digits' training recordings (10-49, as ``bench_real``) plus
  25 noise clips, 25 pure tones and 50 moved, re-levelled, lightly noised copies
  (:func:`write_fsdd`); recordings 0-9 are the test set. Recipe: ``bench_real``'s
  (AudioCNN, 20 epochs).

Each planted outlier gets a class drawn at random (a plant has no true class); each copy
keeps its original's class. Truth for duplicates: each planted copy and its original when
both are training rows, and (a second row) those plus the CIFAR subset's own duplicate
photos (:data:`bench_health_planted.CIFAR_OWN_DUPLICATES`) or AG News's own near-identical
rows (:func:`bench_health_planted.natural_text_duplicates`, among the training rows).

Besides the run's flags, rows computed afterwards from the run's saved embedding
(``data_issues/features_train_mean.npy``) give each signal's flags and its best F1 over all
cut-offs (an upper bound, not a tuned result).

Usage:

    python scripts/bench_health_planted_run.py --data agnews --workdir /tmp/hp \\
        --out scripts/results/bench_health_planted_run_agnews
    python scripts/bench_health_planted_run.py --data cifar --workdir /tmp/hp --run /tmp/hp/run

``--run DIR`` scores a finished run folder instead of training (its data must be the one
this script writes with the same ``--seed`` into ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_health_planted as bhp  # noqa: E402

from dcloop.health import find_outliers, find_rare_texts  # noqa: E402

ROOT = HERE.parent
CLASSES_AG = ("World", "Sports", "Business", "Sci/Tech")


# ------------------------------------------------------------------------------ the data
def data_root(data: str, folder: Path) -> Path:
    """Where the written data set's ``train/`` (and for spoken digits ``test/``) lie."""
    return folder / "fsdd_by_recording" if data == "fsdd" else folder


def write_cifar(seed: int, folder: Path) -> pd.DataFrame:
    """Write the planted CIFAR subset under ``folder/train/<class>/``; one row per image:
    ``file`` (relative to ``train/``), ``outlier``, ``original`` (a planted copy's original
    row, else -1)."""
    d = bhp.planted_images(np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    classes = sorted({p.parent.name for p in d["paths"]})
    n = len(d["paths"])
    files = [p.relative_to(p.parents[1]).with_suffix(".png").as_posix() for p in d["paths"]]
    for j in range(50):
        kind = "noise" if j < 25 else "digit"
        files.append(f"{classes[rng.integers(len(classes))]}/plant_{kind}_{j:02d}.png")
    for j, i in enumerate(d["originals"]):
        files.append(
            f"{Path(files[i]).parent.as_posix()}/plant_copy_{j:02d}_of_{Path(files[i]).stem}.png"
        )
    for f, a in zip(files, d["images"], strict=True):
        p = folder / "train" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            Image.fromarray(a).save(p)
    assert len(files) == n + 100
    original = np.full(n + 100, -1)
    original[n + 50 :] = d["originals"]
    return pd.DataFrame(
        {
            "file": files,
            "outlier": d["out_truth"],
            "original": original,
        }
    )


def write_agnews(seed: int, folder: Path) -> pd.DataFrame:
    """Write the planted AG News rows to ``folder/agnews_planted.csv``; one row per text:
    ``row``, ``outlier``, ``original`` (a planted copy's original row, else -1), ``text``."""
    d = bhp.planted_texts(np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    labels = [c if c is not None else CLASSES_AG[rng.integers(4)] for c in d["labels"]]
    for j, i in enumerate(d["originals"]):  # a copy keeps its original's class
        labels[4040 + j] = labels[i]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": d["texts"], "label": labels}).to_csv(
        folder / "agnews_planted.csv", index=False
    )
    (folder / "classes.txt").write_text("\n".join(CLASSES_AG) + "\n")
    original = np.full(len(labels), -1)
    original[4040:] = d["originals"]
    return pd.DataFrame(
        {
            "row": np.arange(len(labels)),
            "outlier": d["out_truth"],
            "original": original,
            "text": d["texts"],
        }
    )


def write_fsdd(seed: int, folder: Path) -> pd.DataFrame:
    """Write the planted spoken digits: :func:`bench_real.fsdd_split`'s ``train/<digit>/``
    (FSDD's recordings 10-49) and ``test/<digit>/`` (0-9) under ``folder`` (symlinks), the
    plants beside the training clips as 8 kHz WAV (:func:`data_root`); one row per
    training clip: ``file``, ``outlier``, ``original``. Plants: 25 noise clips (white, 1 s,
    random level), 25 tones (one sine of 150-2,000 Hz, 0.3-1 s, random level: sounds that
    are not speech) and 50 copies of distinct training clips moved by 20-60 ms, at a gain
    of 0.7-1.3 with noise 30 dB below the clip."""
    import soundfile as sf
    from bench_real import fsdd_split

    rng = np.random.default_rng(seed)
    label_rng = np.random.default_rng(seed + 1000)
    train = fsdd_split(folder) / "train"  # bench_real's split by recording, as symlinks
    files = [p.relative_to(train).as_posix() for p in sorted(train.glob("*/*.wav"))]
    files = [f for f in files if "plant_" not in f]  # a second call finds its own plants
    clips = [sf.read(train / f, dtype="float32")[0] for f in files]
    n, sr = len(files), 8000
    classes = sorted({f.split("/")[0] for f in files})
    plants = []
    for j in range(50):
        c = classes[label_rng.integers(len(classes))]
        if j < 25:
            a = rng.normal(0, rng.uniform(0.02, 0.3), sr).astype(np.float32)
            plants.append((f"{c}/plant_noise_{j:02d}.wav", a))
        else:
            t = np.arange(int(sr * rng.uniform(0.3, 1.0))) / sr
            a = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(150, 2000) * t)
            plants.append((f"{c}/plant_tone_{j:02d}.wav", a.astype(np.float32)))
    originals = rng.choice(n, 50, replace=False)
    for j, i in enumerate(originals):
        a = clips[i]
        move = int(rng.integers(160, 481))  # 20-60 ms
        a = np.concatenate([np.zeros(move, np.float32), a]) * rng.uniform(0.7, 1.3)
        a = a + rng.normal(0, 10 ** (-30 / 20) * float(np.sqrt((a**2).mean())), a.shape)
        name = Path(files[i])
        plants.append((f"{name.parent}/plant_copy_{j:02d}_of_{name.stem}.wav", a))
    for f, a in plants:
        path = train / f
        if not path.exists():
            sf.write(path, np.clip(a, -1, 1).astype(np.float32), sr, subtype="PCM_16")
    files += [f for f, _ in plants]
    outlier = np.zeros(len(files), bool)
    outlier[n : n + 50] = True
    original = np.full(len(files), -1)
    original[n + 50 :] = originals
    return pd.DataFrame({"file": files, "outlier": outlier, "original": original})


def overrides(data: str, folder: Path, epochs: int | None) -> list[str]:
    if data == "cifar":
        ov = [
            "experiment=cifar_resnet",
            "data=folder",
            f"data.source.root={folder / 'train'}",
            f"data.source.test_root={bhp.DATA / 'cifar10-subset' / 'test'}",
            "data.num_workers=0",
        ]
    elif data == "fsdd":
        ov = [
            "data=audio_folder",
            f"data.source.root={data_root(data, folder) / 'train'}",
            f"data.source.test_root={data_root(data, folder) / 'test'}",
            "model=audio_cnn",
            "data.num_workers=0",
            "trainer.max_epochs=20",
        ]
    else:
        ov = [
            "data=text_csv",
            f"data.source.path={folder / 'agnews_planted.csv'}",
            f"data.source.classes={folder / 'classes.txt'}",
            "data.source.tokenizer.max_vocab=8000",
            "data.batch_size=128",
            "model=text_bow",
            "model.net.dim=32",
            "model.optimizer.lr=0.006",
            "trainer.max_epochs=20",
        ]
    if epochs is not None:
        ov.append(f"trainer.max_epochs={epochs}")
    return ov


def run(ov: list[str], run_dir: Path, seed: int) -> float:
    """One ``dcloop`` run in a child process, one thread; its CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "dcloop",
        *ov,
        f"seed={seed}",
        f"output_dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ------------------------------------------------------------------------------ scoring
def training_rows(run_dir: Path, data: str, truth: pd.DataFrame, folder: Path) -> np.ndarray:
    """For each training sample of the run (its ``labels.csv`` order), its row of ``truth``."""
    src = pd.read_csv(run_dir / "labels.csv")["source"].astype(str)
    if data == "agnews":
        return src.str.rsplit("row ", n=1).str[1].astype(int).to_numpy()
    where = {f: i for i, f in enumerate(truth["file"])}
    root = data_root(data, folder) / "train"
    return np.array([where[Path(s).relative_to(root).as_posix()] for s in src])


def score_run(
    data: str, run_dir: Path, truth: pd.DataFrame, folder: Path, cpu: float | None
) -> tuple[list[dict], dict]:
    rows_of = training_rows(run_dir, data, truth, folder)
    n = len(rows_of)
    out_t = truth["outlier"].to_numpy()[rows_of]
    issues = run_dir / "data_issues"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    kept = metrics.get("kept", {}).get("test_accuracy")
    timing = metrics.get("timing", {})
    info = {
        "run": str(run_dir),
        "run_cpu_s": metrics.get("cost", {}).get("cpu_s"),
        "run_wall_s": round(float(metrics.get("wall_time_s", 0.0)), 1),
        "data_health_s": timing.get("data_health"),
        "test_phase_s": timing.get("test"),
        "training_samples": n,
        "planted_outliers_in_training": int(out_t.sum()),
        "kept_test_accuracy": None if kept is None else round(float(kept), 4),
        "cpu_s": None if cpu is None else round(cpu, 1),
    }
    rows = []

    def add(kind: str, signal: str, flags: np.ndarray, t: np.ndarray, score=None) -> None:
        rows.append(
            {
                "type": kind,
                "signal": signal,
                **bhp.prf(flags, t),
                "best_f1": None if score is None else bhp.best_f1(score, t),
            }
        )

    def add_rule(signal: str, res) -> None:  # an outlier rule's result, with its best F1
        add("outliers", signal, res.flags.numpy(), out_t, res.score.numpy())

    def member(index) -> np.ndarray:  # rows of the training set named in ``index``
        flags = np.zeros(n, bool)
        flags[np.asarray(index, int)] = True
        return flags

    o = pd.read_csv(issues / "outliers.csv")
    add("outliers", "the run's outliers.csv (all signals)", member(o["index"]), out_t)
    if "signal" in o:
        for sig in sorted(set(o["signal"]) - {"both"}):
            part = o[o["signal"].isin([sig, "both"])]["index"]
            add("outliers", f"the run's outliers.csv, signal {sig} or both", member(part), out_t)
    x = torch.from_numpy(np.load(issues / "features_train_mean.npy"))
    for metric in ("cosine", "euclidean"):
        res = find_outliers(x, metric=metric)
        what = f"run's mean embedding (D = {x.shape[1]}), Datalab rule, {metric} (recomputed)"
        add_rule(what, res)
    if data == "cifar":
        from dcloop.health import pixel_signature

        files = truth["file"].to_numpy()[rows_of]
        imgs = np.stack([np.asarray(Image.open(folder / "train" / f)) for f in files])
        t = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        res = find_outliers(pixel_signature(t))
        add_rule("pixel thumbnails of the training images, Datalab rule (recomputed)", res)
    if data == "fsdd":
        from dcloop.data.audio import read_audio
        from dcloop.health import audio_signature

        root = data_root(data, folder) / "train"
        files = truth["file"].to_numpy()[rows_of]
        clips = torch.stack([read_audio(str(root / f), 8000, 8000) for f in files])
        sig = audio_signature(clips, sample_rate=8000)
        for metric in ("euclidean", "cosine"):
            what = f"log-mel spectrograms of the training clips, Datalab rule, {metric}"
            add_rule(f"{what} (recomputed)", find_outliers(sig, metric=metric))
    if data == "agnews":
        from dcloop.data.tokenize import UNK_ID, NgramTokenizer

        texts = truth["text"].to_numpy()[rows_of].tolist()
        tok = NgramTokenizer(ngrams=(1,), max_vocab=8000, min_count=2, max_len=128).fit(texts)
        res = find_rare_texts(tok.encode_batch(texts), pad_id=tok.pad_id, unk_id=UNK_ID)
        what = "token rarity on the training rows (recomputed, the run's tokenizer settings)"
        add_rule(what, res)
    # near-duplicates: a sample counts as found when it is a member of a flagged train pair;
    # a planted pair is true only when both members are training rows
    pos = np.full(len(truth), -1)
    pos[rows_of] = np.arange(n)
    dup_t = np.zeros(n, bool)
    orig = truth["original"].to_numpy()
    for c in np.flatnonzero(orig >= 0):
        if pos[c] >= 0 and pos[orig[c]] >= 0:
            dup_t[pos[c]] = dup_t[pos[orig[c]]] = True
    nd = pd.read_csv(issues / "near_duplicates.csv")
    nd = nd[(nd["split_a"] == "train") & (nd["split_b"] == "train")]
    dflags = member(np.concatenate([nd["index_a"], nd["index_b"]]))
    add("near-duplicates (planted only)", "the run's near_duplicates.csv", dflags, dup_t)
    own = dup_t.copy()
    if data == "cifar":
        where = {f: i for i, f in enumerate(truth["file"])}
        for a, b in bhp.CIFAR_OWN_DUPLICATES:
            ia, ib = (pos[where[x.replace(".jpg", ".png")]] for x in (a, b))
            if ia >= 0 and ib >= 0:
                own[ia] = own[ib] = True
        what = "planted + the subset's own photos"
    elif data == "agnews":
        own[:n] |= bhp.natural_text_duplicates(truth["text"].to_numpy()[rows_of].tolist())
        what = "planted + AG News's own"
    if data != "fsdd":  # spoken digits: no judged duplicates of its own
        add(f"near-duplicates ({what})", "the run's near_duplicates.csv", dflags, own)
    info["planted_pairs_in_training"] = int(dup_t.sum() // 2)
    leak = issues / "leakage.csv"
    info["leakage_rows"] = len(pd.read_csv(leak)) if leak.is_file() else None
    return rows, info


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["cifar", "agnews", "fsdd"], required=True)
    ap.add_argument("--seed", type=int, default=0, help="the plants' seed and the run's")
    ap.add_argument("--workdir", default="/tmp/bench_health_planted_run")
    ap.add_argument("--run", default=None, help="score this finished run folder")
    ap.add_argument("--epochs", type=int, default=None, help="the recipe's if unset")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for the run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(args.workdir) / f"{args.data}_seed{args.seed}"
    t0 = time.perf_counter()
    write = {"cifar": write_cifar, "agnews": write_agnews, "fsdd": write_fsdd}[args.data]
    truth = write(args.seed, folder)
    ov = overrides(args.data, folder, args.epochs) + list(args.extra)
    cpu = None
    if args.run is None:  # the script's own run folder, one per set of --extra overrides
        tag = "_".join(e.rsplit(".", 1)[-1].replace("=", "-") for e in args.extra)
        run_dir = folder / ("run" if not tag else f"run_{tag}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cpu = run(ov, run_dir, args.seed)
    else:
        run_dir = Path(args.run)
    rows, info = score_run(args.data, run_dir, truth, folder, cpu)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} CPU, 1 thread, torch {torch.__version__}",
        "run_overrides": ov + [f"seed={args.seed}"],
        "wall_s": round(time.perf_counter() - t0, 1),
        **info,
    }
    md = [
        f"# Planted outliers and near-duplicates, found by a dcloop run ({args.data})",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; wall {meta['wall_s']} s"
        + ("" if cpu is None else f", the run {info['cpu_s']} CPU s"),
        "- The run: `dcloop " + " ".join(meta["run_overrides"]) + "` (data health on, "
        "the default); data written by this script (see its docstring).",
        f"- Training samples {info['training_samples']}; planted outliers among them "
        f"{info['planted_outliers_in_training']}, planted pairs with both members in "
        f"training {info['planted_pairs_in_training']}; the kept model's test accuracy "
        f"{info['kept_test_accuracy']}.",
        f"- The run's phases (its metrics.json): wall {info['run_wall_s']} s, CPU "
        f"{info['run_cpu_s']} s; data health at the end of fit {info['data_health_s']} s; the "
        f"test phase (with data health's test-end pass) {info['test_phase_s']} s.",
        f"- Test samples flagged as leaking from training (leakage.csv): {info['leakage_rows']}"
        + (" (the test recordings are other takes: none is a copy)" if args.data == "fsdd" else ""),
        "- Target (issue 22): F1 >= 0.9.",
        "",
        "| type | signal | flagged | precision | recall | F1 | best F1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        num = [r[c] for c in ("precision", "recall", "f1", "best_f1")]
        num = " | ".join("-" if v is None else f"{v:.3f}" for v in num)
        md.append(f"| {r['type']} | {r['signal']} | {r['flagged']} | {num} |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
