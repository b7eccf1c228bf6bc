"""A run folder someone sends you is data: nothing in it is instantiated or unpickled."""

import logging
import os
import pickle
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from people_run import make_run

import dcloop
from dcloop.people.cli import annotators_main, export_main, report_main
from dcloop.people.runconfig import (
    UnsafeRunConfig,
    data_kwargs,
    load_train_dataset,
    read_run_config,
    run_label_file,
)

CONF = Path(dcloop.__file__).parent / "conf"


class _Payload:
    """Unpickling this creates ``marker`` (as a shell command would)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _hostile_run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "received_run"
    make_run(run)
    marker = tmp_path / "PWNED"
    (run / "thumbs.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["eval_batch_size"] = {
        "_target_": "pandas.read_pickle",
        "_args_": [str(run / "thumbs.pkl")],
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, marker


def test_the_hostile_config_would_run_its_payload_if_instantiated(tmp_path):
    """The test below can fail: instantiating this config runs the pickle's payload."""
    from hydra.utils import instantiate

    run, marker = _hostile_run(tmp_path)
    cfg = OmegaConf.load(run / "config.yaml")
    instantiate(cfg.data.eval_batch_size)
    assert marker.exists()


def test_no_command_instantiates_or_unpickles_a_received_config(tmp_path, capsys, caplog):
    run, marker = _hostile_run(tmp_path)
    (tmp_path / "ann.csv").write_text(
        "item,annotator,label\n"
        + "".join(f"{i},a{j},{i % 10}\n" for i in range(12) for j in (1, 2))
    )

    with caplog.at_level(logging.WARNING):
        assert report_main([str(run)]) == 0
    assert not marker.exists()
    assert "refused to rebuild the run's data" in caplog.text
    assert "data.eval_batch_size._target_" in caplog.text
    assert (run / "report.html").is_file()  # the report, without thumbnails
    assert "no preview" in (run / "report.html").read_text()

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert annotators_main([str(run), str(tmp_path / "ann.csv")]) == 0
    assert not marker.exists()
    assert "refused to rebuild the run's data" in caplog.text

    with pytest.raises(SystemExit) as exc:
        export_main([str(run), "--embed", "--out", str(tmp_path / "q")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "dcloop-export: error: refused to rebuild the run's data" in err
    assert "'pandas.read_pickle'" in err and "nothing from a run folder is instantiated" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"_target_": "os.system", "source": "digits"}, r"'os.system' is not one of dcloop"),
        ({"source": "digits"}, r"None is not one of dcloop's data sources"),
        (
            {"_target_": "dcloop.data.LabelNoiseDataModule", "root": "${oc.env:HOME}"},
            r"data.root: '\$\{oc.env:HOME\}' uses a resolver",
        ),
        (
            {"_target_": "dcloop.data.LabelNoiseDataModule", "exec_me": 1},
            r"unknown option\(s\) \['exec_me'\]",
        ),
        (
            {"_target_": "dcloop.data.LabelNoiseDataModule", "noise": {"_partial_": True}},
            r"data.noise._partial_: .*Hydra instantiation key",  # plain values only
        ),
        (
            {
                "_target_": "dcloop.data.LabelNoiseDataModule",
                "audio": {"sample_rate": {"_target_": "builtins.eval", "_args_": ["1"]}},
            },
            r"data.audio.sample_rate._target_: .*Hydra instantiation key",
        ),
        (
            {"_target_": "dcloop.data.LabelNoiseDataModule", "root": "${nowhere}"},
            r"refers to a key the file does not have",
        ),
    ],
)
def test_only_dcloops_own_data_with_plain_values(data, msg):
    with pytest.raises(UnsafeRunConfig, match=msg):
        data_kwargs({"seed": 0, "data": data})


def test_hostile_noise_seed_and_yaml_tags_are_refused(tmp_path):
    ok = {"_target_": "dcloop.data.LabelNoiseDataModule", "source": "digits"}
    with pytest.raises(UnsafeRunConfig, match=r"noise._target_"):
        data_kwargs({"data": ok, "noise": {"_target_": "os.system", "_args_": ["id"]}})
    with pytest.raises(UnsafeRunConfig, match=r"seed: 'abc' is not an integer"):
        data_kwargs({"data": ok, "seed": "abc"})
    (tmp_path / "config.yaml").write_text("data: !!python/object/apply:os.system ['id']\n")
    with pytest.raises(UnsafeRunConfig, match="not a readable YAML file"):
        read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("data:\n  labels: {_target_: os.getcwd}\n")
    with pytest.raises(UnsafeRunConfig, match=r"data.labels._target_"):
        run_label_file(tmp_path)
    (tmp_path / "config.yaml").write_text("a: &a [*a, *a]\ndata: {labels: *a}\n")  # recursive
    with pytest.raises(UnsafeRunConfig, match="nested too deeply"):
        run_label_file(tmp_path)


def test_references_to_other_keys_are_resolved():
    cfg = {
        "seed": 3,
        "data": {
            "_target_": "dcloop.data.LabelNoiseDataModule",
            "source": "folder",  # a run folder from before sources were objects
            "val_frac": "${split.val}",
            "root": "/data/${name}/images",
        },
        "split": {"val": 0.25},
        "name": "cats",
        "noise": {"kind": "symmetric", "rate": 0.1},
    }
    kw = data_kwargs(cfg)
    assert kw["val_frac"] == 0.25 and kw["source"].root == "/data/cats/images" and kw["seed"] == 3
    assert kw["noise"] == {"kind": "symmetric", "rate": 0.1}


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_shipped_data_config_passes_the_whitelist(tmp_path, data):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"data={data}", f"output_dir={tmp_path}"])
    OmegaConf.save(cfg, tmp_path / "config.yaml")  # as train() saves it
    kw = data_kwargs(read_run_config(tmp_path))
    source = cfg.data.source
    if isinstance(kw["source"], str):
        assert kw["source"] == source
    else:  # a source object, rebuilt from the whitelisted class and plain values
        assert f"{type(kw['source']).__module__}.{type(kw['source']).__name__}" == source._target_
    assert kw["seed"] == cfg.seed


def test_a_real_run_still_gets_its_data_back(tmp_path):
    run = tmp_path / "run"
    dm = make_run(run)
    ds = load_train_dataset(run)
    assert ds is not None and len(ds) == dm.num_train
    assert ds.sources == dm.train_dataset.sources
    x, y, i = ds[5]
    assert int(i) == 5 and int(y) == int(dm.given_labels[5])


def test_a_source_object_of_another_class_is_refused(tmp_path):
    cfg = {
        "seed": 0,
        "noise": {"kind": "none"},
        "data": {
            "_target_": "dcloop.data.LabelNoiseDataModule",
            "source": {"_target_": "os.system", "command": "touch pwned"},
        },
    }
    with pytest.raises(UnsafeRunConfig, match=r"data.source._target_: .*os.system"):
        data_kwargs(cfg)
    assert not (tmp_path / "pwned").exists()


def test_a_run_folder_from_before_source_objects_still_gets_its_data_back(tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "img" / name).mkdir(parents=True)
        for k in range(5):
            Image.new("RGB", (6, 6), (40 * k, 0, 0)).save(tmp_path / "img" / name / f"{k}.png")
    old = {  # data.root / image_size / cache beside `source: folder`, as runs wrote them then
        "seed": 0,
        "noise": {"kind": "none"},
        "data": {
            "_target_": "dcloop.data.LabelNoiseDataModule",
            "source": "folder",
            "root": str(tmp_path / "img"),
            "image_size": 4,
            "cache": True,
            "on_bad_file": "error",
            "test_root": None,
            "val_frac": 0.0,
            "test_frac": 0.0,
            "noise": "${noise}",
            "seed": "${seed}",
        },
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    ds = load_train_dataset(tmp_path / "run", required=True)
    assert len(ds) == 10 and ds[0][0].shape == (3, 4, 4) and ds.source(0).endswith("0.png")
