"""Object detection labels as a classification problem: one crop per COCO annotation.

A COCO annotation file (``images``, ``annotations``, ``categories``) becomes an in-memory
:class:`~dcloop.data.IndexedTensorDataset` with one sample per annotation: the box plus
``context`` of its size on every side, cropped from the image and resized. The label is the
annotation's category (class ``k`` is the k-th category in ascending id order) and the
sample's source is ``"<image file_name>#ann=<annotation id>"``, which maps every row back to
its annotation. The same in-loop confident learning then runs on the crops
(``dcloop data=coco``), and :func:`write_coco_results` writes the flagged annotations back as
COCO-style JSON with their issue scores and draws them on their images.

Example:
    >>> from dcloop.beyond.detection import make_synthetic_coco, coco_crops
    >>> info = make_synthetic_coco("synth", num_images=20)          # doctest: +SKIP
    >>> ds, names = coco_crops(info["root"], info["annotations"])   # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from dcloop._checks import is_int, preview
from dcloop.data.datasets import IndexedTensorDataset, _normalize_image_size, _normalize_mode
from dcloop.data.splits import grouped_split_indices, split_dataset
from dcloop.results import atomic_write, write_json

log = logging.getLogger(__name__)

_SOURCE_RE = re.compile(r"^(?P<file>.*)#ann=(?P<id>-?\d+)$")

#: Shapes drawn by :func:`make_synthetic_coco`, one category each (ids 1..4).
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


@dataclass
class Coco:
    """A validated COCO annotation file.

    Attributes:
        images: image id -> image record (``file_name``, ``width``, ``height``).
        annotations: annotation records in file order (``id``, ``image_id``,
            ``category_id``, ``bbox`` = ``[x, y, width, height]`` in pixels).
        categories: category records sorted by id.
        path: the JSON file it was read from (or ``None``).
    """

    images: dict[int, dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    path: Path | None = None

    @property
    def category_ids(self) -> list[int]:
        """Category ids in class order: class ``k`` is ``category_ids[k]``."""
        return [int(c["id"]) for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        """Category names in class order."""
        return [str(c.get("name", c["id"])) for c in self.categories]


def _read_json(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"COCO annotations file not found: {str(p)!r}. Pass the JSON with keys images, "
            "annotations, categories."
        )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"COCO annotations file {str(p)!r} is not valid JSON: {err}") from err
    return data, p


def _int_id(value: Any, what: str) -> int:
    """An integer id, or a ``ValueError`` naming the record it came from."""
    if not (is_int(value) or isinstance(value, str)):
        raise ValueError(f"{what}: ids must be integers; got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what}: ids must be integers; got {value!r}") from None


def parse_coco(
    data: Mapping[str, Any] | str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
) -> Coco:
    """Reads and validates COCO annotations.

    Args:
        data: the parsed JSON (a mapping) or a path to it.
        root: folder the images' ``file_name`` are relative to; needed for ``check_files``
            and for images without ``width``/``height`` (their size is read from the file).
        check_files: raise when an image file that has annotations is missing.

    Returns:
        The validated :class:`Coco`.

    Raises:
        FileNotFoundError: if the JSON or an annotated image file is missing.
        ValueError: naming the offending annotation for an unknown ``image_id`` or
            ``category_id``, a malformed box, a box with non-positive size, a box outside
            its image, or duplicate ids.
    """
    path = None
    if not isinstance(data, Mapping):
        data, path = _read_json(data)
    where = f" in {str(path)!r}" if path else ""
    if not isinstance(data, Mapping):
        raise ValueError(f"COCO data{where} must be a JSON object; got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"COCO data{where} needs a list under {key!r}; got {data.get(key)!r}")
        bad = [r for r in data[key] if not isinstance(r, Mapping)]
        if bad:
            raise ValueError(f"COCO {key}{where} must be objects; got {bad[0]!r}")
    cats = [  # copies with integer ids: the caller's data stays as it was
        {**c, "id": _int_id(c.get("id"), f"COCO category {c!r}{where}")} for c in data["categories"]
    ]
    cats.sort(key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    if len(set(cat_ids)) != len(cat_ids) or not cats:
        raise ValueError(f"COCO categories{where} need unique ids and at least one entry")
    images: dict[int, dict[str, Any]] = {}
    for img in data["images"]:
        if "id" not in img or "file_name" not in img:
            raise ValueError(f"COCO image record{where} needs 'id' and 'file_name'; got {img!r}")
        iid = _int_id(img["id"], f"COCO image {img.get('file_name')!r}{where}")
        if iid in images:
            raise ValueError(f"duplicate image id {iid}{where}")
        images[iid] = dict(img)
    base = Path(root).expanduser() if root is not None else None
    used = {
        _int_id(a.get("image_id", -1), f"COCO annotation entry {k}{where}")
        for k, a in enumerate(data["annotations"])
    } & images.keys()
    missing = []
    for iid in sorted(used):
        img = images[iid]
        fpath = base / img["file_name"] if base is not None else None
        if fpath is not None and not fpath.is_file():
            missing.append(str(fpath))
            continue
        if "width" not in img or "height" not in img:
            if fpath is None:
                raise ValueError(f"image {iid} has no width/height{where} and no root was given")
            with Image.open(fpath) as im:
                img["width"], img["height"] = im.size
    if missing and check_files:
        raise FileNotFoundError(
            f"{len(missing)} annotated image file(s) do not exist: {preview(missing)}; "
            f"file_name is read relative to root={str(base)!r}"
        )
    known_cats = set(cat_ids)
    seen: set[int] = set()
    anns = []
    for k, ann in enumerate(data["annotations"]):
        aid = ann.get("id")
        label = f"annotation id={aid!r} (entry {k}){where}"
        if aid is None:
            raise ValueError(f"{label} has no 'id'")
        aid = _int_id(aid, label)
        if aid in seen:
            raise ValueError(f"duplicate annotation id {aid}{where}")
        seen.add(aid)
        iid = _int_id(ann.get("image_id", -1), label)
        if iid not in images:
            raise ValueError(
                f"{label} has unknown image_id {iid}; known image ids: {preview(sorted(images))}"
            )
        cid = ann.get("category_id")
        if cid is None or _int_id(cid, label) not in known_cats:
            raise ValueError(f"{label} has unknown category_id {cid!r}; expected one of {cat_ids}")
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ValueError(f"{label} needs bbox [x, y, width, height]; got {box!r}")
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"{label} needs numbers in bbox; got {box!r}") from None
        if not np.isfinite([x, y, w, h]).all():
            raise ValueError(f"{label} has a non-finite bbox {list(box)}")
        if not (w > 0 and h > 0):
            raise ValueError(f"{label} has a box of non-positive size: bbox={list(box)}")
        W, H = images[iid].get("width"), images[iid].get("height")
        tol = 1.0  # COCO boxes are often rounded to the pixel
        if W is not None and (x < -tol or y < -tol or x + w > W + tol or y + h > H + tol):
            raise ValueError(
                f"{label} has a box outside its image: bbox={list(box)} (x+w={x + w:g}, "
                f"y+h={y + h:g}) but image {iid} {images[iid]['file_name']!r} is {W}x{H}"
            )
        anns.append(dict(ann))
    return Coco(images, anns, cats, path)


def _crop_box(x, y, w, h, context: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel window ``(left, top, right, bottom)`` of a box widened by ``context``."""
    left = max(0.0, x - context * w)
    top = max(0.0, y - context * h)
    right = min(float(width), x + w + context * w)
    bottom = min(float(height), y + h + context * h)
    x0, y0 = int(np.floor(left)), int(np.floor(top))
    x1, y1 = max(int(np.ceil(right)), x0 + 1), max(int(np.ceil(bottom)), y0 + 1)
    return x0, y0, x1, y1


def coco_crops(
    root: str | os.PathLike,
    annotations: str | os.PathLike | Mapping[str, Any],
    *,
    image_size: int | tuple[int, int] | None = 32,
    context: float = 0.1,
    mode: str = "RGB",
) -> tuple[IndexedTensorDataset, list[str]]:
    """One crop per annotation, as an in-memory ``(x, y, index)`` dataset.

    Args:
        root: folder the images' ``file_name`` are relative to.
        annotations: COCO JSON path or parsed mapping.
        image_size: side (or ``(height, width)``) every crop is resized to; default 32.
        context: extra margin on every side, as a fraction of the box width/height
            (0.1 adds 10 % each side), clipped at the image border.
        mode: ``"RGB"`` or ``"L"``.

    Returns:
        ``(dataset, class_names)``: ``x`` uint8 (N, C, H, W) (items are float32 in [0, 1]),
        labels = class index of each annotation's category (ascending category id), sources
        ``"<file_name>#ann=<id>"``, rows in annotation-file order.

    Raises:
        ValueError / FileNotFoundError: see :func:`parse_coco`; also for ``context < 0``.
    """
    if float(context) < 0:
        raise ValueError(f"context must be >= 0 (fraction of the box size), got {context!r}")
    size = _normalize_image_size(image_size) or (32, 32)
    pil_mode = _normalize_mode(mode)  # "RGB" or "L"; anything else is an error
    coco = parse_coco(annotations, root)
    if not coco.annotations:
        raise ValueError("COCO annotations hold no annotation; expected at least one box")
    cls_of = {cid: k for k, cid in enumerate(coco.category_ids)}
    base = Path(root).expanduser()
    by_image: dict[int, list[int]] = {}
    for row, ann in enumerate(coco.annotations):
        by_image.setdefault(int(ann["image_id"]), []).append(row)
    n = len(coco.annotations)
    channels = 1 if pil_mode == "L" else 3
    x = torch.empty((n, channels, size[0], size[1]), dtype=torch.uint8)
    for iid, rows in by_image.items():
        img_rec = coco.images[iid]
        with Image.open(base / img_rec["file_name"]) as im:
            im = im.convert(pil_mode)
            for row in rows:
                bx, by, bw, bh = (float(v) for v in coco.annotations[row]["bbox"])
                window = _crop_box(bx, by, bw, bh, float(context), im.width, im.height)
                crop = im.crop(window).resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(crop, dtype=np.uint8)
                arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
                x[row] = torch.from_numpy(np.ascontiguousarray(arr))
    labels = np.array([cls_of[int(a["category_id"])] for a in coco.annotations], dtype=np.int64)
    sources = [
        f"{coco.images[int(a['image_id'])]['file_name']}#ann={int(a['id'])}"
        for a in coco.annotations
    ]
    names = coco.class_names
    log.info("coco_crops: %d annotations on %d images, %d categories", n, len(by_image), len(names))
    ds = IndexedTensorDataset(x, labels, sources=sources, num_classes=len(names), class_names=names)
    return ds, names


def annotation_id(source: str) -> int:
    """The annotation id in a crop's source ``"<file_name>#ann=<id>"``."""
    m = _SOURCE_RE.match(str(source))
    if m is None:
        raise ValueError(f"source {source!r} is not a COCO crop source '<file_name>#ann=<id>'")
    return int(m.group("id"))


def flagged_annotations(
    coco: Coco, issues: pd.DataFrame, *, only_flagged: bool = True
) -> dict[str, Any]:
    """COCO-style JSON of the flagged annotations with their issue scores.

    Args:
        coco: the annotations the crops came from.
        issues: the run's issue table (``dcloop.results.issue_table``): columns ``source``,
            ``given_label``, ``suggested_label``, ``quality``, ``flagged``.
        only_flagged: keep only flagged rows (else every scored annotation).

    Returns:
        ``{"info", "images", "annotations", "categories"}``; each annotation is the original
        record plus ``label_quality``, ``issue_score`` (``1 - label_quality``), ``flagged``
        and ``suggested_category_id``, sorted worst first. Only images with a listed
        annotation are kept.
    """
    ids = coco.category_ids
    by_id = {int(a["id"]): a for a in coco.annotations}
    rows = issues[issues["flagged"].astype(bool)] if only_flagged else issues
    rows = rows.sort_values("quality", kind="stable")
    out = []
    for _, r in rows.iterrows():
        aid = annotation_id(r["source"])
        if aid not in by_id:
            raise ValueError(
                f"annotation id {aid} (source {r['source']!r}) is not in the COCO file"
            )
        ann = dict(by_id[aid])
        q = float(r["quality"])
        sug = int(r["suggested_label"])
        ann.update(
            label_quality=q,
            issue_score=1.0 - q,
            flagged=bool(r["flagged"]),
            suggested_category_id=ids[sug] if 0 <= sug < len(ids) else None,
        )
        out.append(ann)
    keep = {int(a["image_id"]) for a in out}
    return {
        "info": {
            "description": "dcloop: annotations flagged as likely label errors",
            "source": str(coco.path) if coco.path else None,
        },
        "images": [coco.images[i] for i in sorted(keep)],
        "annotations": out,
        "categories": coco.categories,
    }


def draw_flagged(
    coco: Coco,
    flagged: Sequence[Mapping[str, Any]],
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_images: int = 100,
) -> list[Path]:
    """Draws each flagged annotation's box and categories on its image (one PNG each).

    Args:
        coco: the annotations (for category names).
        flagged: annotation records from :func:`flagged_annotations` (worst first).
        root: image folder.
        out_dir: where ``ann<id>.png`` files go.
        max_images: draw at most this many.

    Returns:
        The written paths.
    """
    names = dict(zip(coco.category_ids, coco.class_names, strict=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ann in list(flagged)[:max_images]:
        img = coco.images[int(ann["image_id"])]
        with Image.open(Path(root).expanduser() / img["file_name"]) as im:
            im = im.convert("RGB")
            scale = max(1, int(np.ceil(256 / max(im.size))))
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(im)
        x, y, w, h = (float(v) * scale for v in ann["bbox"])
        draw.rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=max(2, scale))
        given = names.get(int(ann["category_id"]), ann["category_id"])
        sug = names.get(ann.get("suggested_category_id"), ann.get("suggested_category_id"))
        text = f"{given} -> {sug} q={ann.get('label_quality', float('nan')):.2f}"
        tx, ty = x, max(0.0, y - 12)
        draw.rectangle([tx, ty, tx + 7 * len(text), ty + 11], fill=(0, 0, 0))
        draw.text((tx + 1, ty), text, fill=(255, 255, 0))
        path = out / f"ann{int(ann['id'])}.png"
        atomic_write(path, lambda tmp, im=im: im.save(tmp, format="PNG"))
        paths.append(path)
    return paths


#: How COCO crops go to train/val/test: each on its own, or all crops of an image together.
SPLIT_BY: tuple[str, ...] = ("sample", "image")


class CocoSource:
    """COCO boxes as a data source: one crop per annotation (``data=coco``).

    ``LabelNoiseDataModule(source=CocoSource(root, annotations))`` trains on the crops; the run's
    flagged annotations go back out as COCO JSON (:class:`dcloop.beyond.callbacks.CocoResults`).

    Args:
        root: folder the images' ``file_name`` are relative to.
        annotations: COCO JSON file.
        context: margin around each box, as a fraction of its width/height.
        split_by: ``"image"`` (the crops of one image stay in one split, see
            :func:`~dcloop.data.splits.grouped_split_indices`) or ``"sample"`` (stratified).
        image_size: side (or ``(height, width)``) of every crop.
        mode: ``"RGB"`` or ``"L"``.
    """

    name = "coco"

    def __init__(
        self,
        root: str | os.PathLike,
        annotations: str | os.PathLike,
        *,
        context: float = 0.1,
        split_by: str = "image",
        image_size: int | tuple[int, int] = 32,
        mode: str = "RGB",
    ) -> None:
        if root is None or annotations is None:
            raise ValueError(
                f"data=coco needs root=<the folder the images' file_name are relative to> and "
                f"annotations=<COCO JSON file>; got root={root!r}, annotations={annotations!r}"
            )
        if split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {list(SPLIT_BY)}, got {split_by!r}")
        self.root, self.annotations = root, annotations
        self.context, self.split_by = float(context), split_by
        self.image_size, self.mode = image_size, mode

    def load(self, *, seed: int, val_frac: float, test_frac: float):
        """The crops, split into train/val/test, and the category names."""
        full, names = coco_crops(
            self.root,
            self.annotations,
            image_size=self.image_size,
            context=self.context,
            mode=self.mode,
        )
        fracs = {"seed": seed, "val_frac": val_frac, "test_frac": test_frac}
        if self.split_by == "sample":
            return split_dataset(full, **fracs), names
        images = [s.rsplit("#ann=", 1)[0] for s in full.sources]  # crops of one image together
        tr, va, te = grouped_split_indices(full.labels, images, **fracs)
        return {"train": full.subset(tr), "val": full.subset(va), "test": full.subset(te)}, names


def write_coco_results(run_dir: str | os.PathLike, dm: Any, issues: pd.DataFrame) -> Path | None:
    """After a ``data=coco`` run: ``label_issues_coco.json`` and ``flagged_boxes/*.png``.

    Does nothing (returns ``None``) when the data module's source is not ``"coco"``.

    Args:
        run_dir: the run directory.
        dm: the run's data module (its :class:`CocoSource` gives ``root`` and ``annotations``).
        issues: the issue table of the training split (``dcloop.results.issue_table``).

    Returns:
        The JSON path, or ``None``.
    """
    src = getattr(dm, "source_object", None)
    if not isinstance(src, CocoSource):
        return None
    coco = parse_coco(src.annotations, src.root)
    result = flagged_annotations(coco, issues)
    path = write_json(result, Path(run_dir) / "label_issues_coco.json")
    draw_flagged(coco, result["annotations"], src.root, Path(run_dir) / "flagged_boxes")
    log.info("coco: %d flagged annotations -> %s", len(result["annotations"]), path)
    return path


# ---------------------------------------------------------------- synthetic data
def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # cross
        tw, th = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle([x0 + tw, y0, x1 - tw, y1], fill=colour)
        draw.rectangle([x0, y0 + th, x1, y1 - th], fill=colour)


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_images: int = 60,
    objects_per_image: tuple[int, int] = (1, 4),
    image_size: int = 96,
    object_size: tuple[int, int] = (18, 36),
    noise_rate: float = 0.15,
    hue_jitter: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes a small COCO dataset: coloured shapes on noisy backgrounds, some mislabelled.

    Categories are :data:`SYNTHETIC_CATEGORIES` (ids 1..4). Each image gets a random
    number of non-overlapping shapes; a shape's hue is its category's (0, 1/4, 1/2, 3/4 of
    the hue circle) plus Gaussian jitter of ``hue_jitter`` (0.1 = 36 degrees, so neighbouring
    categories' colours overlap; ``hue_jitter=1`` makes colour uninformative), with random
    saturation and value. ``noise_rate`` of the annotations get a wrong (uniformly drawn
    other) category.

    Files: ``<out_dir>/images/img<k>.png``, ``annotations.json`` (the noisy labels) and
    ``truth.json`` (``{"true_category": {ann_id: id}, "corrupted": [ann ids]}``).

    Returns:
        ``{"root", "annotations", "truth", "corrupted", "num_annotations"}``.
    """
    if not 0.0 <= float(noise_rate) < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate!r}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns, truth = [], [], {}
    aid = 0
    lo, hi = object_size
    for k in range(num_images):
        bg = rng.integers(60, 200, 3)
        arr = np.clip(bg + rng.normal(0, 25, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(im)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
            for _try in range(30):
                s = int(rng.integers(lo, hi + 1))
                x0, y0 = (int(v) for v in rng.integers(0, image_size - s, 2))
                box = (x0, y0, x0 + s, y0 + s)
                if all(
                    box[2] <= p[0] or p[2] <= box[0] or box[3] <= p[1] or p[3] <= box[1]
                    for p in placed
                ):
                    break
            else:
                continue
            placed.append(box)
            cat = int(rng.integers(len(SYNTHETIC_CATEGORIES)))
            hue = (cat / len(SYNTHETIC_CATEGORIES) + hue_jitter * rng.normal()) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
            colour = tuple(int(255 * v) for v in rgb)
            _draw_shape(draw, SYNTHETIC_CATEGORIES[cat], box, colour)
            aid += 1
            anns.append(
                {
                    "id": aid,
                    "image_id": k + 1,
                    "category_id": cat + 1,
                    "bbox": [box[0], box[1], s, s],
                    "area": s * s,
                    "iscrowd": 0,
                }
            )
            truth[aid] = cat + 1
        name = f"img{k:04d}.png"
        im.save(out / "images" / name)
        images.append(
            {"id": k + 1, "file_name": f"images/{name}", "width": image_size, "height": image_size}
        )
    n = len(anns)
    corrupted = np.sort(rng.choice(n, size=int(round(noise_rate * n)), replace=False))
    c = len(SYNTHETIC_CATEGORIES)
    for row in corrupted:
        anns[row]["category_id"] = (anns[row]["category_id"] - 1 + int(rng.integers(1, c))) % c + 1
    cats = [
        {"id": i + 1, "name": s, "supercategory": "shape"}
        for i, s in enumerate(SYNTHETIC_CATEGORIES)
    ]
    write_json(
        {"images": images, "annotations": anns, "categories": cats}, out / "annotations.json"
    )
    bad = [int(anns[r]["id"]) for r in corrupted]
    write_json(
        {"true_category": {str(k): v for k, v in truth.items()}, "corrupted": bad},
        out / "truth.json",
    )
    log.info("synthetic COCO: %d images, %d annotations, %d corrupted", num_images, n, len(bad))
    return {
        "root": str(out),
        "annotations": str(out / "annotations.json"),
        "truth": str(out / "truth.json"),
        "corrupted": bad,
        "num_annotations": n,
    }
