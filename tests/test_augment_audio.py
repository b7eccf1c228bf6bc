import math

import pytest
import torch

from dcloop.augment import AUDIO_OPS, AudioAugment, augment_audio
from dcloop.augment.audio import add_noise_snr, change_speed, frequency_shift, time_shift

SR = 8000


def tone(freq=500.0, n=2000, amp=0.5, batch=1):
    t = torch.arange(n) / SR
    return (amp * torch.sin(2 * math.pi * freq * t)).repeat(batch, 1, 1)


@pytest.mark.parametrize("op", list(AUDIO_OPS))
def test_each_op_per_sample_keeps_shape_dtype_range_and_is_seeded(op):
    aug = AudioAugment([op], 3, 3, sample_rate=SR, p=1.0)
    x = tone()[0] * 1.8  # peaks at 0.9
    a, b, c = aug(x, seed=3), aug(x, seed=3), aug(x, seed=4)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.abs().max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)


def test_batch_levels_leave_level_zero_rows_unchanged():
    x = tone(batch=4)
    level = torch.tensor([0, 1, 0, 3])
    g = torch.Generator().manual_seed(0)
    out = augment_audio(
        x, level, ops=list(AUDIO_OPS), num_levels=3, sample_rate=SR, p=1.0, generator=g
    )
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert not torch.allclose(out[1], x[1]) and not torch.allclose(out[3], x[3])
    g2 = torch.Generator().manual_seed(0)
    again = augment_audio(
        x, level, ops=list(AUDIO_OPS), num_levels=3, sample_rate=SR, p=1.0, generator=g2
    )
    assert torch.equal(out, again)


def test_ops_against_known_answers():
    x = torch.arange(1.0, 11.0).view(1, 1, 10) / 10
    shifted = time_shift(x, torch.tensor([3]))
    assert shifted[0, 0].tolist() == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert torch.allclose(change_speed(x, torch.tensor([1.0])), x)
    fast = change_speed(x, torch.tensor([2.0]))
    assert fast[0, 0, :5].tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert fast[0, 0, 5:].abs().sum() == 0
    # a 500 Hz tone shifted by +250 Hz peaks at 750 Hz
    up = frequency_shift(tone(500.0, n=4000), torch.tensor([250.0]), SR)
    spec = torch.fft.rfft(up[0, 0]).abs()
    assert spec.argmax().item() * SR / 4000 == pytest.approx(750.0, abs=2.0)
    # additive noise at 10 dB SNR
    torch.manual_seed(0)
    sig = tone(500.0, n=8000, amp=0.3)
    noisy = add_noise_snr(sig, torch.tensor([10.0]))
    snr = 10 * torch.log10(sig.pow(2).sum() / (noisy - sig).pow(2).sum())
    assert snr.item() == pytest.approx(10.0, abs=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="'reverb'"):
        AudioAugment(["reverb"], 1, 3, sample_rate=SR)
    with pytest.raises(ValueError, match=r"\(C, T\)"):
        AudioAugment(["noise"], 1, 3, sample_rate=SR)(torch.zeros(1, 1, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batch_augmentation_on_the_gpu_makes_no_host_sync():
    x = tone(batch=64).cuda()
    level = torch.randint(0, 4, (64,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment_audio(x, level, ops=list(AUDIO_OPS), num_levels=3, sample_rate=SR)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == x.shape and out.device == x.device
