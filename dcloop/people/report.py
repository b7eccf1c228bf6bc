"""``report.html``: one self-contained page per run that a person can open offline.

Every image (charts, thumbnails, spectrograms) is a PNG embedded as a ``data:`` URI, so
the file can be mailed or archived alone. The page reads the run's result files, so
``dcloop-report <run_dir>`` re-renders it for any finished run.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import logging
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dcloop.csvsafe import read_csv
from dcloop.data.text import read_table, synthetic_texts
from dcloop.people.runconfig import UnsafeRunConfig, read_run_config
from dcloop.results import atomic_write

log = logging.getLogger(__name__)

THUMB_PX = 96

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right;font-size:13px} th{background:#f4f4f4} td.l,th.l{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:150px;font-size:12px;
overflow-wrap:anywhere;word-break:break-word}
.card img{display:block;margin:0 auto 4px;image-rendering:pixelated;max-width:140px}
.card.noisy{border-color:#c0392b;background:#fff5f4} .card.clean{border-color:#27ae60}
.muted{color:#777} .charts img{max-width:100%;vertical-align:top;margin-right:8px}
.kv td:first-child{text-align:left;font-weight:600}
.warn{border:2px solid #c0392b;background:#fff5f4;padding:8px 12px;border-radius:6px}
"""

# Records, once the page has loaded, how many <img> decoded: tests read these attributes.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok.length));
});
"""


# ----------------------------------------------------------------------- images
def png_uri(data: bytes) -> str:
    """A ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _array_png(rgb: np.ndarray, px: int, smooth: bool, size=None) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb)
    scale = px / max(img.size)
    size = size or (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.BILINEAR if smooth else Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _to_unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo >= 0.0 and hi <= 1.0:
        return a
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def is_audio(x: torch.Tensor) -> bool:
    """A 1-D signal: shape ``(T,)`` or ``(1, T)``."""
    return x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1)


def spectrogram_png(x: torch.Tensor, size: tuple[int, int] = (140, THUMB_PX)) -> bytes:
    """A log-magnitude spectrogram (magma colours, low frequencies at the bottom) of a
    ``(T,)`` or ``(1, T)`` signal, stretched to ``size`` (width, height) pixels."""
    from matplotlib import colormaps

    sig = x.detach().float().cpu().reshape(-1)
    # about as many frequency bins as frames (hop n_fft/4): n_fft ~ sqrt(8 T)
    n_fft = int(2 ** np.clip(np.round(np.log2(np.sqrt(8 * max(sig.numel(), 2)))), 4, 10))
    if sig.numel() < n_fft:
        sig = torch.nn.functional.pad(sig, (0, n_fft - sig.numel()))
    spec = torch.stft(
        sig, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True
    ).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-6))
    db = (db - db.max()).clamp_min(-80.0).numpy()[::-1]
    rgb = (colormaps["magma"](_to_unit(db))[..., :3] * 255).astype(np.uint8)
    return _array_png(rgb, max(size), smooth=True, size=size)


def thumbnail_png(x: torch.Tensor, px: int = THUMB_PX) -> bytes:
    """A PNG of one input: an image ``(C, H, W)``/``(H, W)``, or a spectrogram for audio."""
    x = torch.as_tensor(x).detach().float().cpu()
    if is_audio(x):
        return spectrogram_png(x)
    if x.ndim == 3:
        x = x.permute(1, 2, 0) if x.shape[0] == 3 else x[0]
    a = _to_unit(x.numpy())
    rgb = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    small = max(rgb.shape[:2]) < 32
    return _array_png(rgb, px, smooth=not small)


# ----------------------------------------------------------------------- charts
def _figure(w: float = 6.0, h: float = 3.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


#: Class names on chart axes are cut to this many characters (the tables keep them whole).
AXIS_NAME_CHARS = 18


def axis_names(names: Sequence[str], limit: int = AXIS_NAME_CHARS) -> list[str]:
    """Class names as matplotlib draws them literally: ``$`` escaped (a name such as
    ``price $5 and $6`` is not mathtext), cut to ``limit`` characters with an ellipsis."""
    out = []
    for name in names:
        name = str(name)
        if len(name) > limit:
            name = name[: limit - 1] + "\u2026"
        out.append(name.replace("$", r"\$"))
    return out


def _xtick_rotation(names: Sequence[str]) -> int:
    """Vertical labels when there are many classes or any long name (no overlap)."""
    return 90 if len(names) > 12 or max((len(n) for n in names), default=0) > 4 else 0


def heatmap_png(matrix: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """The ``P(given=i | true=j)`` matrix as an annotated heatmap."""
    c = matrix.shape[0]
    names = axis_names(names)
    fig = _figure(0.36 * c + 1.8, 0.32 * c + 1.6)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), names, rotation=_xtick_rotation(names))
    ax.set_yticks(range(c), names)
    ax.set_xlabel("true label j")
    ax.set_ylabel("given label i")
    ax.set_title(title)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                v = matrix[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _fig_png(fig)


def class_charts_png(report: pd.DataFrame) -> bytes:
    """Per class: estimated (and true) noise rate, flagged count, OOF accuracy."""
    names = axis_names(report["name"].astype(str).tolist())
    x = np.arange(len(names))
    fig = _figure(max(8.0, 0.5 * len(names) + 4), 3.2)
    a1, a2, a3 = fig.subplots(1, 3)
    if "noise_rate_true" in report:
        a1.bar(x - 0.2, report["noise_rate_est"], 0.4, label="estimated")
        a1.bar(x + 0.2, report["noise_rate_true"], 0.4, label="true")
        a1.legend(fontsize=7)
    else:
        a1.bar(x, report["noise_rate_est"])
    a1.set_title("noise rate per given class", fontsize=10)
    a2.bar(x, report["flagged"], color="#c0392b")
    a2.set_title("flagged samples", fontsize=10)
    a3.bar(x, report["oof_accuracy"], color="#27ae60")
    a3.set_ylim(0, 1)
    a3.set_title("OOF accuracy vs given label", fontsize=10)
    for a in (a1, a2, a3):
        a.set_xticks(x, names, rotation=_xtick_rotation(names), fontsize=8)
    fig.tight_layout()
    return _fig_png(fig)


def history_png(history: list[dict[str, Any]]) -> bytes:
    """Flags, estimated noise, mean label quality (and detection P/R) per epoch."""
    from matplotlib.ticker import MaxNLocator

    h = pd.DataFrame(history)
    fig = _figure(9, 3.2)
    a1, a2 = fig.subplots(1, 2)
    ep = h["epoch"]  # 1-based, as in metrics.json and label_issues.csv
    a1.plot(ep, h["num_flagged"], marker="o")
    a1.set_xlabel("epoch")
    a1.set_title("flagged samples", fontsize=10)
    for key, lab in (
        ("noise_rate_est", "estimated noise rate"),
        ("quality_mean", "mean label quality"),
        ("weight_mean", "mean weight"),
        ("precision", "precision"),
        ("recall", "recall"),
    ):
        if key in h:
            a2.plot(ep, h[key], marker=".", label=lab)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("epoch")
    a2.legend(fontsize=7)
    a2.set_title("quality per epoch", fontsize=10)
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _fig_png(fig)


def pr_curve_png(quality: np.ndarray, is_noisy: np.ndarray, flagged: np.ndarray) -> bytes:
    """Precision-recall of ranking by label quality, with the flagged set as a point."""
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(is_noisy, -quality)
    fig = _figure(4.2, 3.4)
    ax = fig.add_subplot()
    ax.plot(r, p, label="rank by quality")
    tp = (flagged & is_noisy).sum()
    if flagged.any():
        ax.plot(
            tp / max(is_noisy.sum(), 1),
            tp / flagged.sum(),
            "o",
            color="#c0392b",
            label="flagged set",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("finding the wrong labels", fontsize=10)
    return _fig_png(fig)


# ------------------------------------------------------------------------- html
def _img(uri: str, alt: str, cls: str = "") -> str:
    return f'<img src="{uri}" alt="{escape(alt)}"{f" class={cls!r}" if cls else ""}>'


def _table(df: pd.DataFrame, left: Sequence[str] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{escape(str(c))}</th>' for c in df)
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, r, strict=True):
            if isinstance(v, (float, np.floating)):
                v = "" if np.isnan(v) else f"{v:.3f}"
            cells.append(f'<td class="{"l" if c in left else ""}">{escape(str(v))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _summary(metrics: dict[str, Any], issues: pd.DataFrame) -> list[tuple[str, str]]:
    d, c = metrics.get("data", {}), metrics.get("cleaning", {})
    n = int(d.get("num_train", len(issues)))
    flagged = int(c.get("num_flagged", issues["flagged"].sum()))
    pairs = [
        (
            "data",
            f"{d.get('source', '?')}: {n} training samples, {d.get('num_classes', '?')} "
            f"classes, K={c.get('num_folds', '?')} folds",
        ),
    ]
    if d.get("num_skipped_files"):
        pairs.append(("skipped files", f"{d['num_skipped_files']} unreadable (skipped_files.csv)"))
    stop = metrics.get("early_stopping")
    if stop:
        pairs.append(("early stopping", f"epoch {stop['epoch']} ({stop['monitor']})"))
    inj = metrics.get("noise_injected")
    if inj and inj.get("kind") != "none":
        pairs.append(
            (
                "injected noise",
                f"{inj['kind']}: {inj['num_noisy']} labels "
                f"({inj['rate_actual']:.1%}) made wrong on purpose",
            )
        )
    else:
        pairs.append(("injected noise", "none: the labels as given"))
    what = (
        "flagged (too weak to judge: see above)"
        if metrics.get("weak_run")
        else "likely label errors"
    )
    pairs.append(("found", f"{flagged} {what} ({flagged / max(n, 1):.1%})"))
    if "noise" in metrics:
        pairs.append(("estimated noise rate", f"{metrics['noise']['rate']:.1%}"))
    if c.get("action"):
        pairs.append(("action", f"{c['action']} (filter_by={c.get('filter_by', '?')})"))
    test = metrics.get("test", {})
    if "accuracy" in test:
        pairs.append(("test accuracy", f"{test['accuracy']:.4f} (mean of the fold replicas)"))
    if "refit_accuracy" in test:
        pairs.append(("refit test accuracy", f"{test['refit_accuracy']:.4f}"))
    if "wall_time_s" in metrics:
        pairs.append(("wall time", f"{metrics['wall_time_s']:.1f} s"))
    return pairs


def _label_file(run_dir: Path) -> list[tuple[str, str]]:
    """A summary line for the label file the run trained on (``data.labels``), if any."""
    from dcloop.people.runconfig import UnsafeRunConfig, run_label_file

    try:
        used = run_label_file(run_dir)
    except UnsafeRunConfig as err:
        log.warning("the label file line is left out: %s", err)
        return []
    if not used:
        return []
    if not Path(used).is_file():
        return [("label file", f"{used} (no longer there)")]
    df = read_csv(used, dtype=str)
    counts = df["status"].value_counts() if "status" in df else pd.Series(dtype=int)
    said = ", ".join(
        f"{int(counts[k])} {k}" for k in ("corrected", "confirmed", "consensus") if k in counts
    )
    return [("label file", f"{used}: {len(df)} rows{'; ' + said if said else ''}")]


# --------------------------------------------------------------- texts of a finished run
#: ``data.source._target_`` values whose texts :func:`run_texts` can read back.
TEXT_TARGETS = {
    "dcloop.data.text.TextCSV": "csv",
    "dcloop.data.text.TextSynth": "synth",
}


def parse_source(source: str) -> tuple[str, int] | None:
    """``"<file>:row 17"`` -> ``("<file>", 17)``; ``None`` for any other source."""
    head, sep, tail = str(source).rpartition(":row ")
    if not sep or not tail.isdigit():
        return None
    return head, int(tail)


def run_texts(run_dir: str | os.PathLike, sources: Sequence[str]) -> list[str | None] | None:
    """The texts behind ``sources`` of a finished text run; ``None`` if it is not one.

    The run's ``config.yaml`` is read as data (``yaml.safe_load``; nothing is instantiated):
    for ``TextSynth`` the synthetic texts are made again from its plain numbers, for
    ``TextCSV`` the rows are read from the files the sources name, with its text column.
    A row that cannot be read back (a file moved or changed) is ``None``.
    """
    try:
        cfg = read_run_config(run_dir)
    except UnsafeRunConfig as err:
        log.warning("texts of %s not read back: %s", run_dir, err)
        return None
    src = ((cfg or {}).get("data") or {}).get("source")
    if not isinstance(src, dict) or src.get("_target_") not in TEXT_TARGETS:
        return None
    kind = TEXT_TARGETS[src["_target_"]]
    plain = (int, float, str, bool, type(None))
    if kind == "synth":
        allowed = set(inspect.signature(synthetic_texts).parameters)
        kw = {k: v for k, v in src.items() if k in allowed and isinstance(v, plain)}
        texts = synthetic_texts(**kw)[0]
        return [
            texts[p[1]] if (p := parse_source(s)) and p[1] < len(texts) else None for s in sources
        ]
    column = src.get("text_column", "text")
    if not isinstance(column, str):
        return None
    cache: dict[str, list[str] | None] = {}
    out: list[str | None] = []
    for s in sources:
        p = parse_source(s)
        if p is None:
            out.append(None)
            continue
        if p[0] not in cache:
            try:
                cache[p[0]] = read_table(p[0], column, None)[0]
            except (OSError, ValueError) as err:
                log.warning("texts of %s not read back: %s", p[0], err)
                cache[p[0]] = None
        rows = cache[p[0]]
        out.append(rows[p[1]] if rows is not None and p[1] < len(rows) else None)
    return out


#: Characters of a text shown on a gallery card.
SNIPPET_CHARS = 280


def text_snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` cut to ``limit`` characters (at a word boundary, with an ellipsis), as HTML."""
    t = " ".join(str(text).split())
    if len(t) > limit:
        t = t[:limit].rsplit(" ", 1)[0] + " \u2026"
    return (
        '<div class="snippet" style="text-align:left;font-family:Georgia,serif;font-size:12px;'
        f'background:#fafafa;padding:4px;margin-bottom:4px">{escape(t)}</div>'
    )


def _gallery(
    issues: pd.DataFrame, names: list[str], dataset, worst: int, texts=None
) -> tuple[str, int]:
    cards = []
    rows = issues.head(worst)
    if texts is None and dataset is not None and hasattr(dataset, "texts"):  # text data
        texts = {int(i): dataset.texts[int(i)] for i in rows["index"]}
    for r in rows.itertuples(index=False):
        img = '<div class="muted">no preview</div>'
        if texts is not None:  # text: a snippet instead of a thumbnail
            text = texts.get(int(r.index))
            if text is not None:
                img = text_snippet(text)
        elif dataset is not None:
            try:
                x = dataset[int(r.index)][0]
                kind = "spectrogram" if is_audio(torch.as_tensor(x)) else "thumbnail"
                img = _img(png_uri(thumbnail_png(x)), f"{kind} of sample {r.index}")
            except Exception as err:  # noqa: BLE001 - a missing file must not kill the report
                log.warning("no preview for sample %s: %s", r.index, err)
        truth, cls = "", ""
        if "true_label" in rows.columns:
            noisy = bool(r.is_noisy)
            cls = "noisy" if noisy else "clean"
            truth = (
                f"<br>true: <b>{escape(names[int(r.true_label)])}</b> "
                f"({'label was wrong' if noisy else 'label was right'})"
            )
        flag = "flagged" if bool(r.flagged) else "not flagged"
        source = str(r.source)
        cards.append(
            f'<div class="card {cls}">{img}#{int(r.index)} <span class="muted" '
            f'title="{escape(source)}">{escape(short_source(source))}</span><br>'
            f"given: <b>{escape(names[int(r.given_label)])}"
            f"</b> &rarr; suggested: <b>{escape(names[int(r.suggested_label)])}</b><br>"
            f"quality {float(r.quality):.3f} &middot; {flag}{truth}</div>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>', len(cards)


#: Longest source path a card shows (its start is cut; the full path is the tooltip).
SOURCE_CHARS = 60


def short_source(source: str, limit: int = SOURCE_CHARS) -> str:
    """``source`` cut from the left to ``limit`` characters (the file name stays visible)."""
    return source if len(source) <= limit else "\u2026" + source[-(limit - 1) :]


def _guard_section(metrics: dict[str, Any]) -> list[str]:
    """The harm guard's warnings (first thing on the page) and when cleaning started."""
    parts = []
    weak = metrics.get("weak_run")
    if weak:
        parts.append(
            f'<div class="warn"><b>Run too weak to judge the labels</b> '
            f"({escape(str(weak.get('reason')))}): most flags below are the model's own "
            "mistakes, not label errors. Train longer or use a stronger model.</div>"
        )
    warnings = [w for w in metrics.get("warnings") or [] if not str(w).startswith("run too weak")]
    if warnings:
        items = "".join(f"<li>{escape(str(w))}</li>" for w in warnings)
        parts.append(
            '<div class="warn"><b>Warning: the guard saw signs of harm (a class never '
            "predicted, a constant replica, a jump of the noise estimate or falling validation "
            f"accuracy) and backed off</b><ul>{items}</ul></div>"
        )
    safety = metrics.get("safety")
    if safety:
        start = safety.get("start_epoch")
        ready = safety.get("ready_epoch")
        text = (
            f"predictions ready at epoch {ready}; cleaning acted from epoch {start}"
            if start is not None
            else f"cleaning never acted (ready at epoch {ready})"
            if ready is not None
            else "cleaning never acted: the predictions never became ready"
        )
        parts.append(
            f'<p class="muted">Cleaning: {escape(text)}; back-offs: '
            f"{int(safety.get('backoffs', 0))}.</p>"
        )
    return parts


def render_report(
    run_dir: str | os.PathLike, *, dataset=None, worst: int = 24, title: str | None = None
) -> str:
    """The HTML of a run's report.

    Args:
        run_dir: a dcloop run directory (``label_issues.csv``, ``class_report.csv``,
            ``noise_matrix.csv``, ``metrics.json``; optional ``noise_matrix_true.csv`` and
            ``annotators/``).
        dataset: the training dataset (items ``(x, y, index)``, un-augmented) for
            thumbnails; ``None`` leaves them out.
        worst: how many samples the gallery shows (flagged first, worst quality first).
        title: page title (default: the run directory's name).
    """
    if worst < 0:
        raise ValueError(f"worst must be >= 0; got {worst}")
    run_dir = Path(run_dir)
    need = ["label_issues.csv", "class_report.csv", "noise_matrix.csv"]
    missing = [f for f in need if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished dcloop run: missing {missing}")
    issues = read_csv(run_dir / "label_issues.csv", dtype={"source": str})
    report = read_csv(run_dir / "class_report.csv", dtype={"name": str})
    names = report["name"].astype(str).tolist()
    nm = pd.read_csv(run_dir / "noise_matrix.csv", index_col=0).to_numpy(float)
    mpath = run_dir / "metrics.json"
    metrics = json.loads(mpath.read_text()) if mpath.is_file() else {}
    title = title or f"dcloop report: {run_dir.resolve().name}"

    parts = [f"<h1>{escape(title)}</h1>", f'<p class="muted">{escape(str(run_dir))}</p>']
    parts += _guard_section(metrics)
    parts += ["<h2>Summary</h2>", _kv(_summary(metrics, issues) + _label_file(run_dir))]

    det = metrics.get("detection")
    if det and "is_noisy" in issues:
        parts.append("<h2>Precision and recall (ground truth known)</h2>")
        dt = pd.DataFrame([{k: det[k] for k in ("precision", "recall", "f1", "auroc") if k in det}])
        dt.insert(0, "flagged", int(issues["flagged"].sum()))
        dt.insert(1, "truly wrong", int(issues["is_noisy"].sum()))
        parts.append(_table(dt))
        uri = png_uri(
            pr_curve_png(
                issues["quality"].to_numpy(float),
                issues["is_noisy"].to_numpy(bool),
                issues["flagged"].to_numpy(bool),
            )
        )
        parts.append(_img(uri, "precision-recall curve"))

    texts = None
    if dataset is None:  # a text run's rows can be read back without its dataset
        shown_rows = issues.head(worst)
        got = run_texts(run_dir, shown_rows["source"].astype(str).tolist())
        if got is not None:
            texts = dict(zip(shown_rows["index"].astype(int).tolist(), got, strict=True))
    gallery, shown = _gallery(issues, names, dataset, worst, texts)
    parts += [
        f"<h2>The {shown} worst samples</h2>",
        '<p class="muted">Flagged first, lowest label quality first. Review them with '
        "<code>dcloop-export</code>; bring corrections back with <code>dcloop-import</code>."
        "</p>",
        gallery,
    ]

    parts.append("<h2>Noise matrix</h2><div class=charts>")
    parts.append(_img(png_uri(heatmap_png(nm, names, "estimated P(given | true)")), "noise matrix"))
    true_path = run_dir / "noise_matrix_true.csv"
    if true_path.is_file() and "true_label" in issues:
        true_nm = pd.read_csv(true_path, index_col=0).to_numpy(float)
        uri = png_uri(heatmap_png(true_nm, names, "true (injected) P(given | true)"))
        parts.append(_img(uri, "true noise matrix"))
    parts.append("</div>")

    parts += [
        "<h2>Per class</h2>",
        '<div class="charts">',
        _img(png_uri(class_charts_png(report)), "per-class charts"),
        "</div>",
        _table(report, left=("name",)),
    ]

    history = metrics.get("history") or []
    if history:
        parts += [
            "<h2>Flags and quality per epoch</h2>",
            '<div class="charts">',
            _img(png_uri(history_png(history)), "per-epoch chart"),
            "</div>",
            _table(pd.DataFrame(history)),
        ]

    parts += _annotator_sections(run_dir / "annotators")
    parts += _health_sections(run_dir / "data_issues", dataset, worst)
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def _annotator_sections(folder: Path) -> list[str]:
    stats, classes = folder / "annotator_stats.csv", folder / "class_agreement.csv"
    if not stats.is_file():
        return []
    parts = ["<h2>Annotators</h2>"]
    summary = folder / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        parts.append(
            _kv([(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in s.items()])
        )
    parts.append(_table(read_csv(stats, dtype={"annotator": str}), left=("annotator",)))
    if classes.is_file():
        parts += [
            "<h2>Human-model agreement per class</h2>",
            _table(read_csv(classes, dtype={"name": str}), left=("name",)),
        ]
    return parts


def _health_preview(dataset, index: int | None, source: str) -> str:
    """A thumbnail or text snippet of training row ``index`` (else the source's name)."""
    label = f'<span class="muted" title="{escape(source)}">{escape(short_source(source))}</span>'
    if dataset is None or index is None:
        return label
    try:
        if hasattr(dataset, "texts"):
            return text_snippet(dataset.texts[index]) + label
        uri = png_uri(thumbnail_png(dataset[index][0]))
        return _img(uri, f"data health: sample {index}") + label
    except Exception as err:  # noqa: BLE001 - a missing file must not kill the report
        log.warning("no preview for sample %s: %s", index, err)
        return label


def _health_sections(folder: Path, dataset, worst: int) -> list[str]:
    """Data health (``data_issues/``, dcloop.callbacks.DataHealth): one summary line per
    issue type, then a section per type with thumbnails or snippets of the training rows."""
    summary = folder / "summary.json"
    if not summary.is_file():
        return []
    s = json.loads(summary.read_text())
    lines = [
        ("outliers", f"{s.get('outliers', 0)} training samples far from all others"),
        ("near-duplicates", f"{s.get('near_duplicate_pairs', 0)} pairs inside training"),
        ("train/test leakage", f"{s.get('leakage', 'not checked (no test)')} test samples"),
        (
            "underperforming groups",
            f"{s.get('underperforming_groups', 0)} clusters, "
            f"{s.get('underperforming_samples', 0)} samples",
        ),
        ("test-only patterns", f"{s.get('test_only_patterns', 'not checked')} patterns"),
        (
            "class imbalance",
            f"rarest class {s.get('rarest_class')}: "
            + ("imbalanced" if s.get("class_imbalance") else "no imbalance"),
        ),
    ]
    parts = ["<h2>Data health</h2>", _kv(lines)]
    out = folder / "outliers.csv"
    if out.is_file():
        df = read_csv(out, dtype={"source": str}).head(worst)
        named = (
            ("pixels", "pixel kNN distance"),
            ("spectrogram", "spectrogram kNN distance"),
            ("rarity", "rarity"),
        )
        own = [(c, w) for c, w in named if c in df]
        cards = [
            f'<div class="card">{_health_preview(dataset, int(r.index), str(r.source))}'
            f"<br>#{int(r.index)} &middot; kNN distance {float(r.score):.3f}"
            + "".join(f" &middot; {w} {float(getattr(r, c)):.3f}" for c, w in own)
            + (f" &middot; {r.signal}" if hasattr(r, "signal") else "")
            + "</div>"
            for r in df.itertuples(index=False)
        ]
        parts += ["<h3>Outliers</h3>", f'<div class="gallery">{"".join(cards)}</div>']
    pairs = folder / "near_duplicates.csv"
    if pairs.is_file():
        df = read_csv(pairs, dtype={"source_a": str, "source_b": str}).head(worst)
        cards = []
        for r in df.itertuples(index=False):
            a = int(r.index_a) if r.split_a == "train" else None
            b = int(r.index_b) if r.split_b == "train" else None
            cards.append(
                f'<div class="card">{r.split_a}: {_health_preview(dataset, a, str(r.source_a))}'
                f"<br>{r.split_b}: {_health_preview(dataset, b, str(r.source_b))}"
                f"<br>distance {float(r.distance):.4f}</div>"
            )
        parts += [
            "<h3>Near-duplicates and train/test leakage</h3>",
            '<p class="muted">Smallest distance first (data_issues/near_duplicates.csv).</p>',
            f'<div class="gallery">{"".join(cards)}</div>',
        ]
    groups = folder / "underperforming_groups.csv"
    if groups.is_file():
        df = read_csv(groups, dtype={"source": str})
        if len(df):
            table = df.groupby("group").agg(size=("index", "size"), accuracy=("score", "first"))
            parts += ["<h3>Underperforming groups</h3>", _table(table.reset_index())]
    only = folder / "test_only.csv"
    if only.is_file():
        df = read_csv(only, dtype={"source": str})
        if len(df):
            parts += ["<h3>Test-only patterns</h3>", _table(df.head(worst), left=("source",))]
    return parts


def write_report(run_dir: str | os.PathLike, *, dataset=None, worst: int = 24, path=None) -> Path:
    """Render and write ``report.html`` (atomically) into ``run_dir``; returns its path."""
    html = render_report(run_dir, dataset=dataset, worst=worst)
    out = Path(path) if path is not None else Path(run_dir) / "report.html"
    atomic_write(out, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    log.info("report: %s", out)
    return out
