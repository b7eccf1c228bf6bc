"""What a dcloop run costs against one plain training run, lever by lever (issue 21 item 3).

Every figure is process CPU seconds (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``),
not wall: the shared machine is loaded by other work. Each measurement runs in its own
spawned process (``--jobs`` at once).

Part ``step``: one training step (forward, loss, backward, AdamW step) of K fold replicas
against one plain network's step, on random inputs of the real data's shapes:

* ``SmallCNN`` (width 8, the CPU recipe of ``bench_real``) on 3x32x32 images (CIFAR size),
  batch 64;
* ``AudioCNN`` (``dcloop.models.audio``, the ``audio_cnn`` config) on 8 kHz 1 s clips, batch 64;
* ``TextBoW`` (dim 32, vocabulary 8,000, 128 token ids, the AG News recipe of ``bench_text``),
  batch 128.

Modes of ``FoldEnsemble`` (same replicas, same batch):

* ``vmap``: ``torch.func.vmap`` over the stacked replicas, every replica on every row, the
  held-out fold masked in the loss (``fold_masked_loss``): the old default everywhere;
* ``loop_mask``: a loop over replicas, every replica on every row, masked in the loss (the old
  ``vectorize=loop``);
* ``loop_skip``: the loop where replica k runs only the rows it trains on
  (``FoldEnsemble._loop_loss``; today's ``vectorize=auto`` on CPU);
* ``plain``: one network, cross-entropy on the whole batch.

Per epoch = per step x ceil(N / batch) for the named training-set size N.

Part ``runs``: whole ``dcloop.train.train`` runs against one plain run (``bench_noise``'s
``run_baseline``: one ``Classifier``, same network, recipe and epochs) on digits (the embedded
default data, its default noise: symmetric 20 %) and on AG News
(``../shared/data/agnews-4000``, ``bench_text``'s recipe, symmetric 20 %, 20 epochs):

* ``default``: the shipped defaults (``kept=student``: K = 5 replicas for ``replica_epochs``
  of the epochs, 1.0 since commit add74c1, looped with skipping on CPU, and since
  ``replica_stop`` (``bench_cost_stop.md``) only until their verdict holds; then one student
  for all the epochs);
* ``nostop``: the default with ``replica_stop.stable=null`` (the replicas run their schedule
  out: the default before ``replica_stop``);
* ``student_re04``: the default with ``replica_epochs=0.4`` (the student lever: the replicas
  stop at 40 % of the schedule);
* ``default_k3``: the same with ``folds=3``;
* ``default_vmap``: the default with ``model.vectorize=vmap`` (the vectorize lever alone);
* ``ensemble_loop``: ``kept=ensemble`` (the K replicas for all epochs, looped with skipping):
  the student lever alone;
* ``old_default``: ``kept=ensemble model.vectorize=vmap``: the default before issue 21;
* ``k3_re06``, ``k3_re05``: ``folds=3`` with ``replica_epochs`` 0.6 or 0.5 (both levers);
* ``stop95``, ``stop90``, ``stop95_p2``: ``replica_stop`` at Jaccard 0.95 (the default), 0.9,
  and 0.95 with 2 steps in a row instead of 3;
* ``replica_half``: the default with fold replicas half as wide as the kept student
  (``model.replica_net``: SmallCNN width 16 of 32 on digits, TextBoW dim 16 of the recipe's 32
  on AG News); ``replica_quarter``: a quarter as wide (width 8, dim 8);
* ``plain``.

Reported: CPU seconds and their ratio to plain (same dataset and seed), the kept model's test
accuracy (``metrics.json`` ``kept.test_accuracy``) and detection F1 (``detection.f1``),
mean +- sd over the seeds; the run's own estimate (``cost.cpu_ratio``, from its student phase)
beside the measured ratio. Results are rewritten after every finished task.

``--merge`` keeps the rows of other commands already in ``--out``'s JSON (re-read at every
write) and lists every command.

Example::

    python scripts/bench_cost.py --jobs 2                          # the committed results
    python scripts/bench_cost.py --parts step --steps 3 --repeats 1 --out /tmp/bc  # smoke
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_loop_overhead import _threads, cpu_name  # noqa: E402

#: name -> (batch, training rows of the real data set it stands for, classes)
NETS = {
    "SmallCNN 3x32x32": (64, 4500, 10),  # cifar10-subset train, val_frac 0.1 (bench_real)
    "AudioCNN 8 kHz 1 s": (64, 1200, 10),  # FSDD recordings 10-49 (bench_real's split)
    "TextBoW 128 ids": (128, 2600, 4),  # agnews-4000 train split (bench_text)
}
MODES = ("plain", "vmap", "loop_mask", "loop_skip")
METHODS = (
    *("plain", "default", "default_k3", "default_vmap", "student_re04", "ensemble_loop"),
    *("old_default", "k3_re06", "k3_re05", "replica_half", "replica_quarter"),
    *("nostop", "stop95", "stop90", "stop95_p2"),
)
METHOD_OVERRIDES = {
    "default": [],
    "default_k3": ["folds=3"],
    "default_vmap": ["model.vectorize=vmap"],
    "student_re04": ["replica_epochs=0.4"],
    "ensemble_loop": ["kept=ensemble"],
    "old_default": ["kept=ensemble", "model.vectorize=vmap"],
    "k3_re06": ["folds=3", "replica_epochs=0.6"],
    "k3_re05": ["folds=3", "replica_epochs=0.5"],
    "nostop": ["replica_stop.stable=null"],
    "stop95": ["replica_stop.stable=0.95", "replica_stop.patience=3"],
    "stop90": ["replica_stop.stable=0.9", "replica_stop.patience=3"],
    "stop95_p2": ["replica_stop.stable=0.95", "replica_stop.patience=2"],
}
#: Overrides that name a size key of the data's network (SmallCNN width, TextBoW dim).
DATA_METHOD_OVERRIDES = {
    "replica_half": {
        "digits": ["model.replica_net.width=16"],
        "agnews": ["model.replica_net.dim=16"],
    },
    "replica_quarter": {
        "digits": ["model.replica_net.width=8"],
        "agnews": ["model.replica_net.dim=8"],
    },
}
NAMES = {
    "plain": "plain (1 network)",
    "default": "default (K=5 replicas until their verdict holds, loop+skip; then the student, "
    "kept)",
    "nostop": "default without replica_stop (K=5 replicas all epochs; then the student)",
    "default_k3": "default, folds=3",
    "default_vmap": "default, vectorize=vmap",
    "student_re04": "default, replica_epochs=0.4 (replicas 40 % of the epochs; student kept)",
    "ensemble_loop": "kept=ensemble (K=5 all epochs, loop+skip)",
    "old_default": "old default (kept=ensemble, K=5 all epochs, vmap)",
    "k3_re06": "default, folds=3, replica_epochs=0.6",
    "k3_re05": "default, folds=3, replica_epochs=0.5",
    "replica_half": "default, replicas half as wide (model.replica_net: SmallCNN width 16 of 32, "
    "TextBoW dim 16 of 32)",
    "replica_quarter": "default, replicas a quarter as wide (SmallCNN width 8 of 32, TextBoW dim "
    "8 of 32)",
    "stop95": "default, replicas stop once the flags hold (replica_stop: Jaccard >= 0.95, 3 steps)",
    "stop90": "default, replicas stop once the flags hold (replica_stop: Jaccard >= 0.9, 3 steps)",
    "stop95_p2": "default, replicas stop once the flags hold (replica_stop: Jaccard >= 0.95, 2 "
    "steps)",
}
LABEL_SMOOTHING = 0.1  # the model configs'


# ------------------------------------------------------------------------------ part 1: step
def _factory(name: str):
    from functools import partial

    from dcloop.models import SmallCNN, TextBoW
    from dcloop.models.audio import AudioCNN

    if name.startswith("SmallCNN"):
        return partial(SmallCNN, 3, 10, width=8)
    if name.startswith("AudioCNN"):
        return partial(AudioCNN, 1, 10, sample_rate=8000, n_mels=32, n_fft=256, hop_length=192)
    return partial(TextBoW, vocab_size=8000, num_classes=4, dim=32, dropout=0.5)


def _batch(name: str, b: int, g):
    import torch

    if name.startswith("SmallCNN"):
        return torch.randn(b, 3, 32, 32, generator=g)
    if name.startswith("AudioCNN"):
        return 0.1 * torch.randn(b, 1, 8000, generator=g)
    ids = torch.randint(1, 8000, (b, 128), generator=g)
    ids[:, 96:] = 0  # padding, as short texts have
    return ids


def step_costs(name: str, k: int, steps: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """CPU seconds per training step of each mode, interleaved repeats, in this process."""
    _threads()
    import torch
    import torch.nn.functional as F

    from dcloop.models import FoldEnsemble, fold_masked_loss

    b, n_train, c = NETS[name]
    n = 4 * b
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % c
    xs = [_batch(name, b, g) for _ in range(4)]
    idx = [torch.randperm(n, generator=g)[:b] for _ in range(4)]
    factory = _factory(name)
    ens = FoldEnsemble(
        factory, labels.numpy(), num_folds=k, num_classes=c, seed=seed,
        label_smoothing=LABEL_SMOOTHING, vectorize="vmap",
    )  # fmt: skip
    ens.train()
    torch.manual_seed(seed)
    net = factory().train()
    opts = {
        "plain": torch.optim.AdamW(net.parameters(), lr=1e-3),
        "ens": torch.optim.AdamW(ens.replica_params.parameters(), lr=1e-3),
    }
    s = ens.samples

    def loss_of(mode: str, x, index):
        if mode == "plain":
            return F.cross_entropy(net(x), s.labels[index], label_smoothing=LABEL_SMOOTHING)
        args = (s.labels[index], s.folds[index], s.weights[index])
        if mode == "loop_skip":
            ens._mode = "loop"
            return ens._loop_loss(x, *args)[0]
        ens._mode = "loop" if mode == "loop_mask" else "vmap"
        return fold_masked_loss(ens(x), *args, label_smoothing=LABEL_SMOOTHING)[0]

    def run(mode: str, count: int) -> float:
        opt = opts["plain" if mode == "plain" else "ens"]
        t = time.process_time()
        for i in range(count):
            loss = loss_of(mode, xs[i % 4], idx[i % 4])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.process_time() - t) / count

    for mode in MODES:  # warm-up (vmap's first call traces)
        run(mode, 2)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(repeats):
        for mode in MODES:
            times[mode].append(run(mode, steps))
    per_step = {m: statistics.median(v) for m, v in times.items()}
    epoch_steps = math.ceil(n_train / b)
    return {
        "net": name,
        "folds": k,
        "batch": b,
        "epoch_rows": n_train,
        "epoch_steps": epoch_steps,
        "steps": steps,
        "repeats": repeats,
        "step_s": per_step,
        "step_s_all": times,
        "epoch_s": {m: v * epoch_steps for m, v in per_step.items()},
        "ratio_to_plain": {m: v / per_step["plain"] for m, v in per_step.items()},
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------ part 2: runs
def data_overrides(dataset: str) -> list[str]:
    if dataset == "agnews":
        import bench_text

        return bench_text.data_overrides("agnews", "sym20", 20)
    return []  # digits: the embedded default data and noise


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One whole run (dataset, seed, method) in this fresh process; its CPU seconds."""
    _threads()
    import bench_noise as bn
    from bench_real import compose

    bn.quiet()
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    method = task["method"]
    extra = data_overrides(task["dataset"]) + METHOD_OVERRIDES.get(method, [])
    extra += DATA_METHOD_OVERRIDES.get(method, {}).get(task["dataset"], [])
    cfg = compose(run_dir, task["seed"], extra)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out: dict[str, Any] = {}
    if method == "plain":
        out["acc"] = bn.run_baseline(cfg, run_dir)["acc"]
    else:
        from dcloop.train import train

        with contextlib.redirect_stdout(io.StringIO()):
            m = train(cfg)
        kept = m.get("kept") or {}
        out["acc"] = kept.get("test_accuracy", m["test"]["accuracy"])
        out["kept"] = kept.get("model")
        out["f1"] = (m.get("detection") or {}).get("f1")
        out["cost"] = m.get("cost")
        out["replica_epochs"] = float(cfg.get("replica_epochs", 1.0))
    out["cpu_s"] = time.process_time() - cpu0
    out["wall_s"] = time.perf_counter() - wall0
    return {**{k: task[k] for k in ("dataset", "seed", "method")}, **out}


# ------------------------------------------------------------------------------ report
def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def step_table(rows: list[dict]) -> list[str]:
    out = [
        "| net | K | batch | plain ms/step | vmap | loop, masked | loop, skip (default) | "
        "vmap / plain | loop masked / plain | loop skip / plain | skip / masked | "
        "epoch s (N rows): plain / vmap / skip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (list(NETS).index(r["net"]), -r["folds"])):
        s, q, e = r["step_s"], r["ratio_to_plain"], r["epoch_s"]
        out.append(
            f"| {r['net']} | {r['folds']} | {r['batch']} | {_ms(s['plain'])} | {_ms(s['vmap'])} | "
            f"{_ms(s['loop_mask'])} | {_ms(s['loop_skip'])} | {q['vmap']:.2f}x | "
            f"{q['loop_mask']:.2f}x | {q['loop_skip']:.2f}x | "
            f"{s['loop_skip'] / s['loop_mask']:.2f} | "
            f"{e['plain']:.1f} / {e['vmap']:.1f} / {e['loop_skip']:.1f} ({r['epoch_rows']}) |"
        )
    return out


def _mean_sd(values: list[float]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def summarize(runs: list[dict]) -> list[dict]:
    plain = {(r["dataset"], r["seed"]): r["cpu_s"] for r in runs if r["method"] == "plain"}
    rows = []
    for ds in ("digits", "agnews"):
        for method in METHODS:
            mine = [r for r in runs if r["dataset"] == ds and r["method"] == method]
            if not mine:
                continue
            ratios = [r["cpu_s"] / plain[(ds, r["seed"])] for r in mine if (ds, r["seed"]) in plain]
            est = [(r.get("cost") or {}).get("cpu_ratio") for r in mine]
            rows.append(
                {
                    "dataset": ds,
                    "method": method,
                    "seeds": sorted(r["seed"] for r in mine),
                    "cpu_s": statistics.mean(r["cpu_s"] for r in mine),
                    "ratios": ratios,
                    "ratio": statistics.mean(ratios) if ratios else None,
                    "acc": [r["acc"] for r in mine],
                    "f1": [r.get("f1") for r in mine],
                    "est_ratio": [e for e in est if e is not None],
                }
            )
    return rows


def runs_table(rows: list[dict]) -> list[str]:
    out = [
        "| data | run | seeds | CPU s (mean) | ratio to plain (per seed) | run's own estimate | "
        "kept test accuracy | detection F1 |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            "–"
            if r["ratio"] is None
            else f"**{r['ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
        )
        est = ", ".join(f"{x:.2f}x" for x in r["est_ratio"]) or "–"
        out.append(
            f"| {r['dataset']} | {NAMES[r['method']]} | {','.join(map(str, r['seeds']))} | "
            f"{r['cpu_s']:.1f} | {ratio} | {est} | {_mean_sd(r['acc'])} | {_mean_sd(r['f1'])} |"
        )
    return out


def _merged(out: Path, meta: dict, steps: list[dict], runs: list[dict]):
    """``(steps, runs, commands)``: this command's rows and the other commands' rows in
    ``out``'s JSON (each row carries its command; rows without one are the file's own)."""
    for r in (*steps, *runs):
        r.setdefault("command", meta["command"])
    path = out.with_suffix(".json")
    if not meta.get("merge") or not path.exists():
        return steps, runs, [meta["command"]]
    old = json.loads(path.read_text())
    own = old["meta"]["command"]
    for r in (*old["steps"], *old["runs"]):  # tag them, or the next write takes them for ours
        r.setdefault("command", own)
    cmds = [c for c in old["meta"].get("commands", [own]) if c != meta["command"]]
    kept_steps = [r for r in old["steps"] if r.get("command", own) != meta["command"]]
    kept_runs = [r for r in old["runs"] if r.get("command", own) != meta["command"]]
    return kept_steps + steps, kept_runs + runs, [*cmds, meta["command"]]


def write(out: Path, meta: dict, steps: list[dict], runs: list[dict]) -> None:
    steps, runs, commands = _merged(out, meta, steps, runs)
    meta = {
        **meta,
        "commands": commands,
        "load_now": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    summary = summarize(runs)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "steps": steps, "runs": runs, "summary": summary}, indent=2)
        + "\n"
    )
    text = [
        "# Cost of a dcloop run against one plain training run, lever by lever",
        "",
        "Commands (the rows of each are marked in the JSON):",
        "",
        *(f"- `{c}`" for c in meta["commands"]),
        "",
        f"CPU: {meta['cpu']} ({meta['cpus']} cores, shared with other work: load average "
        f"{meta['load_before']} at the start, {meta['load_now']} at the last write), "
        f"torch {meta['torch']}, one spawned process per measurement with "
        f"`torch.set_num_threads(1)`, {meta['jobs']} at once. All times are process CPU "
        f"seconds (`time.process_time`), not wall. Started {meta['started']}.",
    ]
    if steps:
        text += [
            "",
            "## Per training step: K fold replicas against one plain network",
            "",
            f"Random inputs of the real shapes; forward + loss + backward + AdamW step; median "
            f"over {steps[0]['repeats']} interleaved repeats of {steps[0]['steps']} steps "
            "(after 2 warm-up steps per mode). *loop, masked*: every replica on every row, the "
            "held-out fold masked in the loss (before issue 21); *loop, skip*: replica k runs "
            "only the rows it trains on (today's `vectorize=auto` on CPU). Epoch = step x "
            "ceil(N / batch) for the N training rows of the data set each shape stands for "
            "(CIFAR subset, FSDD, AG News).",
            "",
            *step_table(steps),
        ]
    if runs:
        text += [
            "",
            "## Whole runs",
            "",
            "digits: the embedded default data and noise (symmetric 20 %), 30 epochs, SmallCNN "
            "width 32; AG News: `agnews-4000`, symmetric 20 %, TextBoW, 20 epochs (`bench_text`'s "
            "recipe). Every run composes the shipped config with `logger=none checkpoint=false "
            "report=false` (`bench_real.compose`); the dcloop runs keep the other defaults "
            "(data health on). CPU seconds of `train(cfg)` (or of the plain fit) in a fresh "
            "process, data loading included. Ratio: to the plain run of the same data and seed. "
            "*run's own estimate*: `metrics.json` `cost.cpu_ratio` (whole run over its student "
            "phase). Accuracy: the kept model's (`kept.test_accuracy`; plain: its own test "
            "accuracy); F1: `detection.f1` against the injected noise. mean ± sd over seeds.",
            "",
            *runs_table(summary),
        ]
    out.with_suffix(".md").write_text("\n".join(text) + "\n")


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["step", "runs"], choices=["step", "runs"])
    p.add_argument("--folds", type=int, nargs="+", default=[5, 3], help="K of the step part")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--datasets", nargs="+", default=["digits", "agnews"])
    p.add_argument(
        "--methods",
        nargs="+",
        default=[
            m
            for m in METHODS
            if m not in ("default_vmap", "k3_re06", "k3_re05", "replica_half", "replica_quarter")
        ],
        choices=METHODS,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="scripts/results/bench_cost")
    p.add_argument("--merge", action="store_true", help="keep other commands' rows in --out")
    args = p.parse_args(argv)
    for ds in args.datasets:
        if ds not in ("digits", "agnews"):
            raise SystemExit(f"--datasets: {ds!r} is not one of digits, agnews")
    import torch

    meta = {
        "command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "jobs": args.jobs,
        "merge": args.merge,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench_cost_"))
    spawn = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(args.jobs, mp_context=spawn, max_tasks_per_child=1) as pool:
        futures = {}
        if "step" in args.parts:
            for name in NETS:
                for k in args.folds:
                    f = pool.submit(step_costs, name, k, args.steps, args.repeats)
                    futures[f] = "step"
        if "runs" in args.parts:  # seed by seed, the longest runs first
            order = ["old_default", "ensemble_loop", "default_vmap", "default", "student_re04"]
            methods = sorted(args.methods, key=lambda m: order.index(m) if m in order else 9)
            for seed in args.seeds:
                for ds in args.datasets:
                    for method in methods:
                        task = {
                            "dataset": ds,
                            "seed": seed,
                            "method": method,
                            "run_dir": str(work / f"{ds}_{seed}_{method}"),
                        }
                        futures[pool.submit(run_task, task)] = "runs"
        for f in cf.as_completed(futures):
            (steps if futures[f] == "step" else runs).append(f.result())
            write(out, meta, steps, runs)
            print(f"{len(steps) + len(runs)}/{len(futures)} done", flush=True)
    write(out, meta, steps, runs)
    sys.stdout.write(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
