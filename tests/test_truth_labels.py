"""True labels beside the given ones (``data.source.truth_manifest``): real noise, scored."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dcloop.data import CsvManifest, LabelNoiseDataModule
from dcloop.data.noise import inject_noise
from dcloop.data.sources import ImageFolder
from dcloop.data.truth import folder_truth, read_truth_manifest, truth_of, with_truth
from dcloop.errors import UserInputError

from conftest import RUN_QUIET, compose_dcloop

CLASSES = ("bird", "cat", "dog")


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, (7 * value) % 256)).save(path)


@pytest.fixture
def data(tmp_path):
    """12 images per class under ``imgs/<true class>/``; ``given.csv`` has 6 of them wrong
    (people's noise), ``truth.csv`` the folder names."""
    root = tmp_path / "imgs"
    rows = []
    for c, cls in enumerate(CLASSES):
        for k in range(12):
            _png(root / cls / f"{k}.png", 60 * c + 4 * k)
            rows.append((f"{cls}/{k}.png", cls))
    truth = pd.DataFrame(rows, columns=["path", "label"])
    given = truth.copy()
    wrong = [0, 5, 13, 20, 27, 33]  # two per class, to the next class
    for i in wrong:
        given.loc[i, "label"] = CLASSES[(CLASSES.index(truth.label[i]) + 1) % 3]
    given.to_csv(tmp_path / "given.csv", index=False)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    return root, tmp_path / "given.csv", tmp_path / "truth.csv", wrong


def _dm(root, given, truth=None, **kw):
    src = CsvManifest(root, given, truth_manifest=truth, image_size=8)
    dm = LabelNoiseDataModule(src, val_frac=0.25, test_frac=0.25, num_workers=0, **kw)
    dm.setup()
    return dm


def _message(fn, *args, **kw):
    with pytest.raises(UserInputError) as err:
        fn(*args, **kw)
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------ the reader
def test_truth_manifest_gives_every_file_its_true_class(data):
    root, given, truth, wrong = data
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    got = read_truth_manifest(truth, root, paths, list(CLASSES))
    ids = truth_of(got, paths)
    assert ids.tolist() == [c for c in range(3) for _ in range(12)]


def test_class_ids_and_a_relative_truth_path_in_root(data, tmp_path):
    root, given, _, _ = data
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    df = pd.DataFrame({"path": [p.split("imgs/")[1] for p in paths], "label": [1] * 36})
    df.to_csv(root / "ids.csv", index=False)
    got = read_truth_manifest("ids.csv", root, paths, list(CLASSES))  # looked up in root
    assert set(got.values()) == {1}


def test_a_path_the_data_lacks_names_its_row_and_the_file(data):
    root, given, truth, _ = data
    df = pd.read_csv(truth)
    df.loc[4, "path"] = "cat/99.png"
    df.to_csv(truth, index=False)
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    text = _message(read_truth_manifest, truth, root, paths, list(CLASSES), listed_in=given)
    assert "row 6" in text and "'cat/99.png'" in text and str(truth) in text
    assert str(given) in text


def test_a_file_the_truth_lacks_names_the_manifest_row(data):
    root, given, truth, _ = data
    pd.read_csv(truth).drop(index=[7, 30]).to_csv(truth, index=False)
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    text = _message(read_truth_manifest, truth, root, paths, list(CLASSES), listed_in=given)
    assert "no row for" in text and "bird/7.png" in text and f"row 9 of manifest '{given}'" in text
    assert str(truth) in text and "34 of 36" in text


def test_an_unknown_class_names_its_row(data):
    root, given, truth, _ = data
    df = pd.read_csv(truth)
    df.loc[10, "label"] = "zebra"
    df.loc[20, "path"] = "nowhere.png"  # a later bad row: the first one is named
    df.to_csv(truth, index=False)
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    text = _message(read_truth_manifest, truth, root, paths, list(CLASSES))
    assert "row 12" in text and "'zebra'" in text and str(truth) in text
    assert "'bird'" in text  # what was expected


def test_a_file_listed_twice_with_two_labels(data):
    root, given, truth, _ = data
    df = pd.read_csv(truth)
    df = pd.concat([df, pd.DataFrame({"path": ["bird/3.png"], "label": ["dog"]})])
    df.to_csv(truth, index=False)
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    text = _message(read_truth_manifest, truth, root, paths, list(CLASSES))
    assert "row 38" in text and "row 5" in text and "'bird/3.png'" in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "is empty"), ("file,class\na,b\n", "lacks column(s) ['path', 'label']")],
)
def test_malformed_truth_files(data, content, expected):
    root, given, truth, _ = data
    truth.write_text(content)
    paths = [str(root / p) for p in pd.read_csv(given)["path"]]
    assert expected in _message(read_truth_manifest, truth, root, paths, list(CLASSES))


def test_a_missing_truth_file_names_it(data):
    root, given, _, _ = data
    with pytest.raises(FileNotFoundError, match="no_truth.csv"):
        read_truth_manifest("no_truth.csv", root, [], list(CLASSES))


def test_folder_truth_takes_the_parent_folder(data, tmp_path):
    root, given, truth, _ = data
    out = folder_truth(given, tmp_path / "made" / "truth.csv")
    assert pd.read_csv(out).equals(pd.read_csv(truth))


def test_with_truth_scores_given_labels_against_the_truth():
    given = np.array([0, 0, 1, 1, 2, 2])
    noise = inject_noise(given, kind="none", rate=0.0, num_classes=3, seed=0)
    assert not noise.is_noisy.any()
    scored = with_truth(noise, np.array([0, 1, 1, 1, 2, 0]))
    assert scored.is_noisy.tolist() == [False, True, False, False, False, True]
    assert scored.given_labels.tolist() == given.tolist()
    assert scored.noise_matrix[0, 1] == pytest.approx(1 / 3)  # P(given 0 | true 1)
    assert scored.noise_matrix[0, 0] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="shape"):
        with_truth(noise, np.array([0, 1]))


# ------------------------------------------------------------------ the data module
def test_data_module_ground_truth_is_the_truth_manifest(data):
    root, given, truth, wrong = data
    plain = _dm(root, given)
    assert not plain.has_ground_truth  # people's labels, nothing to score against
    dm = _dm(root, given, truth)
    assert dm.has_ground_truth
    sources = dm.train_sources
    true = np.array([CLASSES.index(s.split("/")[-2]) for s in sources])
    assert dm.true_labels.tolist() == true.tolist()
    assert dm.given_labels.tolist() == plain.given_labels.tolist()  # the given stay given
    want_noisy = [any(s.endswith(f"imgs/{_path(given, i)}") for i in wrong) for s in sources]
    assert dm.is_noisy.tolist() == want_noisy and dm.is_noisy.any()
    m = dm.noise.noise_matrix
    assert np.allclose(m.sum(0), 1.0) and not np.allclose(m, np.eye(3))


def _path(manifest, i):
    return pd.read_csv(manifest)["path"][i]


def test_truth_manifest_with_injected_noise_on_top(data):
    root, given, truth, _ = data
    dm = _dm(root, given, truth, noise={"kind": "symmetric", "rate": 0.5})
    true = np.array([CLASSES.index(s.split("/")[-2]) for s in dm.train_sources])
    assert dm.true_labels.tolist() == true.tolist()
    assert dm.is_noisy.tolist() == (dm.given_labels != true).tolist()


def test_image_folder_truth_manifest(data, tmp_path):
    root, _, truth, _ = data
    relabel = pd.read_csv(truth)
    relabel.loc[[1, 2], "label"] = "dog"  # the truth says two folder labels are wrong
    relabel.to_csv(tmp_path / "folder_truth.csv", index=False)
    src = ImageFolder(root, image_size=8, truth_manifest=tmp_path / "folder_truth.csv")
    dm = LabelNoiseDataModule(src, val_frac=0.0, test_frac=0.25, num_workers=0)
    dm.setup()
    assert dm.has_ground_truth
    wrong = {str(root / "bird" / "1.png"), str(root / "bird" / "2.png")}
    assert {s for s, n in zip(dm.train_sources, dm.is_noisy, strict=True) if n} <= wrong


def test_a_bad_truth_manifest_fails_setup_with_one_line(data):
    root, given, truth, _ = data
    pd.read_csv(truth).iloc[:-1].to_csv(truth, index=False)
    text = _message(_dm, root, given, truth)
    assert "dog/11.png" in text and "row 37" in text


@pytest.mark.slow
def test_a_real_noise_run_reports_detection(data, tmp_path):
    root, given, truth, _ = data
    cfg = compose_dcloop(
        tmp_path / "run",
        *RUN_QUIET,
        "data=csv",
        f"data.source.root={root}",
        f"data.source.manifest={given}",
        f"data.source.truth_manifest={truth}",
        "data.source.image_size=8",
        "data.num_workers=0",
        "data.test_frac=0.25",
        "data.val_frac=0.15",
        "noise=none",
        "model=mlp",
        "folds=2",
        "trainer.max_epochs=2",
        "cl.warmup_epochs=1",
        "report=false",
    )
    from dcloop.train import train

    metrics = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"precision", "recall", "f1"} <= set(saved["detection"])
    assert metrics["noise_injected"]["kind"] == "none"
    assert metrics["noise_injected"]["num_noisy"] > 0
    labels = pd.read_csv(tmp_path / "run" / "labels.csv")
    assert labels["is_noisy"].sum() == metrics["noise_injected"]["num_noisy"]


class _OwnSource:
    """A source of one's own that knows the truth: ``true_labels(train_dataset)``."""

    name = "own"

    def __init__(self, truth):
        self.truth = truth

    def load(self, *, seed, val_frac, test_frac):
        from dcloop.data.digits import load_digits_full
        from dcloop.data.splits import split_dataset

        full = load_digits_full()
        return split_dataset(full, seed=seed, val_frac=val_frac, test_frac=test_frac), [
            str(k) for k in range(10)
        ]

    def true_labels(self, dataset):
        return self.truth(dataset)


def test_a_source_of_your_own_gives_the_truth():
    dm = LabelNoiseDataModule(_OwnSource(lambda ds: (ds.labels + 1) % 10))
    dm.setup()
    assert dm.has_ground_truth and dm.is_noisy.all()
    assert (dm.true_labels == (dm.given_labels + 1) % 10).all()
    bad = LabelNoiseDataModule(_OwnSource(lambda ds: ds.labels[:-1]))
    with pytest.raises(ValueError, match=r"true_labels\(\) must give \d+ integer class ids"):
        bad.setup()
    bad = LabelNoiseDataModule(_OwnSource(lambda ds: ds.labels + 10))
    with pytest.raises(ValueError, match=r"true labels must lie in \[0, 10\)"):
        bad.setup()


def test_the_run_summary_names_real_noise(tmp_path):
    from dcloop.console import run_summary

    metrics = {
        "data": {"source": "csv", "num_train": 100, "num_classes": 3},
        "cleaning": {"num_flagged": 40, "num_folds": 5, "action": "prune"},
        "noise": {"rate": 0.4},
        "test": {"accuracy": 0.5},
        "noise_injected": {"kind": "none", "rate": 0.0, "num_noisy": 42, "rate_actual": 0.42},
    }
    text = run_summary(metrics, tmp_path, [])
    assert "42 labels (42.0%) wrong by the truth manifest" in text
    assert "made wrong on purpose" not in text
