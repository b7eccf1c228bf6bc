"""Every option of every config group composes and builds what it configures."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import dcloop
from dcloop.callbacks import ConfidentLearning, RunResults, WeakClasses
from dcloop.data.noise import inject_noise, resolve_mapping
from dcloop.models.factory import module_kwargs, net_factory
from dcloop.train import instantiate_callbacks

CONF = Path(dcloop.__file__).parent / "conf"
NO_FILES = {"digits", "audio_synth", "text_synth"}  # data options that need no files
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def groups():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(group.glob("*.yaml")):
            yield group.name, option.stem


def data_for(option: str) -> str:
    """The embedded data a model / augment option runs on."""
    if option.startswith("text"):
        return "data=text_synth"
    if option.startswith("audio"):
        return "data=audio_synth"
    return "data=digits"


def small(*overrides):
    """Small embedded data sets, so that each option builds in seconds."""
    extra = {
        "data=audio_synth": "data.source.num_per_class=6",
        "data=text_synth": "data.source.num_per_class=30",
    }
    return [*overrides, *(extra[o] for o in overrides if o in extra)]


def test_every_group_option_is_covered():
    assert {g for g, _ in groups()} == {
        *("augment", "callbacks", "cl", "data", "experiment", "hparams_search"),
        *("logger", "model", "noise", "sweep", "trainer"),
    }


SLOW = {("logger", "mlflow"), ("logger", "wandb")}  # 10-20 s each (databases, run folders)


@pytest.mark.parametrize(
    "group, option",
    [pytest.param(*o, marks=pytest.mark.slow) if o in SLOW else o for o in groups()],
)
def test_every_config_option_composes_and_instantiates(group, option, compose_config, tmp_path):
    over = f"{group}={option}"
    if group == "data":
        cfg = compose_config(over) if option not in NO_FILES else compose_config(*small(over))
        if option in NO_FILES:
            dm = instantiate(cfg.data)
            dm.setup()
            assert dm.num_train > 0 and dm.num_classes >= 2
        else:  # needs the user's files: the missing keys are named, and a wrong path is named
            missing = {k.removeprefix("data.") for k in OmegaConf.missing_keys(cfg.data)}
            assert missing and missing <= {
                "source.manifest",
                "source.root",
                "source.annotations",
                "source.path",
            }
            for key in missing:
                OmegaConf.update(cfg.data, key, str(tmp_path / "nothing_here"))
            with pytest.raises(Exception, match="nothing_here"):
                instantiate(cfg.data).setup()
    elif group == "model":
        cfg = compose_config(*small(over, data_for(option)))
        dm = instantiate(cfg.data)
        dm.setup()
        x = dm.train_dataset[0][0]
        if option in ("resnet18", "resnet34", "resnet50", "wide_resnet50_2") or "net" in option:
            x = torch.rand(3, 32, 32)  # torchvision nets: a CIFAR-sized image
        shape = tuple(x.shape)
        make = net_factory(cfg.model.net, shape, 10, dm.net_kwargs, example=x)
        net = make().eval()
        with torch.no_grad():
            assert net(x.unsqueeze(0).repeat(2, *[1] * x.dim())).shape == (2, 10)
        import inspect

        from dcloop.models import FoldEnsemble

        takes = set(inspect.signature(FoldEnsemble.__init__).parameters)
        kwargs = module_kwargs(cfg.model)
        assert kwargs and set(kwargs) <= takes, kwargs  # what FoldEnsemble is built with
    elif group == "augment":
        cfg = compose_config(*small(over, data_for(option)))
        dm = instantiate(cfg.data)
        dm.setup()  # binds the augmenter to the training set
        assert (dm.augmenter is None) == (option == "none")
        if dm.augmenter is not None:
            x, y, i = next(iter(dm.train_dataloader()))
            assert len(x) == len(y) == len(i) > 0
        weak = WeakClasses.from_augment(cfg.augment)
        assert (weak is not None) == (cfg.augment.kind == "targeted")
    elif group == "callbacks":
        cfg = compose_config(over)
        built = instantiate_callbacks(cfg.callbacks)
        assert all(isinstance(c, L.Callback) for c in built)
        kinds = {type(c).__name__ for c in built}
        assert {"ConfidentLearning", "RunResults", "EpochCheckpoint", "LoopTiming"} <= kinds
        if option != "default":
            assert len(built) == len(instantiate_callbacks(compose_config().callbacks)) + 1
    elif group == "cl":
        cfg = compose_config(over)
        cb = ConfidentLearning.from_config(cfg.cl)
        assert cb.action == cfg.cl.action
    elif group == "noise":
        cfg = compose_config(over)
        labels = np.random.default_rng(0).integers(0, 10, 500)
        mapping = cfg.noise.mapping
        mapping = (
            None if mapping is None else resolve_mapping(OmegaConf.to_container(mapping), CIFAR)
        )
        res = inject_noise(
            labels,
            kind=cfg.noise.kind,
            rate=cfg.noise.rate,
            num_classes=10,
            seed=0,
            sparsity=cfg.noise.sparsity,
            mapping=mapping,
        )
        assert (res.num_noisy > 0) == (cfg.noise.kind != "none")
    elif group == "trainer":
        cfg = compose_config(over)
        trainer = instantiate(cfg.trainer, accelerator="cpu", precision="32-true", logger=False)
        assert isinstance(trainer, L.Trainer)
    elif group == "logger":
        cfg = compose_config(over, quiet=False)
        logger = instantiate(cfg.logger) if cfg.get("logger") else None
        assert (logger is None) == (option == "none")
        if logger is not None:
            logger.log_metrics({"val/acc": 0.5}, step=0)
            logger.finalize("success")
    elif group == "experiment":
        cfg = compose_config(over)
        ConfidentLearning.from_config(cfg.cl)
        assert cfg.noise.kind in ("none", "symmetric", "asymmetric")
    else:  # sweep / hparams_search: every swept key exists in the composed config
        cfg = compose_config(over, hydra=True)
        params = cfg.hydra.sweeper.params
        assert params
        for key in params:  # a typo in a swept key would only fail when the sweep runs
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
        if group == "hparams_search":
            assert cfg.hydra.sweeper.direction == "maximize"
            assert cfg.optimized_metric.startswith("val/")


def test_slurm_launcher_composes_and_instantiates(compose_config):
    cfg = compose_config("hydra/launcher=dcloop_slurm", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"


def test_issue_command_line_composes(compose_config):
    cfg = compose_config(
        "noise.kind=asymmetric", "noise.rate=0.4", "cl.action=prune", "trainer.max_epochs=30"
    )
    assert cfg.noise.kind == "asymmetric" and cfg.noise.rate == 0.4
    assert cfg.cl.action == "prune" and cfg.trainer.max_epochs == 30
    assert cfg.data.noise.rate == 0.4 and cfg.data.seed == cfg.seed  # interpolations


def test_user_data_configs_require_a_root(compose_config):
    cfg = compose_config("data=folder")
    with pytest.raises(Exception, match="root"):
        OmegaConf.to_container(cfg.data, throw_on_missing=True)


def test_a_callback_entry_without_target_is_named(compose_config):
    from dcloop.errors import UserInputError

    cfg = compose_config("+callbacks.mine.monitor=val/acc")
    with pytest.raises(UserInputError, match="callbacks.mine must be a mapping with a _target_"):
        instantiate_callbacks(cfg.callbacks)
    assert RunResults  # exported with the other callbacks
