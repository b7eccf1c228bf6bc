"""Benchmark dcloop's confident-learning engine against cleanlab (time, peak memory, same mask).

Each (case, engine) runs in its own subprocess so that peak memory is measured per engine:
the worker builds the data, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
runs the engine once, and reports wall time, peak RSS (``VmHWM``) and the peak above the
data-loaded baseline. The parent compares the masks and writes a Markdown table (+ JSON).

Cases: seeded synthetic matrices (``--sizes NxK,...``; float32, and float16 for dcloop with
``--half``) and the four real label-errors sets (``--real``), on which it also reports precision
and recall of every ``filter_by`` against the human-confirmed label errors.

Examples::

    # CPU, everything (what scripts/results/bench_cl_engine.md was made with)
    python scripts/bench_cl_engine.py --half
    # only the multi-label row, keeping the other sections of the committed results
    python scripts/bench_cl_engine.py --sizes '' --no-real --multilabel 100000x100 \
        --label multi-label --merge scripts/results/bench_cl_engine.json
    # GPU check: synthetic sizes only, dcloop on CUDA (cleanlab still runs on the host)
    python scripts/bench_cl_engine.py --device cuda --sizes 1281167x1000,100000x100 --no-real \\
        --out scripts/results/bench_cl_engine_cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("DCLOOP_LABEL_ERRORS", "/work/shared/data/label-errors"))
REAL_SETS = ("mnist", "cifar10", "20news", "imdb")
FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
)
GB = 1024**3


# ----------------------------------------------------------------------------------- data


def synthetic(n: int, k: int, seed: int = 0, rows: int = 16384):
    """Seeded ``(labels, pred_probs)`` like an ImageNet model: 10 % uniform label noise,
    a true-class logit boost of U(4, 11) on N(0, 1) logits and a confusable neighbour class.
    Generated in row chunks on the CPU (same data on every machine), float32."""
    import torch

    probs = torch.empty(n, k)
    labels = torch.empty(n, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        m, ar = e - s, torch.arange(e - s)
        y = torch.randint(0, k, (m,), generator=gen)
        logits = torch.randn(m, k, generator=gen)
        logits[ar, y] += 4 + 7 * torch.rand(m, generator=gen)
        logits[ar, (y + 1) % k] += 6 * torch.rand(m, generator=gen)
        torch.softmax(logits, 1, out=probs[s:e])
        flip = torch.rand(m, generator=gen) < 0.1
        labels[s:e] = torch.where(flip, torch.randint(0, k, (m,), generator=gen), y)
    return labels, probs


def multilabel_synthetic(n: int, k: int, seed: int = 0, rows: int = 16384):
    """Seeded multi-label ``(labels, pred_probs)`` in cleanlab's format: each row has each
    class with probability 3/K (about 3 labels), per-class sigmoid probabilities with a logit
    boost of U(3, 8) on the true classes, and 0.5 % of the (row, class) entries flipped in the
    given labels. ``labels`` is a list of N lists; ``pred_probs`` float32 ``(N, K)``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    probs = torch.empty(n, k)
    labels: list[list[int]] = []
    for s in range(0, n, rows):
        m = min(n, s + rows) - s
        truth = torch.rand(m, k, generator=gen) < 3.0 / k
        logits = (
            torch.randn(m, k, generator=gen) - 3 + truth * (3 + 5 * torch.rand(m, k, generator=gen))
        )
        torch.sigmoid(logits, out=probs[s : s + m])
        given = (truth ^ (torch.rand(m, k, generator=gen) < 0.005)).numpy()
        labels += [np.flatnonzero(row).tolist() for row in given]
    return labels, probs


def real_set(name: str):
    """``(labels int64, pred_probs float64 renormalised)`` of a label-errors set."""
    probs = np.load(DATA_DIR / f"{name}_pred_probs.npy").astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)  # quantised rows do not sum exactly to 1
    labels = np.load(DATA_DIR / f"{name}_given_labels.npy").astype(np.int64)
    return labels, probs


def confirmed_errors(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, confirmed)`` boolean masks from the Mechanical Turk votes."""
    votes = json.loads((DATA_DIR / f"{name}_mturk.json").read_text())
    if name == "imdb":
        files = json.loads((DATA_DIR / "imdb_index_to_filename.json").read_text())
        row_of = {f: i for i, f in enumerate(files)}
        rows = [row_of[v["id"].removeprefix("test/") + ".txt"] for v in votes]
    else:
        rows = [int(v["id"]) for v in votes]
    cand, conf = np.zeros(n, bool), np.zeros(n, bool)
    cand[rows] = True
    conf[[r for r, v in zip(rows, votes, strict=True) if v["mturk"]["given"] < 3]] = True
    return cand, conf


# --------------------------------------------------------------------------------- worker


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import resource

    import torch

    multi = spec["case"].startswith("ml:")
    ml_labels, kw = None, {"multi_label": True} if multi else {}
    if spec["case"].startswith("real:"):
        labels, probs = real_set(spec["case"][5:])
        labels_t, probs_t = torch.from_numpy(labels), torch.from_numpy(probs)
    elif multi:
        n, k = (int(v) for v in spec["case"][3:].split("x"))
        ml_labels, probs_t = multilabel_synthetic(n, k, spec["seed"])
        labels_t = torch.zeros(0, dtype=torch.int64)  # placeholder: the labels are lists
    else:
        n, k = (int(v) for v in spec["case"].split("x"))
        labels_t, probs_t = synthetic(n, k, spec["seed"])
        if spec["dtype"] == "float16":
            probs_t = probs_t.half()
            if spec["engine"] == "cleanlab":  # reference semantics: cleanlab on the upcast data
                probs_t = probs_t.float()
    device = spec["device"] if spec["engine"] == "dcloop" else "cpu"
    labels_t, probs_t = labels_t.to(device), probs_t.to(device)
    input_bytes = probs_t.numel() * probs_t.element_size() + labels_t.numel() * 8
    fb = spec["filter_by"]
    numpy_in = spec.get("input") == "numpy" and spec["engine"] == "dcloop" and device == "cpu"
    if numpy_in:  # the caller's arrays as numpy (shared memory, no copy)
        labels_t, probs_t = labels_t.numpy(), probs_t.numpy()
    if spec["engine"] == "cleanlab":
        from cleanlab.filter import find_label_issues as cl_find

        labels_np, probs_np = ml_labels or labels_t.numpy(), probs_t.numpy()
        run = lambda: cl_find(labels_np, probs_np, filter_by=fb, **kw)  # noqa: E731
        sync = lambda: None  # noqa: E731
    else:
        from dcloop.cl import find_label_issues

        labels_in = ml_labels or labels_t
        run = lambda: find_label_issues(labels_in, probs_t, filter_by=fb, **kw)  # noqa: E731
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        warm = torch.zeros(64, 4, device=device).add_(0.25)  # kernels / lazy init, tiny input
        t0 = time.perf_counter()  # on the host: numba import and kernel load (or compile)
        find_label_issues(torch.arange(64, device=device) % 4, warm)
        if device == "cpu":  # the tiny call runs the torch code: load the kernels explicitly
            from dcloop.cl._inputs import _kernels_importable

            _kernels_importable()
        sync()
        warmup = time.perf_counter() - t0
    first = None
    if device.startswith("cuda"):  # report the warm call; the first call is reported too
        t0 = time.perf_counter()
        run()
        sync()
        first = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
    gpu_base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    walls, cpus = [], []
    for _ in range(spec.get("repeat", 1)):  # the fastest of the repeats is reported
        t0, c0 = time.perf_counter(), time.process_time()
        mask = run()
        sync()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    wall, cpu = min(walls), cpus[walls.index(min(walls))]
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    peak_kb = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(spec["mask_path"], mask)
    if spec["engine"] == "dcloop":  # untimed: the bit-exact tie mode, for the parity column
        exact = find_label_issues(labels_in, probs_t, filter_by=fb, ties="cleanlab", **kw)
        exact = exact.cpu().numpy() if isinstance(exact, torch.Tensor) else exact
        np.save(spec["mask_path"].replace(".npy", "_exact.npy"), exact)
    out = {
        **spec,
        "wall_s": wall,
        "walls_s": walls,
        "cpus_s": cpus,
        "cpu_s": cpu,  # this process only (cleanlab's pool children not included)
        "warmup_s": warmup if spec["engine"] == "dcloop" else None,
        "input": "numpy" if numpy_in or spec["engine"] == "cleanlab" else "torch",
        "first_call_s": first,
        "flagged": int(mask.sum()),
        "input_gb": input_bytes / GB,
        "baseline_rss_gb": base_kb / 1024**2,
        "peak_rss_gb": peak_kb / 1024**2,
        "peak_over_baseline_gb": (peak_kb - base_kb) / 1024**2,
        "children_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2,
        "peak_reset": reset,
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["gpu_peak_over_data_gb"] = (torch.cuda.max_memory_allocated() - gpu_base) / GB
        out["gpu"] = torch.cuda.get_device_name()
    return out


def phases_worker(spec: dict) -> dict:
    """Wall / CPU seconds of each phase of one ``prune_by_noise_rate`` call (dcloop, host)."""
    import torch

    from dcloop.cl import _inputs, _kxk, _prune, count, find_label_issues

    n, k = (int(v) for v in spec["case"].split("x"))
    labels_t, probs_t = synthetic(n, k, spec["seed"])
    labels, probs = labels_t.numpy(), probs_t.numpy()
    find_label_issues(np.arange(64) % 4, np.full((64, 4), 0.25, np.float32))  # imports, kernels
    torch.set_num_threads(_inputs.CPU_THREADS)
    out = []

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        out.append(
            {"phase": name, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        )
        return value

    with torch.no_grad():
        inp = timed(
            "labels check, layout",
            lambda: _inputs.prepare_inputs(labels, probs, check_probs=False),
        )
        s = timed("pass 1: validation + thresholds + confident counts", lambda: count.scan(inp))
        cj = timed(
            "calibrated confident joint (K x K)", lambda: count.confident_joint_from_scan(inp, s)
        )
        pcm = timed(
            "prune count matrix (K x K)",
            lambda: _kxk.prune_count_matrix(
                cj, s.label_counts, min_examples_per_class=1, frac_noise=1.0,
                num_to_remove_per_class=None,
            ),
        )  # fmt: skip
        mask = timed(
            "pass 2: noise-rate pruning", lambda: _prune.prune_by_noise_rate(inp, s, pcm, 1)
        )
        timed("final mask", lambda: mask & ~s.near_given)
    t0, c0 = time.perf_counter(), time.process_time()
    find_label_issues(labels, probs)
    out.append(
        {
            "phase": "whole call",
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
        }
    )
    return {"case": spec["case"], "phases": out, "load": os.getloadavg()[0]}


# --------------------------------------------------------------------------------- parent


def run_worker(spec: dict, mode: str = "--worker") -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as res:
        spec = {**spec, "result_path": res.name}
        cmd = [sys.executable, __file__, mode, json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-4000:]}")
        return json.loads(Path(res.name).read_text())


def precision_recall() -> list[dict]:
    from dcloop.cl import find_label_issues

    rows = []
    for name in REAL_SETS:
        labels, probs = real_set(name)
        cand, conf = confirmed_errors(name, len(labels))
        for fb in FILTERS:
            mask = find_label_issues(labels, probs, filter_by=fb)
            hit = int((mask & conf).sum())
            checked = int((mask & cand).sum())
            rows.append(
                {
                    "set": name,
                    "filter_by": fb,
                    "flagged": int(mask.sum()),
                    "flagged_candidates": checked,
                    "confirmed_found": hit,
                    "confirmed_total": int(conf.sum()),
                    "precision": hit / checked if checked else float("nan"),
                    "recall": hit / int(conf.sum()),
                }
            )
    return rows


def _gb(x: float) -> str:
    return f"{x:.2f} GB" if x >= 0.095 else f"{x * 1024:.0f} MB"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def run_meta(args, load: tuple) -> dict:
    import torch

    meta = {
        "command": "python scripts/bench_cl_engine.py " + " ".join(sys.argv[1:]),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cleanlab": __import__("cleanlab").__version__,
        "device": args.device,
        "first_size": args.sizes.split(",")[0] if args.sizes else None,
        "load": list(load),
        "commit": _git_commit(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "label": args.label,
        "note": args.note,
    }
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return meta


NOTES = [
    "Every engine call runs in a fresh process. *time*: wall time of one `find_label_issues` "
    "call on data already in memory (on a GPU: already on the device; the first, cold call in "
    "brackets). *peak RSS*: the process's resident-memory high-water mark during the call, "
    "reset once the data was built; *working*: peak RSS minus the RSS with the data loaded "
    "(the extra memory the call needed). cleanlab runs on the host with its default `n_jobs` "
    "(forked pool; children's RSS in the JSON). float16 rows: dcloop gets the float16 matrix, "
    "cleanlab the same values upcast to float32 (dcloop's reference semantics). Before the timed "
    "call each dcloop worker makes one call on a tiny input, which on the host imports numba and "
    "loads (or, the first time after a change, compiles) the engine's kernels; its time is "
    "reported separately (`warmup_s` in the JSON).  ",
    '*same mask*: dcloop default (ties broken by row index) / `ties="cleanlab"` (replays '
    "cleanlab's own tie order), each compared with cleanlab's mask; differences are examples "
    "tied at a pruning cut-off.  ",
    "*ml:NxK* rows: multi-label (`multi_label=True`, labels as lists of classes; "
    "`multilabel_synthetic` in the script: about 3 labels per row, 0.5 % of the (row, class) "
    "entries flipped), float32; both engines get the same list and matrix.",
]


#: Phases of the same call before the two-pass engine (commit c85eb9d, same seeded matrix,
#: numpy input, measured on this 2-core host on 2026-12-01 with a load average of ~5).
PHASES_BEFORE = [
    "Before the two-pass engine (commit `c85eb9d`, same matrix and host, load average ~5): "
    "validation pass 2.81 s wall / 1.37 s CPU, scan pass (thresholds, confident guesses, argmax) "
    "8.15 / 4.00, confident joint 0.39 / 0.20, prune count matrix 0.07 / 0.04, noise-rate "
    "pruning pass (rows gathered class by class) 7.54 / 3.76; whole call 11.9 s wall / 7.4 s "
    "CPU: three full reads of the 5.1 GB matrix plus copies. Now: one read fused with the "
    "validation (pass 1) and a second read in row order that skips the ~82% of rows whose "
    "bound shows they cannot enter a pruning line (pass 2).",
]


def _mask_verdict(n_diff: int, n_diff_exact: int) -> str:
    if n_diff == 0 and n_diff_exact == 0:
        return "identical"
    exact = "identical" if n_diff_exact == 0 else f"{n_diff_exact} differ"
    return f'{n_diff} tied example(s) differ by default; with `ties="cleanlab"`: {exact}'


def _section(run: dict) -> list[str]:
    meta, rows = run["meta"], run["results"]
    where = f"`{meta['device']}`" + (f" ({meta['gpu']})" if meta.get("gpu") else "")
    inputs = sorted({r["dcloop"].get("input", "torch") for r in rows if r.get("dcloop")})
    commit = f" at commit `{meta['commit']}`" if meta.get("commit") else ""
    lines = [
        f"Command: `{meta['command']}`{commit}  ",
        f"Host: {meta['cpu_cores']} CPU cores ({meta['machine']}), torch {meta['torch']}, numpy "
        f"{meta['numpy']}, cleanlab {meta['cleanlab']}; dcloop on {where} with its default "
        f"settings, {' / '.join(inputs)} input"
        + (f", OMP_NUM_THREADS={meta['omp_num_threads']}" if meta.get("omp_num_threads") else "")
        + f". Load average before / after: {meta['load'][0]:.2f} / {meta['load'][1]:.2f}.",
        *([] if not meta.get("note") else ["", meta["note"]]),
        "",
        "| case | filter_by | dtype | cleanlab time (s) | dcloop time (s) | speed-up | "
        "cleanlab peak RSS / working | dcloop peak RSS / working | flagged | same mask |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        c, d = r.get("cleanlab"), r.get("dcloop")
        t_c = f"{c['wall_s']:.3f}" if c else ""
        t_d = ""
        if d:
            t_d = f"{d['wall_s']:.3f}"
            if d.get("first_call_s") is not None:
                t_d += f" ({d['first_call_s']:.2f})"
        speed = f"{c['wall_s'] / d['wall_s']:.1f}x" if c and d else ""
        m_c = f"{_gb(c['peak_rss_gb'])} / {_gb(c['peak_over_baseline_gb'])}" if c else ""
        m_d = f"{_gb(d['peak_rss_gb'])} / {_gb(d['peak_over_baseline_gb'])}" if d else ""
        if d and "gpu_peak_over_data_gb" in d:
            m_d += f" (GPU +{_gb(d['gpu_peak_over_data_gb'])})"
        same = ""
        if c and d:
            same = " / ".join(
                "yes" if n == 0 else f"no ({n} differ)" for n in (r["n_diff"], r["n_diff_exact"])
            )
        lines.append(
            f"| {r['case']} | {r['filter_by']} | {r['dtype']} | {t_c} | {t_d} | {speed} | "
            f"{m_c} | {m_d} | {(d or c)['flagged']} | {same} |"
        )
    for r in rows:
        if r["case"].startswith("ml:") and r.get("cleanlab") and r.get("dcloop"):
            speed = r["cleanlab"]["wall_s"] / r["dcloop"]["wall_s"]
            lines += [
                "",
                f"- multi-label {r['case'][3:]} ({r['filter_by']}): {speed:.1f}x faster "
                f"(target >= 5x: {'met' if speed >= 5 else 'missed'}); masks: "
                + _mask_verdict(r["n_diff"], r["n_diff_exact"]),
            ]
    first = meta.get("first_size")
    big = [r for r in rows if r["case"] == first and r.get("cleanlab") and r.get("dcloop")]
    if big:
        lines += ["", f"Targets at {first} (dcloop vs cleanlab in the same run):", ""]
        for r in big:
            c, d = r["cleanlab"], r["dcloop"]
            speed = c["wall_s"] / d["wall_s"]
            cpu = f", dcloop CPU {d['cpu_s']:.2f} s" if d.get("cpu_s") is not None else ""
            warm = (
                f"; the process's first call (numba import + kernel load) took "
                f"{d['warmup_s']:.2f} s more"
                if d.get("warmup_s") is not None and meta["device"] == "cpu"
                else ""
            )
            lines.append(
                f"- {r['dtype']} input: {speed:.1f}x faster (target >= 10x: "
                f"{'met' if speed >= 10 else 'missed'}; wall {c['wall_s']:.1f} s vs "
                f"{d['wall_s']:.2f} s{cpu}{warm}); peak RSS "
                f"{d['peak_rss_gb'] / c['peak_rss_gb']:.0%} of cleanlab's (data "
                f"included; target <= 25%); working memory {_gb(d['peak_over_baseline_gb'])} vs "
                f"{_gb(c['peak_over_baseline_gb'])} "
                f"({d['peak_over_baseline_gb'] / c['peak_over_baseline_gb']:.1%}; target < 1%); "
                "masks: " + _mask_verdict(r["n_diff"], r["n_diff_exact"])
            )
    return lines


def _phases_section(ph: dict) -> list[str]:
    lines = [
        "",
        f"### Where the time goes ({ph['case']}, float32, numpy input, dcloop on the host)",
        "",
        "One fresh process, imports and kernels loaded first; each phase timed on its own "
        f"(wall and this process's CPU seconds; load average {ph['load']:.2f}).",
        "",
        "| phase | wall (s) | CPU (s) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {p['phase']} | {p['wall_s']:.3f} | {p['cpu_s']:.3f} |" for p in ph["phases"]]
    return lines + ["", *PHASES_BEFORE]


def markdown(run: dict, merged: list[dict]) -> str:
    lines = [
        "# dcloop.cl engine vs cleanlab",
        "",
        f"Produced by `{run['meta']['command']}`"
        + (f" at commit `{run['meta']['commit']}`" if run["meta"].get("commit") else "")
        + ".",
        "",
        *NOTES,
        "",
    ]
    title = "## " + (
        f"{run['meta']['gpu']} (`--device {run['meta']['device']}`)"
        if run["meta"].get("gpu")
        else f"{run['meta']['cpu_cores']}-core CPU"
    )
    if run["meta"].get("label"):
        title += f": {run['meta']['label']}"
    lines += [title, "", *_section(run)]
    if run.get("phases"):
        lines += _phases_section(run["phases"])
    for other in merged:
        name = other["meta"].get("gpu") or other["meta"]["device"]
        if other["meta"].get("label"):
            name += f": {other['meta']['label']}"
        lines += ["", f"## {name} run", ""]
        if other["meta"].get("commit") != run["meta"].get("commit"):
            lines += [
                "Kept from an earlier run (`--merge`), made with the engine code of "
                + (
                    f"commit `{other['meta']['commit']}`"
                    if other["meta"].get("commit")
                    else "that time"
                )
                + "; not re-run here.",
                "",
            ]
        lines += _section(other)
    pr = run["precision_recall"]
    if pr:
        lines += [
            "",
            "## Precision / recall against human-confirmed label errors",
            "",
            "Only the candidates shown to Mechanical Turk workers were checked, so precision = "
            "confirmed / (flagged and checked), recall = confirmed found / all confirmed "
            "(confirmed: fewer than 3 of 5 workers chose the given label). dcloop default "
            "masks; they equal cleanlab's except where a table above says otherwise.",
            "",
            "| set | filter_by | flagged | flagged & checked | confirmed found | precision | "
            "recall |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in pr:
            lines.append(
                f"| {r['set']} | {r['filter_by']} | {r['flagged']} | {r['flagged_candidates']} | "
                f"{r['confirmed_found']}/{r['confirmed_total']} | {r['precision']:.3f} | "
                f"{r['recall']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1281167x1000,100000x100", help="NxK,... ('' for none)")
    ap.add_argument(
        "--multilabel", default="", help="NxK,... multi-label cases (e.g. 100000x100; '' none)"
    )
    ap.add_argument("--real", dest="real", action="store_true", default=True)
    ap.add_argument("--no-real", dest="real", action="store_false")
    ap.add_argument("--device", default="cpu", help="device for dcloop (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--engines", default="cleanlab,dcloop")
    ap.add_argument("--filter-by", default="prune_by_noise_rate")
    ap.add_argument("--real-filters", default=",".join(FILTERS), help="filter_by on real sets")
    ap.add_argument("--half", action="store_true", help="also run float16 input at each size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeat", type=int, default=1, help="timed calls per worker; the fastest is reported"
    )
    ap.add_argument("--pause", type=float, default=5.0, help="seconds before each synthetic run")
    ap.add_argument("--out", default="scripts/results/bench_cl_engine", help="path without ext")
    ap.add_argument(
        "--merge",
        action="append",
        default=[],
        help="JSON of another run (e.g. --device cuda on a GPU host) to keep as a section; runs "
        "on this run's --device and --label are dropped, so a previous output file can be passed",
    )
    ap.add_argument(
        "--input",
        choices=("torch", "numpy"),
        default="torch",
        help="container of dcloop's input on the host (cleanlab always gets numpy)",
    )
    ap.add_argument(
        "--phases",
        action="store_true",
        help="also time dcloop's phases on the first size (host, float32)",
    )
    ap.add_argument(
        "--label",
        default=None,
        help="name of this run's section; --merge keeps runs of the same device with another label",
    )
    ap.add_argument("--note", default=None, help="a paragraph printed under this run's header")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--phases-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker or args.phases_worker:
        spec = json.loads(args.worker or args.phases_worker)
        fn = worker if args.worker else phases_worker
        Path(spec["result_path"]).write_text(json.dumps(fn(spec)))
        return
    engines = args.engines.split(",")
    cases = [(s, args.filter_by, "float32") for s in args.sizes.split(",") if s]
    if args.half:
        cases += [(s, args.filter_by, "float16") for s in args.sizes.split(",") if s]
    cases += [(f"ml:{s}", args.filter_by, "float32") for s in args.multilabel.split(",") if s]
    if args.real:
        cases += [
            (f"real:{n}", fb, "float64") for n in REAL_SETS for fb in args.real_filters.split(",")
        ]
    rows, load0 = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (case, fb, dtype) in enumerate(cases):
            row = {"case": case, "filter_by": fb, "dtype": dtype}
            for engine in engines:
                spec = dict(
                    case=case,
                    filter_by=fb,
                    dtype=dtype,
                    engine=engine,
                    seed=args.seed,
                    device=args.device,
                    input=args.input,
                    repeat=args.repeat,
                    mask_path=f"{tmp}/{i}_{engine}.npy",
                )
                if not case.startswith("real:"):
                    time.sleep(args.pause)  # let the previous worker's memory be reclaimed
                r = row[engine] = run_worker(spec)
                print(
                    f"{case:>16} {fb:>20} {dtype:>8} {engine:>9} {r['wall_s']:8.3f}s "
                    f"peak {r['peak_rss_gb']:6.2f} GB flagged {r['flagged']}",
                    flush=True,
                )
            if "cleanlab" in row and "dcloop" in row:
                ref = np.load(row["cleanlab"]["mask_path"])
                for key, path in (("n_diff", ""), ("n_diff_exact", "_exact")):
                    ours = np.load(row["dcloop"]["mask_path"].replace(".npy", f"{path}.npy"))
                    row[key] = int((ours != ref).sum())
            rows.append(row)
        pr = precision_recall() if args.real else []
    phases = None
    if args.phases and args.sizes and args.device == "cpu":
        time.sleep(args.pause)
        spec = {"case": args.sizes.split(",")[0], "seed": args.seed}
        phases = run_worker(spec, "--phases-worker")
        print(json.dumps(phases, indent=1), flush=True)
    load = (load0, os.getloadavg()[0])
    run = {"meta": run_meta(args, load), "results": rows, "precision_recall": pr}
    if phases:
        run["phases"] = phases
    merged = [json.loads(Path(m).read_text()) for m in args.merge]
    merged = [m for run_m in merged for m in (run_m, *run_m.pop("merged", []))]
    merged = [  # this run replaces the run of the same device and label
        m
        for m in merged
        if (m["meta"]["device"], m["meta"].get("label")) != (args.device, args.label)
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({**run, "merged": merged}, indent=1, default=str)
    )
    out.with_suffix(".md").write_text(markdown(run, merged))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
