"""The saved kept model without training (issue 21): the format is data (only whitelisted
networks are rebuilt), the averaging rule, the readers, and bad input to dcloop-predict
(one line, exit 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

import dcloop
from dcloop.data.datasets import IndexedTensorDataset
from dcloop.data.sources import _resize
from dcloop.data.tokenize import NgramTokenizer, make_tokenizer
from dcloop.errors import UserInputError
from dcloop.kept import load_model, save_kept_model
from dcloop.kept.cli import predict_main
from dcloop.kept.prepare import Preparer, hf_json, tokenizer_spec
from dcloop.kept.save import preprocess_of
from dcloop.models.nets import SmallCNN

from conftest import RUN_QUIET, compose_dcloop


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A digits data module and config (nothing trained)."""
    tmp = tmp_path_factory.mktemp("digits")
    cfg = compose_dcloop(tmp, *RUN_QUIET, "model=cnn")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return cfg, dm


def nets(k, seed=0):
    torch.manual_seed(seed)
    return [SmallCNN(1, 10) for _ in range(k)]


@pytest.fixture
def saved(tmp_path, digits_setup):
    cfg, dm = digits_setup
    members = nets(3)
    save_kept_model(
        tmp_path, cfg=cfg, dm=dm, nets=members, kind="ensemble", name="ensemble",
        test_accuracy=0.9,
    )  # fmt: skip
    return tmp_path, members, dm


def edit_spec(run, **changes):
    path = run / "model" / "model.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


def test_ensemble_is_the_members_mean_softmax(saved):
    run, members, dm = saved
    x = torch.stack([dm.test_dataset[i][0] for i in range(20)])
    model = load_model(run)
    assert model.kind == "ensemble" and model.test_accuracy == 0.9
    with torch.no_grad():
        want = torch.stack([m.eval()(x).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(model.predict_proba(x, batch_size=7), want)


def test_single_is_the_network_softmax(tmp_path, digits_setup):
    cfg, dm = digits_setup
    (net,) = nets(1, seed=3)
    save_kept_model(
        tmp_path, cfg=cfg, dm=dm, nets=[net], kind="single", name="student", test_accuracy=None
    )
    model = load_model(tmp_path / "model")  # the model folder itself works too
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_proba(x), net.eval()(x).softmax(-1))
    assert model.name == "student" and len(model.members) == 1


def test_save_refuses_a_bad_kind_or_member_count(tmp_path, digits_setup):
    cfg, dm = digits_setup
    with pytest.raises(ValueError, match="kind must be one of"):
        save_kept_model(tmp_path, cfg=cfg, dm=dm, nets=nets(1), kind="mean", name="x",
                        test_accuracy=None)  # fmt: skip
    with pytest.raises(ValueError, match="takes one network; got 2"):
        save_kept_model(tmp_path, cfg=cfg, dm=dm, nets=nets(2), kind="single", name="x",
                        test_accuracy=None)  # fmt: skip
    assert not (tmp_path / "model").exists()


def test_digits_arrays_are_read_as_the_run_read_them(saved, tmp_path):
    run, _, dm = saved
    x = torch.stack([dm.test_dataset[i][0] for i in range(10)])
    np.save(tmp_path / "stack.npy", (x[:, 0] * 16).numpy())  # scikit-learn's 0..16 values
    np.save(tmp_path / "one.npy", (x[0, 0] * 16).numpy())
    model = load_model(run)
    df = model.predict([tmp_path / "stack.npy", tmp_path / "one.npy"], all_probs=True)
    assert df["source"].tolist()[:2] == [f"{tmp_path / 'stack.npy'}:row {i}" for i in range(2)]
    probs = torch.tensor(df[[f"prob_{c}" for c in model.class_names]].to_numpy()).float()
    want = model.predict_proba(x)
    torch.testing.assert_close(probs[:10], want)
    torch.testing.assert_close(probs[10], want[0])


def test_torchvision_style_resize_matches_the_source(tmp_path):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    spec = {"kind": "image", "mode": "RGB", "size": [12, 12], "resize": "tensor"}
    got = Preparer(spec, tmp_path, (3, 12, 12)).file(str(tmp_path / "a.png"))
    stored = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    want = _resize(IndexedTensorDataset(stored, [0]), (12, 12))[0][0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_only_whitelisted_networks_are_rebuilt(saved):
    run, _, _ = saved
    edit_spec(run, net={"_target_": "os.system", "command": "echo hi"})
    with pytest.raises(UserInputError, match="'os.system' is not one of the networks"):
        load_model(run)
    edit_spec(run, net={"_target_": "dcloop.models.nets.SmallCNN", "_partial_": True})
    with pytest.raises(UserInputError, match="_partial_"):
        load_model(run)
    edit_spec(run, members=["../../etc/passwd"])
    with pytest.raises(UserInputError, match="members"):
        load_model(run)
    # a pickle with code in it: refused by weights_only, one line
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    (run / "model" / "member_0.pt").write_bytes(pickle.dumps(Boom()))
    edit_spec(run, members=["member_0.pt"], net={"_target_": "dcloop.models.SmallCNN",
                                                 "in_channels": 1, "num_classes": 10})  # fmt: skip
    with pytest.raises(UserInputError, match="is not a file of plain tensors"):
        load_model(run)


def test_a_network_dcloop_cannot_rebuild_loads_from_its_exported_program(saved):
    run, members, dm = saved
    spec = json.loads((run / "model" / "model.json").read_text())
    assert spec["exported"] == "export/net.pt2"
    edit_spec(run, net=None)
    x = torch.stack([dm.test_dataset[i][0] for i in range(6)])
    model = load_model(run)
    with torch.no_grad():
        want = torch.stack([m.eval()(x).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(model.predict_proba(x), want, atol=1e-6, rtol=1e-5)


def test_import_dcloop_stays_light_and_offers_load_model():
    code = (
        "import sys, dcloop; heavy = [m for m in ('torch', 'lightning') if m in sys.modules]; "
        "print(heavy, callable(dcloop.load_model))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True"], out.stderr
    assert dcloop.load_model is load_model


@pytest.mark.parametrize(
    "args, message",
    [
        (["{run}", "{tmp}/nothere.npy"], "INPUTS: '{tmp}/nothere.npy' does not exist"),
        (["{run}", "{tmp}/notes.txt"], "is not a .npy array file"),
        (["{run}", "{tmp}/empty"], "holds no input file of this model (.npy)"),
        (["{tmp}/empty", "{tmp}/x.npy"], "holds no saved model"),
        (["{tmp}/norun", "{tmp}/x.npy"], "RUN '{tmp}/norun' does not exist"),
        (["{run}", "{tmp}/x.npy", "--batch-size", "zero"], "--batch-size must be a positive"),
        (["{run}", "{tmp}/wrong.npy"], "gives an input of shape (5,); this model takes (1, 8, 8)"),
        (["{run}", "{tmp}/pickled.npy"], "cannot read"),
        (["{run}", "{tmp}/m.csv"], "row 0 (0-based): no such file"),
        (["{run}", "{tmp}/x.npy", "--out", "{tmp}/nodir/p.csv"], "does not exist"),
        (["{run}", "{tmp}/x.npy", "--out", "{tmp}/empty"], "is a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(saved, tmp_path, capsys, args, message):
    run, _, _ = saved
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir(exist_ok=True)
    np.save(tmp_path / "x.npy", np.zeros((8, 8)))
    np.save(tmp_path / "wrong.npy", np.zeros(5))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "m.csv").write_text("path\nmissing.npy\n")
    fill = {"run": run, "tmp": tmp_path}
    with pytest.raises(SystemExit) as exit_:
        predict_main(["--out", str(tmp_path / "p.csv")] + [a.format(**fill) for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dcloop-predict: error: ")
    assert message.format(**fill) in err
    assert not (tmp_path / "p.csv").exists()


def test_predict_writes_the_csv_and_one_line(saved, tmp_path, capsys):
    run, _, _ = saved
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8)))
    out = tmp_path / "p.csv"
    assert predict_main([str(run), str(tmp_path / "x.npy"), "--out", str(out), "--all-probs"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "4 inputs" in line and "'ensemble' (3 members" in line
    head = out.read_text().splitlines()[0].split(",")
    assert head == ["source", "predicted", "probability"] + [f"prob_{k}" for k in range(10)]


def _saved_tokenizer(tmp_path, tok):
    spec, vocab, _ = tokenizer_spec(tok)
    if vocab is not None:
        (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    if spec["kind"] == "hf":
        (tmp_path / "tokenizer.json").write_text(hf_json(tok))
    return Preparer({"kind": "text", "tokenizer": spec}, tmp_path, (tok.max_len,))


def test_text_inputs_are_tokenised_with_the_runs_own_vocabulary(tmp_path):
    train = ["the cat sat on the mat", "a dog ran", "cats and dogs, again!"]
    tok = NgramTokenizer(ngrams=(1, 2), char_ngrams=(3,), hash_buckets=7, max_len=12)
    tok.fit(train)
    new = ["the cat ran again", "unseen words here", "Dog sat"]
    got = _saved_tokenizer(tmp_path, tok).texts(new)
    assert torch.equal(got, tok.encode_batch(new))


def test_a_hugging_face_tokenizer_is_saved_with_the_model(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "cat": 1, "dog": 2}, "[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "source.json"))
    tok = make_tokenizer({"kind": "hf", "path": str(tmp_path / "source.json"), "max_len": 4})
    (tmp_path / "saved").mkdir()
    got = _saved_tokenizer(tmp_path / "saved", tok).texts(["dog cat bird"])
    assert got.tolist() == [[3, 2, 1, 0]]


def test_a_jsonl_manifest_lists_files_relative_to_it(saved, tmp_path):
    run, _, _ = saved
    (tmp_path / "arrays").mkdir()
    for i in range(3):
        np.save(tmp_path / "arrays" / f"{i}.npy", np.full((8, 8), i, dtype=np.float32))
    lines = [json.dumps({"path": f"arrays/{i}.npy", "label": "x"}) for i in (2, 0)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    df = load_model(run).predict(tmp_path / "m.jsonl")
    assert df["source"].tolist() == [str(tmp_path / "arrays" / f"{i}.npy") for i in (2, 0)]


def test_a_network_that_does_not_export_is_logged_and_still_loads(
    tmp_path, digits_setup, monkeypatch, caplog
):
    cfg, dm = digits_setup

    def refuse(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.export, "export", refuse)
    members = nets(2)
    with caplog.at_level("INFO", logger="dcloop.kept.save"):
        save_kept_model(
            tmp_path, cfg=cfg, dm=dm, nets=members, kind="ensemble", name="ensemble",
            test_accuracy=None,
        )  # fmt: skip
    assert "no exported program (SmallCNN does not export: RuntimeError" in caplog.text
    spec = json.loads((tmp_path / "model" / "model.json").read_text())
    assert spec["exported"] is None and not (tmp_path / "model" / "export").exists()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        want = torch.stack([m.eval()(x).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(load_model(tmp_path).predict_proba(x), want)
    with pytest.raises(UserInputError, match="no exported program was saved"):
        load_model(tmp_path, exported=True)


def test_an_unknown_source_predicts_arrays_of_the_input_shape(tmp_path):
    class Mine:
        name = "mine"

    class DM:
        source_object = Mine()

    spec, files = preprocess_of(DM(), [5], "int64")
    assert spec == {"kind": "tensor", "dtype": "int64"} and files == {}
    np.save(tmp_path / "ids.npy", np.arange(5, dtype=np.int32))
    x = Preparer(spec, tmp_path, (5,)).file(str(tmp_path / "ids.npy"))
    assert x.dtype == torch.int64 and x.tolist() == [0, 1, 2, 3, 4]
