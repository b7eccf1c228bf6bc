"""GPU checks: skipped without CUDA; run on a lent GPU with `pytest tests/test_gpu.py`."""

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dcloop.callbacks import ConfidentLearning, OOFCollector
from dcloop.cl import verdict
from dcloop.data import LabelNoiseDataModule
from dcloop.models import FoldEnsemble, SmallCNN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def digits_on_gpu():
    dm = LabelNoiseDataModule("digits", noise={"kind": "symmetric", "rate": 0.2}, seed=0)
    dm.setup()
    return dm


def test_fold_parallel_training_and_cl_run_on_the_gpu(tmp_path):
    dm = digits_on_gpu()
    model = FoldEnsemble(
        partial(SmallCNN, 1, 10), dm.given_labels, num_folds=5, true_labels=dm.true_labels
    )
    oof, clcb = OOFCollector(), ConfidentLearning(warmup_epochs=2)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=4,
        logger=False,
        callbacks=[oof, clcb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert model.vectorized
    # Lightning moves the module back to the CPU at teardown; the buffers and verdicts
    # made during training stayed on the GPU.
    assert oof.probs.is_cuda
    assert clcb.last_result.flags.is_cuda and clcb.last_result.quality.is_cuda
    assert clcb.history[-1]["precision"] > 0.5  # 4 epochs; flagging at random gives 0.2


def test_oof_pass_makes_no_host_sync_per_batch(tmp_path):
    dm = digits_on_gpu()
    x = torch.stack([dm.train_dataset[i][0] for i in range(dm.num_train)]).cuda()
    y = torch.as_tensor(dm.given_labels).cuda()
    ds = TensorDataset(x, y, torch.arange(dm.num_train, device="cuda"))
    loader = DataLoader(ds, batch_size=128)  # data already on the GPU: only our loop runs
    model = FoldEnsemble(partial(SmallCNN, 1, 10), dm.given_labels, num_folds=5).cuda()
    oof = OOFCollector(dataloader=loader)
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
    trainer.fit(model, loader)
    model.cuda()  # fit's teardown moved it back to the CPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        oof.collect(trainer, model)  # raises on any synchronising CUDA call
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert oof.seen.all()


def test_confident_learning_stays_on_the_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    probs = torch.rand(100_000, 100, device="cuda", generator=g).softmax(1)
    labels = torch.randint(0, 100, (100_000,), device="cuda", generator=g)
    res = verdict(labels, probs)
    assert res.flags.is_cuda and res.quality.is_cuda and res.noise_matrix.is_cuda
