"""The relabel queue: a run's flagged samples, worst first, for people to review.

Written as a CSV (fill in the ``label`` column) and as Label Studio import JSON (one
task per sample, the file reference in ``data``, the suggested label as a prediction),
with a matching Label Studio labelling config. For text runs the queue carries the text
itself (a ``text`` column; ``data.text`` in the tasks; a ``<Text>`` config).
"""

from __future__ import annotations

import logging
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from dcloop.csvsafe import read_csv
from dcloop.people.corrections import run_class_names
from dcloop.people.report import run_texts
from dcloop.results import atomic_write, write_csv, write_json

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")

#: Columns of ``relabel_queue.csv``; people fill in ``label`` (and ``annotator``).
QUEUE_COLUMNS = (
    "rank",
    "index",
    "source",
    "given_label",
    "given_name",
    "suggested_label",
    "suggested_name",
    "quality",
    "label",
    "annotator",
)


def relabel_queue(
    run_dir: str | os.PathLike, *, top: int | None = None, everything=False, health=False
):
    """The flagged samples of a run, worst label quality first.

    Args:
        run_dir: a dcloop run directory (reads ``label_issues.csv``).
        top: keep only the first ``top`` rows.
        everything: every sample, not only the flagged ones (still worst first).
        health: also the training samples that data health flagged (``data_issues/``:
            outliers, then near-duplicates, after the label issues), with an ``issue``
            column (``label``, ``outlier``, ``near_duplicate``, joined by ``+``).

    Returns:
        A frame with :data:`QUEUE_COLUMNS` (``label`` and ``annotator`` empty).
    """
    run_dir = Path(run_dir)
    path = run_dir / "label_issues.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a dcloop run directory (no label_issues.csv)")
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1 or None; got {top}")
    issues = read_csv(path, dtype={"source": str})
    issues = issues.sort_values(
        ["flagged", "quality", "index"], ascending=[False, True, True], kind="stable"
    )
    kinds = _health_kinds(run_dir) if health else None
    if not everything:
        keep = issues["flagged"].astype(bool)
        if kinds is not None:
            keep |= issues["index"].isin(kinds)
        issues = issues[keep]
    if kinds is not None:  # label issues first, then outliers, then near-duplicates
        issue = [
            "+".join((["label"] if bool(f) else []) + kinds.get(int(i), [])) or "none"
            for i, f in zip(issues["index"], issues["flagged"], strict=True)
        ]
        rank = [0 if s.startswith("label") else 1 if "outlier" in s else 2 for s in issue]
        issues = issues.assign(_issue=issue, _rank=rank).sort_values("_rank", kind="stable")
    if top is not None:
        issues = issues.head(top)
    names = run_class_names(run_dir)
    q = pd.DataFrame(
        {
            "rank": range(1, len(issues) + 1),
            "index": issues["index"].to_numpy(),
            "source": issues["source"].to_numpy(),
            "given_label": issues["given_label"].to_numpy(),
            "given_name": [names[k] for k in issues["given_label"]],
            "suggested_label": issues["suggested_label"].to_numpy(),
            "suggested_name": [names[k] for k in issues["suggested_label"]],
            "quality": issues["quality"].to_numpy(),
            "label": "",
            "annotator": "",
        }
    )
    if kinds is not None:
        q.insert(1, "issue", issues["_issue"].to_numpy())
    return q


def _health_kinds(run_dir: Path) -> dict[int, list[str]]:
    """Training row -> the data-health issues naming it (``data_issues/``; empty if none)."""
    kinds: dict[int, list[str]] = {}
    folder = run_dir / "data_issues"
    if (folder / "outliers.csv").is_file():
        for i in read_csv(folder / "outliers.csv")["index"]:
            kinds.setdefault(int(i), []).append("outlier")
    if (folder / "near_duplicates.csv").is_file():
        pairs = read_csv(folder / "near_duplicates.csv")
        for side in ("a", "b"):
            for s, i in zip(pairs[f"split_{side}"], pairs[f"index_{side}"], strict=True):
                if s == "train" and "near_duplicate" not in kinds.get(int(i), []):
                    kinds.setdefault(int(i), []).append("near_duplicate")
    return kinds


def storage_root(sources: list[str]) -> str | None:
    """The folder a Label Studio Local Files storage must be connected to so that it serves
    every listed file (their deepest common folder); ``None`` when none of them is a file
    here (in-memory data such as digits, or a folder moved away)."""
    files = [os.path.abspath(s) for s in sources if os.path.isfile(s)]
    if not files:
        return None
    return os.path.commonpath([os.path.dirname(f) for f in files])


def _data_key(source: str) -> str:
    return "audio" if str(source).lower().endswith(AUDIO_SUFFIXES) else "image"


def _file_url(url_prefix: str, source: str) -> str:
    """``url_prefix + source``, the source percent-encoded when there is a prefix: a space,
    ``&``, ``#`` or ``?`` in a folder name would otherwise cut the URL (Label Studio's
    ``/data/local-files/?d=`` decodes it back to the path)."""
    return f"{url_prefix}{quote(source, safe='/')}" if url_prefix else source


def labelstudio_tasks(
    queue: pd.DataFrame, *, url_prefix: str = "", images=None, model_version="dcloop", texts=None
):
    """Label Studio import tasks, one per queue row, in queue order.

    ``data`` holds the file reference (``image`` or ``audio``: ``url_prefix + source``, the
    source percent-encoded after a prefix, or ``images[index]``, e.g. an embedded ``data:``
    URI for in-memory data such as digits) and ``index``, ``source``, ``given_label``,
    ``quality``; the suggested label is a prediction (``from_name="label"``, ``to_name`` the
    data key, type ``choices``) so the annotator sees it preselected. With ``texts``
    (index -> text), ``data.text`` holds the text itself.
    """
    tasks = []
    for r in queue.itertuples(index=False):
        key = "text" if texts is not None else _data_key(r.source)
        if texts is not None:
            value = texts.get(int(r.index)) or ""
        else:
            value = images[int(r.index)] if images else _file_url(url_prefix, str(r.source))
        tasks.append(
            {
                "data": {
                    key: value,
                    "index": int(r.index),
                    "source": str(r.source),
                    "given_label": str(r.given_name),
                    "quality": float(r.quality),
                    "rank": int(r.rank),
                },
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": float(1.0 - r.quality),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": key,
                                "type": "choices",
                                "value": {"choices": [str(r.suggested_name)]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def labelstudio_config(class_names, data_key: str = "image") -> str:
    """A Label Studio labelling config (XML) matching :func:`labelstudio_tasks`."""
    tag = {"audio": "Audio", "text": "Text"}.get(data_key, "Image")
    choices = "\n".join(f'    <Choice value="{escape(str(n), quote=True)}"/>' for n in class_names)
    return (
        "<View>\n"
        f'  <{tag} name="{data_key}" value="${data_key}"/>\n'
        '  <Header value="Given label: $given_label (quality $quality)"/>\n'
        f'  <Choices name="label" toName="{data_key}" choice="single" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def export_queue(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    top: int | None = None,
    everything: bool = False,
    url_prefix: str = "",
    dataset=None,
    health: bool = False,
) -> dict[str, Path]:
    """Write ``relabel_queue.csv``, ``relabel_queue_labelstudio.json`` and
    ``labelstudio_config.xml`` into ``out_dir`` (default ``<run_dir>/relabel``).

    With ``dataset`` (the run's training set), each task embeds the sample's thumbnail
    (or spectrogram) as a PNG ``data:`` URI instead of a file reference. For a text run
    (``dataset.texts``, or texts read back from the run, see
    :func:`dcloop.people.report.run_texts`) the queue CSV gets a ``text`` column and each task
    holds the text.

    ``health``: the queue also holds the samples data health flagged (see
    :func:`relabel_queue`).

    Returns:
        ``{"csv": ..., "labelstudio": ..., "config": ...}`` paths.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "relabel"
    queue = relabel_queue(run_dir, top=top, everything=everything, health=health)
    names = run_class_names(run_dir)
    key = _data_key(queue["source"].iloc[0]) if len(queue) else "image"
    images = texts = None
    if dataset is not None and hasattr(dataset, "texts"):  # text data: the texts themselves
        texts = {int(i): dataset.texts[int(i)] for i in queue["index"]}
    elif dataset is None:
        got = run_texts(run_dir, queue["source"].astype(str).tolist())
        if got is not None:
            texts = dict(zip(queue["index"].astype(int).tolist(), got, strict=True))
    if texts is not None:
        queue.insert(3, "text", [texts.get(int(i)) or "" for i in queue["index"]])
        key = "text"
    elif dataset is not None:
        from dcloop.people.report import png_uri, thumbnail_png

        images = {int(i): png_uri(thumbnail_png(dataset[int(i)][0])) for i in queue["index"]}
        key = "image"
    paths = {
        "csv": write_csv(queue, out / "relabel_queue.csv"),
        "labelstudio": write_json(
            labelstudio_tasks(queue, url_prefix=url_prefix, images=images, texts=texts),
            out / "relabel_queue_labelstudio.json",
        ),
    }
    cfg = labelstudio_config(names, key)
    paths["config"] = atomic_write(
        out / "labelstudio_config.xml", lambda tmp: Path(tmp).write_text(cfg)
    )
    log.info("relabel queue: %d samples -> %s", len(queue), out)
    return paths
