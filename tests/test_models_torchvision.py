from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import StochasticDepth

from dcloop.models import FoldEnsemble, torchvision_net
from dcloop.models.torchvision_nets import NETS, VmapStochasticDepth

LABELS = np.repeat(np.arange(3), 8)
FAST = ["resnet18", "mobilenet_v3_small", "efficientnet_b0"]


def fast_trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kw,
    )


@pytest.mark.parametrize("name", NETS)
def test_forward_backward_on_cifar_sized_input(name):
    net = torchvision_net(name, 5, cifar_stem=name == "resnet18")
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_in_channels_and_cifar_stem(name):
    net = torchvision_net(name, 4, in_channels=1, cifar_stem=True)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    first = net.conv1 if name == "resnet18" else net.features[0][0]
    assert first.in_channels == 1 and first.stride == (1, 1)
    if name == "resnet18":
        assert first.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
        feats = nn.Sequential(*list(net.children())[:-2])(torch.zeros(1, 1, 32, 32))
        assert feats.shape[-2:] == (4, 4)  # not 1x1 as with the ImageNet stem


def test_group_norm_has_no_running_statistics():
    net = torchvision_net("resnet18", 3, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not list(net.buffers())


def test_local_weights_load_except_the_head(tmp_path):
    torch.manual_seed(0)
    source = torchvision_net("resnet18", 1000)
    path = tmp_path / "rn18.pt"
    torch.save(source.state_dict(), path)
    net = torchvision_net("resnet18", 10, weights_path=str(path))
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert net.fc.out_features == 10
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        torchvision_net("resnet18", 10, weights_path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="never downloads"):
        torchvision_net("resnet18", 10, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="name must be one of"):
        torchvision_net("vgg11", 10)


def test_stochastic_depth_replacement_draws_as_torchvision():
    x = torch.randn(6, 4, 3, 3)
    ours, theirs = VmapStochasticDepth(0.5, "row").train(), StochasticDepth(0.5, "row").train()
    torch.manual_seed(3)
    a = ours(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, theirs(x))
    net = torchvision_net("efficientnet_b0", 3)
    assert not any(isinstance(m, StochasticDepth) for m in net.modules())


@pytest.mark.parametrize("name", FAST)
def test_runs_vectorised_in_fold_ensemble(name):
    model = FoldEnsemble(
        partial(torchvision_net, name, 3, cifar_stem=True), LABELS, num_folds=2, vectorize="auto"
    )
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert model.vectorized  # no fallback to the loop: BatchNorm and stochastic depth vmap


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet34", "resnet50", "wide_resnet50_2"])
def test_large_nets_run_vectorised_in_fold_ensemble(name):
    test_runs_vectorised_in_fold_ensemble(name)


def test_batch_norm_vmap_equals_loop_in_training_mode():
    """Each replica's BatchNorm uses its own batch statistics and updates its own running ones."""
    net = partial(torchvision_net, "resnet18", 3, cifar_stem=True)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    runs = {}
    for mode in ("vmap", "loop"):
        model = FoldEnsemble(net, LABELS, num_folds=2, vectorize=mode).double()
        model.train()
        out = model(x)
        out.square().sum().backward()
        grads = {n: p.grad for n, p in model.replica_params.items()}
        runs[mode] = (
            out,
            grads,
            {n: b.clone() for n, b in model.named_buffers() if "replica" in n},
        )
    (out_v, g_v, b_v), (out_l, g_l, b_l) = runs["vmap"], runs["loop"]
    torch.testing.assert_close(out_v, out_l)
    for n in g_v:
        torch.testing.assert_close(g_v[n], g_l[n], rtol=1e-7, atol=1e-10)
    for n in b_v:
        torch.testing.assert_close(b_v[n], b_l[n])
    mean = b_v["replica_buf__bn1__running_mean"]
    assert not torch.equal(mean[0], mean[1])  # the replicas' statistics differ
    assert (b_v["replica_buf__bn1__num_batches_tracked"] == 1).all()


def test_fold_ensemble_trains_resnet18_k2(tmp_path):
    n = 24
    ds = TensorDataset(torch.randn(n, 3, 16, 16), torch.from_numpy(LABELS), torch.arange(n))
    model = FoldEnsemble(
        partial(torchvision_net, "resnet18", 3, cifar_stem=True),
        LABELS,
        num_folds=2,
        vectorize="vmap",  # (auto loops on CPU) BatchNorm stacks train under vmap
    )
    before = {n: p.detach().clone() for n, p in model.replica_params.items()}
    stats = model.replica_buf__bn1__running_mean.clone()
    trainer = fast_trainer(tmp_path, max_epochs=1, gradient_clip_val=1.0)
    trainer.fit(model, DataLoader(ds, batch_size=12))
    assert model.vectorized
    for name, p in model.replica_params.items():
        assert not torch.equal(p[0], before[name][0]) and not torch.equal(p[1], before[name][1])
    assert not torch.equal(model.replica_buf__bn1__running_mean, stats)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 3)
