import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dcloop.beyond.cli import main as beyond_main
from dcloop.beyond.detection import (
    CocoSource,
    annotation_id,
    coco_crops,
    draw_flagged,
    flagged_annotations,
    make_synthetic_coco,
    parse_coco,
)
from dcloop.data import LabelNoiseDataModule


def _two_box_coco(tmp_path):
    """One 40x20 image: a pure red box at (4, 2, 8x6) and a pure blue box at (20, 10, 10x8)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[2:8, 4:12] = (255, 0, 0)
    arr[10:18, 20:30] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 5, "bbox": [20, 10, 10, 8]},
            {"id": 100, "image_id": 7, "category_id": 3, "bbox": [4, 2, 8, 6]},
        ],
        "categories": [{"id": 5, "name": "blue"}, {"id": 3, "name": "red"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return data, path


def test_crops_map_back_to_annotations_and_hold_the_box(tmp_path):
    data, path = _two_box_coco(tmp_path)
    ds, names = coco_crops(tmp_path, path, image_size=8, context=0.0)
    assert names == ["red", "blue"]  # class order = ascending category id (3, 5)
    assert [annotation_id(ds.source(i)) for i in range(2)] == [101, 100]
    assert ds.source(0) == "a.png#ann=101"
    assert ds.labels.tolist() == [1, 0]
    x0, y0, _ = ds[0]
    x1, _, _ = ds[1]
    assert x0.shape == (3, 8, 8)
    # crop of ann 101 is the blue box, of ann 100 the red box, no background (context 0)
    assert np.allclose(x0.mean((1, 2)).numpy(), [0, 0, 1], atol=0.02)
    assert np.allclose(x1.mean((1, 2)).numpy(), [1, 0, 0], atol=0.02)
    # with context, background (black) enters the crop
    ds_ctx, _ = coco_crops(tmp_path, path, image_size=8, context=0.5)
    assert ds_ctx[1][0][0].mean() < 0.9


def test_datamodule_coco_splits_keep_annotation_identity(tmp_path):
    info = make_synthetic_coco(tmp_path / "s", num_images=12, noise_rate=0.2, seed=1)
    coco = json.loads(Path(info["annotations"]).read_text())
    cat_of = {a["id"]: a["category_id"] for a in coco["annotations"]}
    dm = LabelNoiseDataModule(
        CocoSource(info["root"], info["annotations"], image_size=16, split_by="sample"),
        noise=None,
        val_frac=0.2,
        test_frac=0.2,
    )
    dm.setup()
    assert dm.num_train + len(dm.val_dataset) + len(dm.test_dataset) == info["num_annotations"]
    seen = set()
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        for i in range(len(ds)):
            aid = annotation_id(ds.source(i))
            assert ds.labels[i] == cat_of[aid] - 1  # category ids 1..4 -> classes 0..3
            seen.add(aid)
    assert seen == set(cat_of)
    assert dm.input_shape == (3, 16, 16)
    truth = json.loads(Path(info["truth"]).read_text())
    assert len(truth["corrupted"]) == round(0.2 * info["num_annotations"])
    assert all(cat_of[a] != truth["true_category"][str(a)] for a in truth["corrupted"])


def test_split_by_image_keeps_each_images_crops_in_one_split(tmp_path):
    info = make_synthetic_coco(tmp_path / "s", num_images=40, noise_rate=0.0, seed=2)
    kw = dict(root=info["root"], annotations=info["annotations"], image_size=8)
    parts = {}
    for split_by in ("sample", "image"):
        dm = LabelNoiseDataModule(CocoSource(split_by=split_by, **kw), seed=0, noise=None)
        dm.setup()
        images = [
            {s.rsplit("#ann=", 1)[0] for s in ds.sources}
            for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)
        ]
        parts[split_by] = images
        n = dm.num_train + len(dm.val_dataset) + len(dm.test_dataset)
        assert n == info["num_annotations"]
    tr, va, te = parts["image"]
    assert not (tr & va) and not (tr & te) and not (va & te) and va and te
    tr, va, te = parts["sample"]
    assert tr & te  # independent crops share images across splits: what "image" prevents
    with pytest.raises(ValueError, match="split_by must be one of"):
        CocoSource(split_by="box", **kw)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (
            lambda d: d["annotations"][0].update(bbox=[35, 10, 10, 8]),
            ValueError,
            ["id=101", "outside", "40x20"],
        ),
        (
            lambda d: d["annotations"][1].update(bbox=[4, 2, 0, 6]),
            ValueError,
            ["id=100", "non-positive"],
        ),
        (
            lambda d: d["annotations"][1].update(category_id=9),
            ValueError,
            ["id=100", "category_id 9", "[3, 5]"],
        ),
        (lambda d: d["annotations"][0].update(image_id=8), ValueError, ["id=101", "image_id 8"]),
        (
            lambda d: d["images"][0].update(file_name="missing.png"),
            FileNotFoundError,
            ["missing.png"],
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 4, 4]),
            ValueError,
            ["id=101", "non-finite bbox"],
        ),
        (lambda d: d["annotations"][0].update(image_id="x"), ValueError, ["integers", "'x'"]),
        (lambda d: d["categories"][0].pop("id"), ValueError, ["category", "None"]),
        (lambda d: d["annotations"].append("box"), ValueError, ["must be objects", "'box'"]),
    ],
)
def test_bad_coco_input_names_the_offender(tmp_path, change, error, words):
    data, path = _two_box_coco(tmp_path)
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(error) as info:
        coco_crops(tmp_path, path)
    for w in words:
        assert w in str(info.value)


def test_coco_source_needs_annotations_and_a_known_mode(tmp_path):
    with pytest.raises(ValueError, match="needs root=.* and annotations=<COCO JSON file>"):
        CocoSource(tmp_path, None)
    data, path = _two_box_coco(tmp_path)
    with pytest.raises(ValueError, match="mode must be 'RGB'"):
        coco_crops(tmp_path, path, mode="rbg")
    with pytest.raises(ValueError, match="must be a JSON object"):
        path.write_text("[]")
        coco_crops(tmp_path, path)


def test_flagged_annotations_json_and_drawing(tmp_path):
    data, path = _two_box_coco(tmp_path)
    coco = parse_coco(path, tmp_path)
    issues = pd.DataFrame(
        {
            "source": ["a.png#ann=101", "a.png#ann=100"],
            "given_label": [1, 0],
            "suggested_label": [0, 0],
            "quality": [0.05, 0.9],
            "flagged": [True, False],
        }
    )
    out = flagged_annotations(coco, issues)
    assert [a["id"] for a in out["annotations"]] == [101]
    ann = out["annotations"][0]
    assert ann["category_id"] == 5 and ann["suggested_category_id"] == 3
    assert ann["issue_score"] == pytest.approx(0.95) and ann["bbox"] == [20, 10, 10, 8]
    assert [i["id"] for i in out["images"]] == [7]
    paths = draw_flagged(coco, out["annotations"], tmp_path, tmp_path / "boxes")
    assert [p.name for p in paths] == ["ann101.png"]
    img = np.asarray(Image.open(paths[0]).convert("RGB"))
    scale = img.shape[1] // 40
    # the box outline (red) runs along the annotation's left edge
    col = img[12 * scale : 17 * scale, 20 * scale]
    assert (col[:, 0] > 200).all() and (col[:, 2] < 50).all()


def test_cli_make_coco(tmp_path, capsys):
    assert beyond_main(["make-coco", str(tmp_path / "c"), "--images", "3"]) == 0
    out = capsys.readouterr().out
    assert "data=coco" in out
    coco = parse_coco(tmp_path / "c" / "annotations.json", tmp_path / "c")
    assert len(coco.images) == 3 and len(coco.annotations) >= 3


@pytest.mark.slow
def test_coco_in_the_loop_writes_flagged_annotations(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import dcloop
    from dcloop.train import train

    info = make_synthetic_coco(tmp_path / "s", num_images=40, noise_rate=0.2, seed=0)
    GlobalHydra.instance().clear()
    conf = str(Path(dcloop.__file__).parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"output_dir={tmp_path / 'run'}",
                "logger=none",
                "checkpoint=false",
                "trainer.enable_progress_bar=false",
                "data=coco",
                f"data.source.root={info['root']}",
                f"data.source.annotations={info['annotations']}",
                "noise=none",
                "trainer.max_epochs=4",
                "cl.warmup_epochs=2",
                "folds=3",
                "data.source.image_size=16",
            ],
        )
    train(cfg)
    out = json.loads((tmp_path / "run" / "label_issues_coco.json").read_text())
    issues = pd.read_csv(tmp_path / "run" / "label_issues.csv")
    assert len(out["annotations"]) == int(issues["flagged"].sum())
    ids = {a["id"] for a in out["annotations"]}
    assert ids == {annotation_id(s) for s in issues.loc[issues["flagged"], "source"]}
    assert len(list((tmp_path / "run" / "flagged_boxes").glob("ann*.png"))) == len(ids)
