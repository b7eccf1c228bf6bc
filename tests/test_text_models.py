from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from dcloop.models import FoldEnsemble, PretrainedText, TextBoW, TextCNN
from dcloop.models.text import masked_mean

V, C, L = 50, 3, 12


def ids_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (b, L), generator=g)
    lengths = torch.tensor([1, 3, 5, 8, 12, 2])[:b]
    x[torch.arange(L)[None, :] >= lengths[:, None]] = 0  # padded at the end with 0
    return x


def ensembles(factory):
    labels = np.arange(30) % C
    vm = FoldEnsemble(factory, labels, num_folds=3, seed=0, vectorize="vmap")
    lp = FoldEnsemble(factory, labels, num_folds=3, seed=0, vectorize="loop")
    return vm, lp


class TinyEncoder(nn.Module):
    """A randomly initialised stand-in for a local pretrained encoder: (B, L) -> (B, L, D)."""

    def __init__(self, dim=8):
        super().__init__()
        self.emb = nn.Embedding(V, dim, padding_idx=0)
        self.mix = nn.Linear(dim, dim)

    def forward(self, ids):
        return torch.tanh(self.mix(self.emb(ids)))


FACTORIES = {
    "bow": partial(TextBoW, V, C, dim=8),
    "bow_hidden": partial(TextBoW, V, C, dim=8, hidden=16),
    "cnn": partial(TextCNN, V, C, dim=8, channels=4, widths=(2, 3)),
    "pretrained": partial(PretrainedText, TinyEncoder, C, dim=8),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_vmap_equals_loop_forward_and_gradients(name):
    vm, lp = ensembles(FACTORIES[name])
    vm.eval()
    lp.eval()
    x = ids_batch()
    out_v, out_l = vm(x), lp(x)
    assert vm.vectorized and out_v.shape == (3, 6, C)  # vmap really batched the replicas
    torch.testing.assert_close(out_v, out_l, rtol=1e-5, atol=1e-6)
    out_v.square().sum().backward()
    out_l.square().sum().backward()
    for (n, pv), (_, pl) in zip(vm.replica_params.items(), lp.replica_params.items(), strict=True):
        torch.testing.assert_close(pv.grad, pl.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_masked_mean_ignores_padding():
    emb = torch.randn(2, 4, 3)
    ids = torch.tensor([[5, 6, 0, 0], [0, 0, 0, 0]])
    out = masked_mean(emb, ids, 0)
    torch.testing.assert_close(out[0], emb[0, :2].mean(0))
    assert torch.equal(out[1], torch.zeros(3))  # an all-padding row is zeros, not NaN


@pytest.mark.parametrize("name", ["bow", "cnn", "pretrained"])
def test_more_padding_does_not_change_the_prediction(name):
    torch.manual_seed(0)
    net = FACTORIES[name]().eval()
    x = ids_batch()
    longer = torch.cat([x, torch.zeros(x.shape[0], 7, dtype=torch.long)], 1)
    torch.testing.assert_close(net(x), net(longer), rtol=1e-5, atol=1e-6)


def test_cnn_handles_texts_shorter_than_its_filters_and_empty_texts():
    net = TextCNN(V, C, dim=4, channels=2, widths=(4,)).eval()
    x = torch.tensor([[7, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = net(x)
    assert torch.isfinite(out).all()
    assert torch.equal(net.embed(x)[1], torch.zeros(2))


def test_frozen_pretrained_encoder_gets_no_gradient_in_the_ensemble():
    vm, _ = ensembles(partial(PretrainedText, TinyEncoder, C, dim=8, freeze=True))
    vm(ids_batch()).sum().backward()
    grads = {n: p.grad for n, p in vm.replica_params.items()}
    assert all(g is None for n, g in grads.items() if n.startswith("encoder"))
    assert all(g is not None for n, g in grads.items() if n.startswith("head"))


def test_net_factory_fills_vocab_size_and_pad_id_from_the_data():
    from omegaconf import OmegaConf

    from dcloop.train import net_factory

    cfg = OmegaConf.create({"_target_": "dcloop.models.TextBoW", "_partial_": True, "dim": 4})
    net = net_factory(cfg, (L,), C, {"vocab_size": 77, "pad_id": 0, "max_len": L})()
    assert net.embedding.num_embeddings == 77 and net.head[-1].out_features == C
