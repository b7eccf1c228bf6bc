import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from torch import nn

import dcloop
from dcloop.models import Classifier, FoldEnsemble, module_kwargs
from dcloop.models.factory import check_net_keys, net_factory

CONF = Path(dcloop.__file__).parent / "conf"
TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "wide_resnet50_2",
    "mobilenet_v3_small",
    "efficientnet_b0",
]


def model_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides)).model


def node(**kw):
    return OmegaConf.create({"_partial_": True, **kw})


def test_reexport_from_train_and_models():
    from dcloop.models import net_factory as a
    from dcloop.models.factory import net_factory as b

    assert a is b


def test_num_classes_reaches_a_kwargs_only_constructor():
    make = net_factory(node(_target_="torchvision.models.resnet18"), (3, 32, 32), 7)
    assert make().fc.out_features == 7


@pytest.mark.parametrize("check", ["early", "factory"])
def test_smallcnn_keys_on_torchvision_fail_fast_naming_key_target_and_fix(check):
    cfg = model_cfg("model.net._target_=torchvision.models.resnet18")  # cnn.yaml keeps `width`
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        if check == "early":
            check_net_keys(cfg.net)
        else:
            net_factory(cfg.net, (3, 32, 32), 10)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "torchvision.models.resnet18" in msg and "`width`" in msg
    assert "model=resnet18" in msg and "~model.net.width" in msg


def test_unknown_keys_of_a_plain_signature_all_named():
    cfg = node(_target_="dcloop.models.MLP", width=3, depth=2)
    with pytest.raises(ValueError, match=r"`width`, `depth`.*~model.net.width ~model.net.depth"):
        check_net_keys(cfg)
    with pytest.raises(ValueError, match="drop them"):
        net_factory(cfg, (1, 8, 8), 10)


def test_wrong_number_of_logits_is_one_error():
    cfg = node(_target_="torchvision.models.resnet18", num_classes=1000)
    with pytest.raises(ValueError, match=r"to \(2, 1000\).*logits of shape \(2, 10\)"):
        net_factory(cfg, (3, 32, 32), 10)


def test_forward_failure_names_the_shape():
    cfg = node(_target_="dcloop.models.SmallCNN", in_channels=3)  # data has 1 channel
    with pytest.raises(ValueError, match=r"fails on a batch of shape \(2, 1, 8, 8\)"):
        net_factory(cfg, (1, 8, 8), 10)


def test_global_rng_is_untouched():
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    net_factory(node(_target_="dcloop.models.MLP"), (1, 8, 8), 10)
    torch.testing.assert_close(torch.rand(3), a)


class TokenNet(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int):
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab_size, 8)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.out(self.emb(x))


def test_source_keywords_and_integer_example():
    cfg = node(_target_=f"{__name__}.TokenNet")
    make = net_factory(cfg, (6,), 3, {"vocab_size": 50})  # float zeros fail: id zeros run
    assert make().emb.num_embeddings == 50
    net_factory(cfg, (6,), 3, {"vocab_size": 50}, example=torch.arange(6))
    with pytest.raises(ValueError, match="fails on a batch"):
        net_factory(cfg, (6,), 3, {"vocab_size": 50}, example=torch.arange(60, 66))
    with pytest.raises(ValueError, match=r"needs vocab_size.*model.net.vocab_size=\.\.\."):
        net_factory(cfg, (6,), 3)  # the source gave no vocab_size
    net_factory(cfg, (1, 8, 8), 3, {"vocab_size": 50}, check=False)  # no trial run at all
    with pytest.raises(ValueError, match=r"fails on a batch of shape \(2, 1, 8, 8\)"):
        net_factory(cfg, (1, 8, 8), 3, {"vocab_size": 50})


@pytest.mark.parametrize("name", ["cnn", "mlp", *TORCHVISION])
def test_model_configs_build_and_give_module_kwargs(name):
    cfg = model_cfg(f"model={name}")
    if name in TORCHVISION:  # self-contained: no keys of another network
        assert set(cfg.net) == {
            "_target_",
            "_partial_",
            "name",
            "cifar_stem",
            "norm",
            "weights_path",
        }
        assert cfg.net.name == name
    net_factory(cfg.net, (3, 16, 16), 4)
    kw = module_kwargs(cfg)
    assert kw["label_smoothing"] == 0.1 and kw["vectorize"] == "auto"
    assert "vectorize" not in module_kwargs(cfg, Classifier)


def test_module_kwargs_old_block_new_partials_and_conflicts():
    old = OmegaConf.create({"optim": {"lr": 0.01, "weight_decay": 0.0, "scheduler": "none"}})
    assert module_kwargs(old) == {"lr": 0.01, "weight_decay": 0.0, "scheduler": "none"}
    new = OmegaConf.create(
        {
            "optimizer": {
                "_target_": "torch.optim.SGD",
                "lr": 0.1,
                "momentum": 0.9,
            },  # no _partial_
            "scheduler": None,
            "loss": {"_target_": "torch.nn.functional.cross_entropy", "label_smoothing": 0.2},
        }
    )
    kw = module_kwargs(new)
    assert kw["optimizer"].func is torch.optim.SGD and kw["scheduler"] == "none"
    FoldEnsemble(lambda: nn.Linear(4, 3), torch.arange(3).repeat(5), num_folds=5, **kw)
    both = OmegaConf.merge(old, {"optimizer": {"_target_": "torch.optim.AdamW"}})
    with pytest.raises(ValueError, match="model.optim.lr and model.optimizer"):
        module_kwargs(both)
    with pytest.raises(ValueError, match="unknown keys"):
        module_kwargs(OmegaConf.create({"optim": {"learning_rate": 0.1}}))
    with pytest.raises(ValueError, match="unknown keys"):
        module_kwargs(OmegaConf.create({"loss": {"smoothing": 0.1}}))


def test_replica_net_sets_keys_of_net_for_the_replicas_only():
    """model.replica_net: its keys over model.net (null keeps model.net's); it cannot name
    another network; has_replica_net says whether it changes anything."""
    from dcloop.models.factory import has_replica_net, replica_net_changes, replica_net_config

    net = {"_target_": "dcloop.models.SmallCNN", "_partial_": True, "width": 32, "dropout": 0.0}
    model = OmegaConf.create({"net": net, "replica_net": {"width": None}})
    assert not has_replica_net(model)
    assert replica_net_config(model) == model.net
    model.replica_net.width = 8
    assert has_replica_net(model)
    rep = replica_net_config(model)
    assert rep.width == 8 and rep.dropout == 0.0 and model.net.width == 32
    assert not has_replica_net(OmegaConf.create({"net": net}))
    assert replica_net_changes(model) == {"width": 8}
    model.replica_net.width = 32  # net's own width: no change
    assert replica_net_changes(model) == {} and not has_replica_net(model)
    model.replica_net.width = 8
    assert replica_net_config(OmegaConf.create({"net": net})).width == 32
    with pytest.raises(ValueError, match="not _target_"):
        replica_net_config(OmegaConf.create({"net": net, "replica_net": {"_target_": "x.Y"}}))
    with pytest.raises(ValueError, match="must be a mapping"):
        replica_net_config(OmegaConf.create({"net": net, "replica_net": [8]}))
    with pytest.raises(ValueError, match="must be a mapping"):
        replica_net_config(OmegaConf.create({"net": net, "replica_net": 8}))
    OmegaConf.set_struct(model, True)  # as Hydra composes it: a key net lacks is still named
    with open_dict(model):
        model.replica_net = {"widht": 8}
    with pytest.raises(ValueError, match="widht"):
        check_net_keys(replica_net_config(model), where="model.replica_net")


def test_dcloop_scale_sizes_replicas_relative_to_the_net():
    """${dcloop_scale:${..net.width},0.5} follows a width the user gives model.net."""
    from dcloop.models.factory import replica_net_config
    from dcloop.resolvers import scale_size

    assert scale_size(32, 0.5) == 16 and scale_size(3, 0.25) == 1 and scale_size(None, 0.5) is None
    assert scale_size([256, 128], "0.5") == [128, 64] and scale_size(24.0, 0.5) == 12
    assert scale_size("abc", 0.5) == "abc"  # as given: model.net's own check names it
    for factor, match in ((0, "> 0"), ("x", "number")):
        with pytest.raises(ValueError, match=match):
            scale_size(8, factor)
    model = OmegaConf.create(
        {
            "net": {"_target_": "dcloop.models.SmallCNN", "_partial_": True, "width": 32},
            "replica_net": {"width": "${dcloop_scale:${..net.width},0.5}"},
        }
    )
    assert replica_net_config(model).width == 16
    model.net.width = 8
    assert replica_net_config(model).width == 4
