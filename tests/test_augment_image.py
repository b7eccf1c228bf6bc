import pytest
import torch

from dcloop.augment import IMAGE_OPS, ImageAugment, image_transforms
from dcloop.augment.image import magnitude


def digit_like(c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((c, h, w), generator=g)


@pytest.mark.parametrize("op", list(IMAGE_OPS))
@pytest.mark.parametrize("level", [1, 3])
def test_each_op_keeps_shape_dtype_range_and_is_seeded(op, level):
    aug = ImageAugment([op], level, 3, p=1.0, size=(8, 8))
    x = digit_like()
    before = x.clone()
    a, b, c = aug(x, seed=7), aug(x, seed=7), aug(x, seed=8)
    assert torch.equal(x, before)  # input untouched
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(a, b)
    changed = [not torch.equal(aug(x, seed=s), x) for s in range(5)]
    assert sum(changed) >= 3  # p=1: the op does something (small draws may round to none)
    assert not torch.equal(a, c) or not torch.equal(aug(x, seed=9), a)


def test_rgb_images_and_p_zero():
    x = digit_like(3, 16, 12)
    aug = ImageAugment(list(IMAGE_OPS), 2, 3, p=1.0, size=(16, 12))
    out = aug(x, seed=1)
    assert out.shape == (3, 16, 12) and 0 <= out.min() and out.max() <= 1
    still = ImageAugment(list(IMAGE_OPS), 2, 3, p=0.0, size=(16, 12))
    assert torch.allclose(still(x, seed=1), x)


def test_levels_go_from_mild_to_strong():
    for op, (mild, strong, _) in IMAGE_OPS.items():
        mags = [magnitude(op, lvl, 3) for lvl in range(4)]
        assert mags[0] == 0 and mags[1] == pytest.approx(mild) and mags[3] == pytest.approx(strong)
        assert mags[1] < mags[2] < mags[3]
    # stronger rotation moves pixels further, on average over seeds
    x = torch.zeros(1, 16, 16)
    x[:, 2:14, 7:9] = 1.0  # a vertical bar
    diffs = []
    for lvl in (1, 3):
        aug = ImageAugment(["rotate"], lvl, 3, p=1.0, size=(16, 16))
        diffs.append(sum((aug(x, seed=s) - x).abs().sum() for s in range(20)))
    assert diffs[1] > 1.5 * diffs[0]


def test_transforms_per_level_and_bad_names():
    ts = image_transforms(["rotate", "crop"], 3, size=(8, 8))
    assert ts[0] is None and [t.level for t in ts[1:]] == [1, 2, 3]
    with pytest.raises(ValueError, match="'blur'"):
        ImageAugment(["rotate", "blur"], 1, 3, size=(8, 8))
    with pytest.raises(ValueError, match=r"level must be an integer in \[1, 3\]; got level=4"):
        ImageAugment(["rotate"], 4, 3, size=(8, 8))
    with pytest.raises(ValueError, match="list of names"):
        image_transforms("rotate", 3, size=(8, 8))
