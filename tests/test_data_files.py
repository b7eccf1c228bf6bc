"""Tests for file-backed datasets, torchvision loading and the (x, y, index) contract."""

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dcloop.data import (
    FileDataset,
    ImageReader,
    IndexedTensorDataset,
    WithIndex,
    check_item,
    csv_manifest,
    decode_files,
    image_folder,
    torchvision_dataset,
)


def _png(path, value, size=(6, 4), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, 255 - value, 0) if mode == "RGB" else value
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    for cls, n in (("cat", 3), ("dog", 2), ("bird", 1)):
        for k in range(n):
            _png(root / cls / f"{k}.png", 40 * k + 10)
    (root / "dog" / "notes.txt").write_text("not an image")
    _png(root / "dog" / "sub" / "deep.PNG", 200)
    return root


def test_image_folder_labels_classes_and_sources(tree):
    ds, names = image_folder(tree)
    assert names == ["bird", "cat", "dog"]
    assert ds.class_names == names and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2, 2]
    assert ds.source(0).endswith("bird/0.png")
    assert any(s.endswith("sub/deep.PNG") for s in ds.sources)
    x, y, i = ds[1]
    assert x.shape == (3, 4, 6) and x.dtype == torch.float32 and (y, i) == (1, 1)
    assert float(x[0].max()) == pytest.approx(10 / 255)


def test_image_folder_resize_and_grayscale(tree):
    ds, _ = image_folder(tree, image_size=5, mode="grayscale")
    x, _, _ = ds[0]
    assert x.shape == (1, 5, 5)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    ds2, _ = image_folder(tree, image_size=(3, 7), mode="L")
    assert ds2[0][0].shape == (1, 3, 7)


def test_with_labels_and_subset(tree):
    ds, _ = image_folder(tree)
    noisy = ds.with_labels(np.zeros(len(ds), dtype=int))
    assert noisy[4][1] == 0 and ds[4][1] == 2 and noisy.paths == ds.paths
    sub = ds.subset([4, 0])
    assert [sub[k][2] for k in range(2)] == [0, 1]
    assert sub.source(0) == ds.source(4) and sub.labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match="length"):
        ds.with_labels([0, 1])


def test_image_folder_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        image_folder(missing)
    assert "root=" in str(err.value)


def test_image_folder_empty_class_folder(tmp_path):
    _png(tmp_path / "a" / "0.png", 1)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="'b'"):
        image_folder(tmp_path)


def test_corrupt_file_error_names_it(tree):
    bad = tree / "cat" / "9.png"
    bad.write_bytes(b"this is not a png")
    ds, _ = image_folder(tree)
    row = ds.sources.index(str(bad))
    with pytest.raises(OSError, match="9.png"):
        ds[row]


def _manifest(tmp_path, rows, header="path,label"):
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_manifest_with_names_and_ints(tree, tmp_path):
    rows = ["cat/0.png,cat", "dog/0.png,dog", "bird/0.png,bird", "cat/1.png,cat"]
    ds, names = csv_manifest(tree, _manifest(tmp_path, rows))
    assert names == ["bird", "cat", "dog"] and ds.labels.tolist() == [1, 2, 0, 1]
    assert ds.source(1) == str(tree / "dog" / "0.png")
    ds_int, names_int = csv_manifest(tree, _manifest(tmp_path, ["cat/0.png,2", "dog/0.png,0"]))
    assert ds_int.labels.tolist() == [2, 0] and names_int == ["0", "1", "2"]
    ds_cn, names_cn = csv_manifest(
        tree, _manifest(tmp_path, ["cat/0.png,cat", "dog/0.png,dog"]), class_names=["dog", "cat"]
    )
    assert ds_cn.labels.tolist() == [1, 0] and names_cn == ["dog", "cat"]
    assert ds_cn[0][0].shape == (3, 4, 6)


def test_csv_manifest_relative_to_root_and_untouched(tree):
    manifest = tree / "list.csv"
    manifest.write_text("path,label\ncat/0.png,1\n")
    before = manifest.read_bytes()
    ds, _ = csv_manifest(tree, "list.csv")
    assert len(ds) == 1
    assert manifest.read_bytes() == before


def test_csv_manifest_errors(tree, tmp_path):
    with pytest.raises(ValueError, match="label"):
        csv_manifest(tree, _manifest(tmp_path, ["cat/0.png"], header="path"))
    with pytest.raises(ValueError, match="no rows"):
        csv_manifest(tree, _manifest(tmp_path, []))
    rows = [f"missing{k}.png,0" for k in range(7)] + ["cat/0.png,0"]
    with pytest.raises(FileNotFoundError) as err:
        csv_manifest(tree, _manifest(tmp_path, rows))
    msg = str(err.value)
    assert "7 image file(s)" in msg and "missing0.png" in msg and "missing4.png" in msg
    assert "missing6.png" not in msg
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        csv_manifest(tree, tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="not a known class"):
        csv_manifest(tree, _manifest(tmp_path, ["cat/0.png,cow"]), class_names=["cat"])


def test_torchvision_missing_root_never_downloads(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    for module in (tv_cifar, tv_mnist):
        monkeypatch.setattr(module, "download_and_extract_archive", no_download)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        torchvision_dataset("cifar10", tmp_path, train=True)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="MNIST"):
        torchvision_dataset("mnist", tmp_path / "absent", train=False)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="cifar10"):
        torchvision_dataset("imagenet", tmp_path, train=True)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.tobytes())


def test_torchvision_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = torchvision_dataset("mnist", tmp_path, train=True)
    assert len(ds) == 6 and ds.num_classes == 10
    x, y, i = ds[4]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and (y, i) == (4, 4)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert ds.source(4) == "mnist:train:4"
    assert torchvision_dataset("mnist", tmp_path, train=False).source(2) == "mnist:test:2"


def test_indexed_tensor_dataset():
    x = torch.rand(4, 1, 2, 2)
    ds = IndexedTensorDataset(x, [0, 1, 2, 1], sources=["a", "b", "c", "d"], num_classes=3)
    x1, y1, i1 = ds[1]
    assert torch.equal(x1, x[1]) and (y1, i1) == (1, 1)
    assert ds.labels.dtype == np.int64 and ds.source(2) == "c"
    assert IndexedTensorDataset(x, [0, 0, 0, 0]).source(3) == "row:3"
    t = IndexedTensorDataset(x, [0, 1, 2, 1], transform=lambda v: v * 0)
    assert float(t[0][0].abs().sum()) == 0.0
    new = ds.with_labels([2, 2, 2, 2])
    assert new.x is ds.x and new[0][1] == 2 and ds[0][1] == 0 and new.source(0) == "a"
    u8 = IndexedTensorDataset(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), [0])
    assert u8[0][0].dtype == torch.float32 and float(u8[0][0].max()) == 1.0
    with pytest.raises(ValueError, match="same length"):
        IndexedTensorDataset(x, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        IndexedTensorDataset(x, [0, 1, 2, 1], num_classes=2)


def test_check_item_and_with_index():
    x = torch.zeros(1, 2, 2)
    check_item((x, 1, 0))
    check_item((x, 1, np.int64(3)))
    check_item((x, 1, torch.tensor(2)))
    for bad in [(x, 1), (x, 1, 0.5), (x, 1, "0"), x]:
        with pytest.raises(ValueError, match=r"\(x, y, index\).*WithIndex"):
            check_item(bad)

    base = torch.utils.data.TensorDataset(torch.rand(3, 1, 2, 2), torch.tensor([2, 0, 1]))
    wrapped = WithIndex(base)
    item = wrapped[2]
    check_item(item)
    assert item[1:] == (1, 2) and len(wrapped) == 3
    assert wrapped.labels.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        WithIndex(IndexedTensorDataset(torch.rand(2, 1), [0, 1]))[0]


def test_image_reader_bad_mode_and_file_dataset_checks(tree):
    with pytest.raises(ValueError, match="mode"):
        ImageReader(mode="CMYK")
    ok = ImageReader(image_size=3, mode="L")
    ds = FileDataset([str(tree / "cat" / "0.png")], [0], ok, num_classes=2)
    assert ds[0][0].shape == (1, 3, 3) and ds.source(0).endswith("0.png")
    with pytest.raises(ValueError, match="1 paths but 2 labels"):
        FileDataset([str(tree / "cat" / "0.png")], [0, 1], ok)
    with pytest.raises(ValueError, match="reader must be a callable"):
        FileDataset([str(tree / "cat" / "0.png")], [0], reader="PIL")


class _CountingReader:
    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append(path)
        if path.endswith("bad"):
            raise OSError(f"could not read {path}")
        return torch.full((1, 2), float(len(path)))


def test_decode_files_reads_every_file_once_and_skips_the_bad_ones():
    reader = _CountingReader()
    ds = FileDataset(["a", "bb", "bad", "cccc"], [0, 1, 0, 1], reader)
    out, skipped = decode_files(ds, on_bad_file="skip")
    assert reader.calls == ["a", "bb", "bad", "cccc"]  # one read each: checked and cached
    assert [p for p, _ in skipped] == ["bad"] and out.sources == ["a", "bb", "cccc"]
    assert out.labels.tolist() == [0, 1, 1] and out[2][0].tolist() == [[4.0, 4.0]]
    with pytest.raises(ValueError, match=r"1 file\(s\) cannot be read: 'bad'"):
        decode_files(ds)
