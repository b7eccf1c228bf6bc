"""dcloop-predict on 10,000 inputs against a plain torch loop over the same saved network.

Issue 21's target: ``dcloop-predict`` within 1.5x of the plain loop. Per case, a kept model
is saved with :func:`dcloop.kept.save_kept_model` from the real data's data module (fresh,
untrained weights: only the time is measured) and then, alternately, ``--repeats`` times:

* **dcloop-predict**: ``dcloop.kept.cli.predict_main([RUN, INPUTS, --out, CSV])`` in this
  process: loading the model from ``RUN/model/``, listing the inputs, reading and preparing
  them, the forward passes, ``predictions.csv`` (spreadsheet-safe) and the summary line;
* **plain loop**: what a user writes by hand with torch: the network built and its
  ``member_k.pt`` loaded, the inputs read with PIL / soundfile / the run's tokenizer into
  batches of ``--batch-size``, softmax averaged over the members, the predicted class kept
  in a list (no CSV).

Both read the same 10,000 inputs (the real files cycled: a manifest / a CSV of texts) with
``torch.set_num_threads(1)``. Cases (``--cases``): ``image`` (``cifar10-subset`` JPEGs,
SmallCNN width 32, one network, as a student), ``image_ens`` (the same, the K=5 replicas),
``audio`` (``fsdd-3speakers`` WAV, AudioCNN, one network), ``text`` (``agnews-4000``,
TextBoW, K=5 replicas). Needs ``../shared/data`` (``--data``).

Usage:

    python scripts/bench_predict.py [--cases image image_ens audio text] [--n 10000]
        [--repeats 3] [--data /work/shared/data] [--out scripts/results/bench_predict]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

TARGET = 1.5
CONF = Path(__file__).resolve().parent.parent / "dcloop" / "conf"


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=["logger=none", "checkpoint=false", *overrides])


def cycled(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def setup_case(case: str, data: Path, work: Path, n: int) -> dict:
    """Save the case's kept model in ``work/run`` and write its 10,000 inputs."""
    from hydra.utils import instantiate

    from dcloop.kept import save_kept_model
    from dcloop.train import _net

    run = work / "run"
    run.mkdir(parents=True)
    if case.startswith("image"):
        root = data / "cifar10-subset"
        over = ["data=folder", f"data.source.root={root / 'train'}", "data.num_workers=0"]
        over += ["model=cnn", "data.val_frac=0", "data.test_frac=0"]
        files = sorted(str(p) for p in root.rglob("*.jpg"))
        inputs = work / "inputs.csv"
        pd.DataFrame({"path": cycled(files, n)}).to_csv(inputs, index=False)
    elif case == "audio":
        root = data / "fsdd-3speakers"
        over = ["data=audio_folder", f"data.source.root={root}", "data.num_workers=0"]
        over += ["model=audio_cnn", "data.val_frac=0", "data.test_frac=0"]
        files = sorted(str(p) for p in root.rglob("*.wav"))
        inputs = work / "inputs.csv"
        pd.DataFrame({"path": cycled(files, n)}).to_csv(inputs, index=False)
    elif case == "text":
        path = data / "agnews-4000" / "agnews.csv"
        over = ["data=text_csv", f"data.source.path={path}", "model=text_bow"]
        texts = pd.read_csv(path)["text"].tolist()
        inputs = work / "inputs.csv"
        pd.DataFrame({"text": cycled(texts, n)}).to_csv(inputs, index=False)
    else:
        raise SystemExit(f"unknown case {case!r}")
    cfg = compose(f"output_dir={run}", *over)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    factory = _net(cfg, dm)
    torch.manual_seed(0)
    ensemble = case in ("image_ens", "text")
    nets = [factory() for _ in range(cfg.folds if ensemble else 1)]
    save_kept_model(
        run, cfg=cfg, dm=dm, nets=nets, kind="ensemble" if ensemble else "single",
        name="ensemble" if ensemble else "student", test_accuracy=None,
    )  # fmt: skip
    spec = json.loads((run / "model" / "model.json").read_text())
    return {"run": run, "inputs": inputs, "spec": spec, "members": len(nets)}


def dcloop_predict(setup: dict, work: Path, batch_size: int) -> tuple[float, pd.DataFrame]:
    from dcloop.kept.cli import predict_main

    out = work / "predictions.csv"
    args = [str(setup["run"]), str(setup["inputs"]), "--out", str(out)]
    start = time.perf_counter()
    predict_main([*args, "--batch-size", str(batch_size)])
    seconds = time.perf_counter() - start
    return seconds, pd.read_csv(out, dtype={"predicted": str})


def plain_loop(setup: dict, batch_size: int) -> tuple[float, list[str], list[float]]:
    """The loop a user writes by hand over the saved network (no dcloop.kept)."""
    import importlib

    from PIL import Image

    start = time.perf_counter()
    spec, mdir = setup["spec"], setup["run"] / "model"
    module, _, name = spec["net"]["_target_"].rpartition(".")
    kwargs = {k: v for k, v in spec["net"].items() if k != "_target_"}
    nets = []
    for f in spec["members"]:
        net = getattr(importlib.import_module(module), name)(**kwargs)
        net.load_state_dict(torch.load(mdir / f, weights_only=True))
        nets.append(net.eval())
    pre = spec["preprocess"]
    table = pd.read_csv(setup["inputs"])
    if pre["kind"] == "image":
        size = tuple(pre["size"])

        def read(p):
            with Image.open(p) as img:
                img = img.convert("RGB")
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
            return torch.from_numpy(arr.transpose(2, 0, 1).copy())

        rows = table["path"].tolist()
    elif pre["kind"] == "audio":
        import soundfile as sf

        t = pre["num_samples"]

        def read(p):
            x, _ = sf.read(p, dtype="float32", always_2d=True)
            x = torch.from_numpy(x.mean(1))[:t]
            return torch.nn.functional.pad(x, (0, t - x.shape[0]))[None].clamp(-1, 1)

        rows = table["path"].tolist()
    else:
        from dcloop.data.tokenize import NgramTokenizer

        tok_spec = {k: v for k, v in pre["tokenizer"].items() if k not in ("kind", "vocab")}
        tok = NgramTokenizer(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in tok_spec.items()})  # fmt: skip
        tok.itos = json.loads((mdir / "vocab.json").read_text())
        tok.stoi = {s: i for i, s in enumerate(tok.itos)}
        read = tok.encode
        rows = table["text"].tolist()
    preds: list[int] = []
    conf: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            x = torch.stack([read(r) for r in rows[i : i + batch_size]])
            probs = sum(net(x).softmax(-1) for net in nets) / len(nets)
            best = probs.max(-1)
            preds += best.indices.tolist()
            conf += best.values.tolist()
    seconds = time.perf_counter() - start
    return seconds, [spec["class_names"][k] for k in preds], conf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["image", "image_ens", "audio", "text"])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default="scripts/results/bench_predict")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = Path(a.data)
    if not data.is_dir():
        raise SystemExit(f"--data {data} does not exist (the real data of ../shared/data)")
    command = "python scripts/bench_predict.py " + shlex.join(sys.argv[1:])
    load_before = os.getloadavg()
    wall = time.perf_counter()
    rows = []
    for case in a.cases:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            setup = setup_case(case, data, work, a.n)
            times = {"dcloop": [], "plain": []}
            for r in range(a.repeats):  # alternate, so load changes hit both alike
                order = ("dcloop", "plain") if r % 2 == 0 else ("plain", "dcloop")
                for who in order:
                    if who == "dcloop":
                        s, got = dcloop_predict(setup, work, a.batch_size)
                    else:
                        s, want, want_p = plain_loop(setup, a.batch_size)
                    times[who].append(s)
            agree = float(np.mean(got["predicted"].to_numpy() == np.asarray(want)))
            diff = float(np.max(np.abs(got["probability"].to_numpy() - np.asarray(want_p))))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "case": case,
                "n": a.n,
                "members": setup["members"],
                "net": setup["spec"]["net"]["_target_"],
                "preprocess": setup["spec"]["preprocess"]["kind"],
                "dcloop_s": times["dcloop"],
                "plain_s": times["plain"],
                "dcloop_median_s": med["dcloop"],
                "plain_median_s": med["plain"],
                "ratio": med["dcloop"] / med["plain"],
                "same_predictions": agree,
                "max_prob_diff": diff,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "command": command,
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - wall,
        "batch_size": a.batch_size,
        "repeats": a.repeats,
        "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    la, lb = r["load_before"], r["load_after"]
    lines = [
        "# dcloop-predict vs a plain torch loop over the same saved network",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Target (issue 21): dcloop-predict within {TARGET}x of the plain loop. Each case: a "
        "kept model saved by `save_kept_model` (fresh weights: only time is measured), "
        f"{r['rows'][0]['n'] if r['rows'] else 0:,} inputs (the real files / texts of "
        "`../shared/data`, cycled), batch size "
        f"{r['batch_size']}, `torch.set_num_threads(1)`, {r['repeats']} alternating repeats, "
        "median seconds. dcloop-predict = `predict_main` in process: model load, input "
        "listing, reading and preparing, forward, predictions.csv and the summary line. Plain "
        "loop = the network built and its weights loaded by hand, inputs read with PIL / "
        "soundfile / the run's tokenizer, softmax averaged, predicted classes in a list (no "
        "CSV). *same* = share of inputs both predict the same class; *max abs diff* = largest "
        "difference of the predicted class's probability (fresh weights give most inputs "
        "one class, so the probabilities are the sharper check).",
        "",
        f"Machine: {r['machine']}; torch {r['torch']}. Load average before "
        f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, after {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}. "
        f"Wall {r['wall_s']:.0f} s. On this shared CPU read seconds as +-20 % and compare "
        "the ratio.",
        "",
        "| case | inputs | network | members | dcloop-predict (s) | plain loop (s) | ratio | "
        f"≤ {TARGET}x? | same | max abs diff |",
        "|---|---|---|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['case']} | {row['n']:,} {row['preprocess']} | {row['net']} | "
            f"{row['members']} | {row['dcloop_median_s']:.1f} | {row['plain_median_s']:.1f} | "
            f"{row['ratio']:.2f}x | {'yes' if row['ratio'] <= TARGET else 'no'} | "
            f"{row['same_predictions']:.1%} | {row['max_prob_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
