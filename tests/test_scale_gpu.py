"""GPU checks of the scale-out paths; skipped without CUDA (run on a lent GPU).

``tests/test_gpu.py`` covers fold-parallel training, its OOF pass under CUDA's sync
debug mode and the confident-learning engine on the GPU; these add the sequential-mode
OOF pass (a plain module), the merge's confident-learning step and the NCCL broadcast.
"""

import os
import socket
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from dcloop.callbacks import OOFCollector
from dcloop.cl import verdict
from dcloop.models import MLP, Classifier
from dcloop.scale.distributed import broadcast_result

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sequential_oof_pass_of_a_plain_module_makes_no_host_sync(tmp_path):
    n, c = 600, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g).cuda()
    y = torch.randint(0, c, (n,), generator=g).cuda()
    held = torch.arange(0, n, 3, device="cuda")  # one fold: a third of the indices
    loader = DataLoader(TensorDataset(x[held], y[held], held), batch_size=64)
    module = Classifier(partial(MLP, (1, 8, 8), c), c)
    oof = OOFCollector(n, c, dataloader=loader, require_full_coverage=False)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=1,
        logger=False,
        callbacks=[oof],
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    module.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        oof.collect(trainer, module)  # raises on any synchronising CUDA call
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert oof.probs.is_cuda and int(oof.seen.sum()) == held.numel()
    index, probs = oof.shard()
    assert np.array_equal(index, held.cpu().numpy()) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_merge_step_runs_confident_learning_on_the_gpu():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(50_000, 20, generator=g).softmax(1)
    labels = torch.randint(0, 20, (50_000,), generator=g)
    res = verdict(labels.cuda(), probs.cuda(), filter_by="both")
    assert res.flags.is_cuda and res.quality.is_cuda and res.joint.is_cuda
    cpu = verdict(labels, probs, filter_by="both")
    assert torch.equal(res.flags.cpu(), cpu.flags)


def test_verdict_broadcast_over_nccl_stays_on_this_gpu():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(0)
        probs = torch.rand(1000, 5, generator=g).softmax(1)
        labels = torch.randint(0, 5, (1000,), generator=g)
        res = verdict(labels.cuda(), probs.cuda())
        out = broadcast_result(res, 1000, 5, torch.device("cuda:0"))
        assert out.flags.is_cuda and out.flags.dtype == torch.bool
        assert torch.equal(out.flags, res.flags) and out.noise_rate == pytest.approx(res.noise_rate)
    finally:
        dist.destroy_process_group()
