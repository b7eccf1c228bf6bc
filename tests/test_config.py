from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import dcloop
from dcloop.train import net_factory

CONF = Path(dcloop.__file__).parent / "conf"


def groups():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(group.glob("*.yaml")):
            yield group.name, option.stem


def compose_cfg(overrides, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("group, option", list(groups()))
def test_every_config_option_composes_and_instantiates(group, option, tmp_path):
    if group == "experiment":
        cfg = compose_cfg([f"experiment={option}"], tmp_path)
    else:
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)
    if group == "trainer":
        instantiate(cfg.trainer, accelerator="cpu", precision="32-true", logger=False)
    elif group == "model":
        net = net_factory(cfg.model.net, (1, 8, 8), 10)()
        assert sum(p.numel() for p in net.parameters()) > 0
    elif group == "logger" and cfg.get("logger"):
        instantiate(cfg.logger)
    elif group == "data":
        dm = (
            instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise), seed=0, _convert_="all")
            if option == "digits"
            else None
        )
        if dm is not None:
            dm.setup()
            assert dm.num_train > 1000
    assert cfg.folds == 5


def test_issue_command_line_composes(tmp_path):
    cfg = compose_cfg(
        [
            "noise.kind=asymmetric",
            "noise.rate=0.4",
            "cl.action=prune",
            "trainer.max_epochs=30",
            "seed=0",
        ],
        tmp_path,
    )
    assert cfg.noise.kind == "asymmetric" and cfg.noise.rate == 0.4
    assert cfg.cl.action == "prune" and cfg.trainer.max_epochs == 30


def test_user_data_configs_require_a_root(tmp_path):
    cfg = compose_cfg(["data=folder"], tmp_path)
    with pytest.raises(Exception, match="root"):
        OmegaConf.to_container(cfg.data, throw_on_missing=True)
