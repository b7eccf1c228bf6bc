"""ResNetSmall, the random crop + flip transform, the CIFAR recipe's configs, and the
pieces of scripts/gpu_cifar_resnet18.py that run without a GPU."""

import importlib.util
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dcloop.augment.crop_flip import RandomCropFlip
from dcloop.data import LabelNoiseDataModule
from dcloop.errors import UserInputError
from dcloop.models import FoldEnsemble, ResNetSmall
from dcloop.models.factory import module_kwargs, net_factory

LABELS = np.repeat(np.arange(3), 8)


# ------------------------------------------------------------------------------ network


def test_shapes_depth_and_width():
    net = ResNetSmall(3, 10, width=8)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    assert net.embed(x).shape == (2, 32)  # 4 * width
    convs = lambda m: sum(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) for c in m.modules())  # noqa: E731
    assert convs(net) == 7  # ResNet-8: stem + 3 blocks x 2
    assert convs(ResNetSmall(3, 10, blocks=[3, 3, 3])) == 19  # ResNet-20 (+ the head)
    assert ResNetSmall(1, 4)(torch.randn(2, 1, 28, 28)).shape == (2, 4)  # any size, any channels
    feats = ResNetSmall(3, 10, width=4).stages(torch.zeros(1, 4, 32, 32))
    assert feats.shape == (1, 16, 8, 8)  # two stride-2 stages


def test_zero_init_residual_starts_blocks_at_identity():
    net = ResNetSmall(3, 10, zero_init_residual=True)
    assert all(
        float(b.bn2.weight.detach().abs().sum()) == 0
        for b in net.stages.modules()
        if hasattr(b, "bn2")
    )
    assert float(ResNetSmall(3, 10).stages[0][0].bn2.weight.detach().sum()) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blocks": [1, 1]}, r"blocks must be three integers >= 1.*\[1, 1\]"),
        ({"blocks": [1, 0, 1]}, r"blocks.*\[1, 0, 1\]"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises((ValueError, UserInputError), match=match):
        ResNetSmall(3, 10, **kwargs)


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_trains_in_fold_ensemble(mode, tmp_path):
    n = 24
    ds = TensorDataset(torch.randn(n, 3, 16, 16), torch.from_numpy(LABELS), torch.arange(n))
    model = FoldEnsemble(
        partial(ResNetSmall, 3, 3, width=4), LABELS, num_folds=2, vectorize=mode, lr=0.01
    )
    before = {k: p.detach().clone() for k, p in model.replica_params.items()}
    stats = model.replica_buf__stem__1__running_mean.clone()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(ds, batch_size=12))
    assert model.vectorized == (mode == "vmap")  # vmap did not fall back to the loop
    for k, p in model.replica_params.items():
        assert not torch.equal(p[0], before[k][0]) and not torch.equal(p[1], before[k][1]), k
    running = model.replica_buf__stem__1__running_mean
    assert running.shape == (2, 4) and not torch.equal(running, stats)
    assert not torch.equal(running[0], running[1])  # each replica its own statistics
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 3)


def test_batch_norm_vmap_equals_loop_in_training_mode():
    net = partial(ResNetSmall, 3, 3, width=4, blocks=[2, 1, 1])
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    runs = {}
    for mode in ("vmap", "loop"):
        model = FoldEnsemble(net, LABELS, num_folds=2, vectorize=mode).double().train()
        out = model(x)
        out.square().sum().backward()
        runs[mode] = (
            out,
            {k: p.grad for k, p in model.replica_params.items()},
            {k: b.clone() for k, b in model.named_buffers() if "replica" in k},
        )
        assert model.vectorized == (mode == "vmap")
    (out_v, g_v, b_v), (out_l, g_l, b_l) = runs["vmap"], runs["loop"]
    torch.testing.assert_close(out_v, out_l)
    for k in g_v:
        torch.testing.assert_close(g_v[k], g_l[k], rtol=1e-7, atol=1e-10)
    assert b_v.keys() == b_l.keys() and any("shortcut" in k for k in b_v)
    for k in b_v:
        torch.testing.assert_close(b_v[k], b_l[k])


# ---------------------------------------------------------------------------- transform


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.rand(3, 10, 12)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    t = RandomCropFlip(padding=2, flip=0.5)
    torch.manual_seed(0)
    seen_flip, seen_shift = False, False
    for _ in range(40):
        y = t(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        matches = [
            (i, j, f)
            for i in range(5)
            for j in range(5)
            for f in (False, True)
            if torch.equal(y, (lambda w: w.flip(-1) if f else w)(padded[:, i : i + 10, j : j + 12]))
        ]
        assert matches, "not a window of the padded image"
        seen_flip |= any(f for *_, f in matches) and not any(not f for *_, f in matches)
        seen_shift |= (2, 2) not in [(i, j) for i, j, _ in matches]
    assert seen_flip and seen_shift


def test_crop_flip_seeded_and_degenerate_settings():
    x = torch.rand(3, 8, 8)
    t = RandomCropFlip()
    torch.manual_seed(5)
    a = [t(x) for _ in range(5)]
    torch.manual_seed(5)
    b = [t(x) for _ in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert torch.equal(RandomCropFlip(padding=0, flip=0.0)(x), x)
    assert torch.equal(RandomCropFlip(padding=0, flip=1.0)(x), x.flip(-1))
    assert torch.equal(x, x.clone())  # the input is not changed in place


@pytest.mark.parametrize(
    "kwargs, match",
    [({"padding": -1}, "padding"), ({"flip": 1.5}, "flip"), ({"padding": 2.5}, "padding")],
)
def test_crop_flip_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        RandomCropFlip(**kwargs)


def test_crop_flip_refuses_a_batch():
    with pytest.raises(ValueError, match=r"one image \(C, H, W\).*\(2, 3, 8, 8\)"):
        RandomCropFlip()(torch.rand(2, 3, 8, 8))


def test_transform_runs_on_training_batches_only():
    """The OOF, validation and test passes see the stored images, the training loader crops."""
    dm = LabelNoiseDataModule(
        "digits", train_transform=RandomCropFlip(padding=2), batch_size=64, eval_batch_size=64
    )
    dm.setup()
    raw = torch.stack([dm.train_dataset[i][0] for i in range(len(dm.train_dataset))])
    x, _, index = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == raw.shape[1:]
    assert not torch.equal(x, raw[index])  # augmented
    for loader, ds in (
        (dm.oof_dataloader(), dm.train_dataset),
        (dm.val_dataloader(), dm.val_dataset),
        (dm.test_dataloader(), dm.test_dataset),
    ):
        xb, _, ib = next(iter(loader))
        assert torch.equal(xb, torch.stack([ds[int(i)][0] for i in ib]))


# ------------------------------------------------------------------------------ configs


def test_recipe_experiment_wires_model_transform_and_schedule(compose_config):
    cfg = compose_config("experiment=cifar_resnet")
    assert cfg.model.net._target_ == "dcloop.models.ResNetSmall"
    assert cfg.data.batch_size == 128 and cfg.trainer.max_epochs == 30
    dm = instantiate(cfg.data)
    assert isinstance(dm.train_transform, RandomCropFlip) and dm.train_transform.padding == 4
    make = net_factory(cfg.model.net, (3, 32, 32), 10)
    assert isinstance(make(), ResNetSmall)
    kwargs = module_kwargs(cfg.model)
    assert kwargs["optimizer"].func is torch.optim.SGD
    assert kwargs["scheduler"].func is torch.optim.lr_scheduler.OneCycleLR
    assert kwargs["label_smoothing"] == 0.0
    assert cfg.replica_precision == "auto"  # the replicas in bf16 where it is native


def test_recipe_net_is_recorded_as_json_for_the_kept_model(compose_config):
    """The saved kept model rebuilds ResNetSmall from plain JSON (blocks as a list)."""
    from dcloop.kept.save import plain_net_config
    from dcloop.kept.spec import build_net

    cfg = compose_config("experiment=cifar_resnet")
    dm = instantiate(cfg.data)
    dm.setup()
    net = plain_net_config(cfg, dm)
    assert net is not None and net["blocks"] == [1, 1, 1] and net["in_channels"] == 1
    assert isinstance(build_net(net), ResNetSmall)


def test_one_cycle_steps_per_batch_over_the_whole_run(tmp_path):
    """The recipe's OneCycleLR gets total_steps from the trainer and peaks at max_lr."""
    from omegaconf import OmegaConf

    from dcloop.models import Classifier

    from conftest import CONF

    model_cfg = OmegaConf.load(f"{CONF}/model/resnet_cifar.yaml")
    n = 40
    ds = TensorDataset(torch.rand(n, 3, 8, 8), torch.arange(n) % 2, torch.arange(n))
    model = Classifier(
        partial(ResNetSmall, 3, 2, width=2), 2, **module_kwargs(model_cfg, Classifier)
    )
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[Record()],
    )
    trainer.fit(model, DataLoader(ds, batch_size=10))
    sched = trainer.lr_scheduler_configs[0]
    assert sched.interval == "step" and sched.scheduler.total_steps == 12
    assert len(lrs) == 12 and max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.01


# ------------------------------------------------------- scripts/gpu_cifar_resnet18.py

GPU_SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_cifar_resnet18.py"
SUBSET = Path(__file__).parent.parent.parent / "shared" / "data" / "cifar10-subset"


def _gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_cifar_resnet18", GPU_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_augments_a_batch_like_random_crop_flip():
    gpu = _gpu_script()
    x = torch.rand(16, 3, 12, 12)
    torch.manual_seed(0)
    y = gpu.augment(x, pad=3)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for k in range(16):
        windows = [padded[k, :, i : i + 12, j : j + 12] for i in range(7) for j in range(7)]
        assert any(torch.equal(y[k], w) or torch.equal(y[k], w.flip(-1)) for w in windows)
    assert not torch.equal(y, x)


def test_gpu_script_manifests_and_config(tmp_path):
    gpu = _gpu_script()
    data = tmp_path / "subset"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                (data / split / cls / f"{i:04d}.jpg").write_bytes(b"")
    (data / "cifar10n").mkdir()
    rows = [
        f"train/{c}/{i:04d}.jpg,{'dog' if c == 'cat' else c}"
        for c in ("cat", "dog")
        for i in range(3)
    ]
    for name in gpu.CIFAR10N:
        (data / "cifar10n" / f"{name}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = gpu.write_manifests(data, tmp_path / "m", per_class=2)
    assert (out["clean"].read_text().splitlines()[1]) == "train/cat/0000.jpg,cat"
    assert len(out["worst"].read_text().splitlines()) == 1 + 4  # header + 2 a class
    assert len(out["test"].read_text().splitlines()) == 1 + 2
    args = SimpleNamespace(seed=0, data=data, batch=64, lr=0.1, epochs=3, smoke=False, folds=None)
    cfg = gpu.compose(gpu.overrides("sym40", out, args, tmp_path / "run"))
    assert cfg.model.net.cifar_stem and cfg.noise.rate == 0.4 and cfg.data.val_frac == 0.0
    assert cfg.data.train_transform._target_.endswith("RandomCropFlip")
    kwargs = module_kwargs(cfg.model)
    assert kwargs["optimizer"].func is torch.optim.SGD
    assert kwargs["optimizer"].keywords["nesterov"] is True
    assert kwargs["scheduler"].func is torch.optim.lr_scheduler.OneCycleLR
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


@pytest.mark.slow
@pytest.mark.skipif(not (SUBSET / "cifar10n").is_dir(), reason="needs ../shared/data")
def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    """Every path of the GPU script (plain, oracle, one dcloop row with K=2) on the CPU."""
    import json

    gpu = _gpu_script()
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--smoke", "--data", str(SUBSET), "--work", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # the smoke mode runs with one thread
    rows = json.loads((tmp_path / "smoke" / "gpu_cifar_resnet18.json").read_text())["rows"]
    assert {"oracle", "plain/worst", "plain/sym40", "dcloop/worst"} <= set(rows)
    assert rows["dcloop/worst"]["kept_model"] in ("student", "ensemble")
