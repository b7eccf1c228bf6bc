"""dcloop.health: each detector on small constructed cases (torch in, torch out)."""

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from dcloop.errors import UserInputError
from dcloop.health import (
    PixelPairs,
    class_imbalance,
    find_leakage,
    find_near_duplicates,
    find_outliers,
    find_test_only,
    gaussian_blur,
    knn,
    mutual_ratio,
    outputs,
    pixel_leakage,
    underperforming_groups,
)
from dcloop.health.pixels import shifted_candidates


def _blobs(n=200, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_matches_brute_force_across_chunks(metric):
    x, r = _blobs(37, 5, 1), _blobs(53, 5, 2)
    d, i = knn(x, r, k=4, metric=metric, chunk_elements=100)  # 1 row per chunk
    if metric == "cosine":
        xn, rn = nn.functional.normalize(x, dim=1), nn.functional.normalize(r, dim=1)
        full = 1 - xn @ rn.T
    else:
        full = torch.cdist(x, r)
    ref_d, ref_i = full.topk(4, dim=1, largest=False)
    assert torch.equal(i, ref_i)
    assert torch.allclose(d, ref_d, atol=1e-5)


def test_knn_leaves_each_row_out_of_its_own_neighbours():
    x = _blobs(30, 3)
    _, i = knn(x, k=5, metric="euclidean")
    assert not (i == torch.arange(30)[:, None]).any()


def test_knn_distance_of_an_exact_copy_is_zero():
    x = _blobs(50, 64) * 100
    x[9] = x[4]
    d, i = knn(x, k=1, metric="euclidean")
    assert i[4, 0] == 9 and d[4, 0] == 0.0


def test_outliers_flag_the_far_samples_only():
    x = _blobs(300, 4)
    x[[3, 77]] += 25.0
    r = find_outliers(x, k=10, metric="euclidean")
    assert r.flags[[3, 77]].all()
    assert sorted(r.score.topk(2).indices.tolist()) == [3, 77]
    assert r.flags.sum() < 30  # the Gaussian's tail only, beside them


def test_outliers_match_datalab_rule_on_the_same_knn():
    x = _blobs(400, 6)
    x[:5] *= 6
    d, _ = knn(x, k=10, metric="cosine")
    avg = d.double().mean(1).numpy()
    q1, q3 = np.percentile(avg, [25, 75])
    expected = avg > q3 + (1 / 0.37037 - 1) * (q3 - q1)
    assert find_outliers(x).flags.numpy().tolist() == expected.tolist()


def test_near_duplicates_pair_the_planted_copies_smallest_first():
    x = _blobs(120, 16)
    x[50] = x[10] + 1e-3
    x[99] = x[20] + 1e-4
    r = find_near_duplicates(x, metric="euclidean")
    assert r.pairs.tolist() == [[20, 99], [10, 50]]
    assert r.distance[0] < r.distance[1] < r.radius
    assert r.flags.nonzero().flatten().tolist() == [10, 20, 50, 99]


def test_leakage_finds_test_copies_of_training_samples():
    train = _blobs(200, 16)
    test = _blobs(30, 16, seed=5)
    test[4] = train[123] * 1.01  # a brightened copy: cosine distance ~0
    r = find_leakage(train, test, ratio_threshold=0.0)
    assert r.flags.nonzero().flatten().tolist() == [4]
    assert int(r.train[4]) == 123
    assert r.ratio[4] < 0.01


def test_pixel_leakage_sees_through_shift_and_colour_cast():
    g = torch.Generator().manual_seed(0)
    smooth = nn.functional.avg_pool2d(torch.rand(40, 3, 40, 40, generator=g), 5, 1)[..., :32, :32]
    train = smooth[:30]
    test = smooth[30:].clone()
    test[2] = torch.roll(train[7], shifts=(2, -1), dims=(1, 2)) * 0.8 + 0.1  # moved, darker
    r = pixel_leakage(test, train, candidates=5)
    assert int(r.reference[2]) == 7
    assert int(r.ratio.argmin()) == 2 and float(r.ratio[2]) < 0.2


def test_underperforming_group_is_the_cluster_the_model_gets_wrong():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(6) * 10
    cluster = torch.arange(600) % 6
    x = centres[cluster] + torch.randn(600, 6, generator=g)
    labels = cluster % 3
    probs = nn.functional.one_hot(labels, 3).float()
    wrong = cluster == 4  # the held-out replicas miss this pattern
    probs[wrong] = nn.functional.one_hot((labels[wrong] + 1) % 3, 3).float()
    r = underperforming_groups(x, labels, probs, n_clusters=6)
    assert r.flagged.sum() == 1
    assert torch.equal(r.flags, wrong)


def test_test_only_pattern_groups_the_new_kind_of_sample():
    train = _blobs(300, 4)
    test = torch.cat([_blobs(40, 4, seed=3), torch.randn(6, 4) * 0.05 + 20])
    r = find_test_only(train, test, metric="euclidean")
    assert r.flags.nonzero().flatten().tolist() == list(range(40, 46))
    assert set(r.pattern[40:].tolist()) == {0}


def test_class_imbalance_datalab_rule():
    r = class_imbalance(torch.tensor([0] * 98 + [1] * 2 + [2] * 100), 3)
    assert (r.rarest, r.imbalanced, int(r.flags.sum())) == (1, True, 2)
    assert not class_imbalance(torch.tensor([0] * 50 + [1] * 40), 2).imbalanced


def test_nan_features_are_one_clear_error():
    x = _blobs(20, 3)
    x[7, 1] = float("nan")
    with pytest.raises(UserInputError, match="NaN or inf.*first row 7"):
        find_outliers(x)
    with pytest.raises(UserInputError, match=r"2-D \(N, D\)"):
        knn(torch.zeros(5))


class _Tuple(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.body, self.head, self.width = nn.Linear(4, 6), nn.Linear(6, 2), width

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h[:, : self.width]


class _Features(nn.Module):
    def __init__(self, bad=False):
        super().__init__()
        self.body, self.head, self.bad = nn.Linear(4, 6), nn.Linear(6, 2), bad

    def features(self, x):
        h = self.body(x)
        return h[:1] if self.bad else h

    def forward(self, x):
        return self.head(self.features(x))


def test_embedding_hooks_tuple_features_method_and_last_linear():
    x = torch.randn(5, 4)
    logits, f = outputs(_Tuple(), x)
    assert logits.shape == (5, 2) and f.shape == (5, 3)
    net = _Features()
    logits, f = outputs(net, x)
    assert torch.allclose(f, net.body(x))
    plain = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2))
    logits, f = outputs(plain, x)
    assert f.shape == (5, 7) and torch.allclose(logits, plain(x))


def test_embedding_hook_with_wrong_shape_is_one_clear_error():
    with pytest.raises(UserInputError, match=r"_Features.features\(x\) gave .*\(1, 6\).*\(5, D\)"):
        outputs(_Features(bad=True), torch.randn(5, 4))
    with pytest.raises(UserInputError, match="no nn.Linear head"):
        outputs(nn.Sequential(nn.Flatten()), torch.randn(5, 4))


def test_pixel_near_duplicates_inside_one_set_leave_each_image_out():
    g = torch.Generator().manual_seed(1)
    imgs = nn.functional.avg_pool2d(torch.rand(30, 3, 36, 36, generator=g), 5, 1)
    imgs[21] = torch.roll(imgs[4], shifts=(1, 2), dims=(1, 2)) * 1.2  # a moved, brighter copy
    r = pixel_leakage(imgs, candidates=4, crop=20, max_shift=3)
    assert int(r.reference[21]) == 4 and int(r.reference[4]) == 21
    assert set(r.ratio.argsort()[:2].tolist()) == {4, 21}
    assert not (r.reference == torch.arange(30)).any()


def _clustered(n=1500, d=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(15, d, generator=g) * 4
    return centres[torch.randint(15, (n,), generator=g)] + torch.randn(n, d, generator=g)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_cells_probing_every_cell_is_exact(metric):
    x, q = _clustered(), _clustered(200, seed=4)
    e = knn(q, x, k=6, metric=metric)
    c = knn(q, x, k=6, metric=metric, index="cells", nprobe=10**6)
    assert torch.equal(c.index, e.index)
    assert torch.allclose(c.distance, e.distance, atol=1e-6)


def test_knn_cells_finds_most_neighbours_and_never_a_row_itself():
    x = _clustered()
    e = knn(x, k=5)
    c = knn(x, k=5, index="cells")  # about 39 cells, 16 probed
    assert not (c.index == torch.arange(len(x))[:, None]).any()
    recall = (e.index[:, :, None] == c.index[:, None, :]).any(2).float().mean()
    assert recall > 0.95
    assert (c.distance >= e.distance - 1e-6).all()  # never closer than the true neighbours


def test_knn_cells_with_too_few_rows_in_the_probed_cells_falls_back_to_exact():
    x = _clustered(300)
    e = knn(x, k=100, metric="euclidean")
    c = knn(x, k=100, metric="euclidean", index="cells", nprobe=1)  # cells of ~17 rows
    assert torch.allclose(c.distance, e.distance, atol=1e-5)


def test_knn_auto_searches_by_cells_from_approx_rows_on(monkeypatch):
    knn_mod = importlib.import_module("dcloop.health.knn")  # (the package exports knn())

    x = _clustered(800)
    assert torch.equal(knn(x, k=4, index="auto").index, knn(x, k=4).index)
    monkeypatch.setattr(knn_mod, "APPROX_ROWS", 500)
    assert torch.equal(knn(x, k=4, index="auto").index, knn(x, k=4, index="cells").index)


def test_knn_faiss_probing_every_cell_is_exact():
    pytest.importorskip("faiss")
    x, q = _clustered(), _clustered(200, seed=4)
    e = knn(q, x, k=6)
    f = knn(q, x, k=6, index="faiss", nprobe=10**6)
    assert torch.equal(f.index, e.index)
    s = knn(x, k=5, index="faiss")
    assert not (s.index == torch.arange(len(x))[:, None]).any()


def test_knn_faiss_missing_or_a_bad_index_is_one_clear_error(monkeypatch):
    knn_mod = importlib.import_module("dcloop.health.knn")  # (the package exports knn())

    with pytest.raises(UserInputError, match=r"index must be one of .*'annoy'"):
        knn(_blobs(20, 3), k=2, index="annoy")
    monkeypatch.setattr(knn_mod, "has_faiss", lambda: False)
    with pytest.raises(UserInputError, match=r"dcloop\[fast\]"):
        knn(_blobs(20, 3), k=2, index="faiss")


def test_pixel_candidates_find_a_copy_moved_by_most_of_a_thumbnail_cell():
    # fine texture (3-px blur): a 3-px move changes the 8x8 thumbnail so much that the
    # plain signature ranks the original 155th of 200; the moved signatures find it first
    g = torch.Generator().manual_seed(0)
    ref = nn.functional.avg_pool2d(torch.rand(200, 3, 34, 34, generator=g), 3, 1)
    query = torch.roll(ref[17:18], shifts=(3, -3), dims=(2, 3)) * 0.9 + 0.05
    assert shifted_candidates(query, ref, k=3, max_shift=3)[0, 0] == 17
    r = pixel_leakage(query, ref, candidates=5)
    assert int(r.reference[0]) == 17 and float(r.ratio[0]) < 0.5


def test_a_light_blur_evens_out_pixel_noise_between_a_copy_and_its_source():
    # a smooth image re-encoded with pixel-level noise (as JPEG or sharpening leave): its
    # aligned distance to the source is mostly that noise, and a 0.7-px blur removes it
    g = torch.Generator().manual_seed(0)
    ref = nn.functional.interpolate(torch.rand(100, 3, 8, 8, generator=g), size=32, mode="bilinear")
    query = ref[7:8] + (torch.rand(1, 3, 32, 32, generator=g) - 0.5) * 0.6
    sharp = pixel_leakage(query, ref, candidates=5)
    soft = pixel_leakage(query, ref, candidates=5, blur=0.7)
    assert int(sharp.reference[0]) == int(soft.reference[0]) == 7
    assert float(soft.ratio[0]) < 0.5 * float(sharp.ratio[0])
    with pytest.raises(UserInputError, match="blur"):
        pixel_leakage(query, ref, blur=-1)


def test_gaussian_blur_keeps_flat_images_and_spreads_a_point_symmetrically():
    flat = torch.full((2, 3, 9, 9), 0.4)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)
    assert gaussian_blur(flat, 0.0) is flat
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    out = gaussian_blur(point, 1.0)[0, 0]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(out, out.flip(0)) and torch.allclose(out, out.T)
    assert out[4, 4] == out.max() and out[4, 4] < 0.2


def test_mutual_ratio_counts_the_reference_side_only_when_the_best_match_is_mutual():
    fwd = PixelPairs(torch.tensor([0, 1]), torch.zeros(2), torch.tensor([0.25, 0.25]))
    # reference 0's best query is query 0 (mutual, ratio 0.04); reference 1's is query 0
    back = PixelPairs(torch.tensor([0, 0]), torch.zeros(2), torch.tensor([0.04, 0.01]))
    assert torch.allclose(mutual_ratio(fwd, back), torch.tensor([0.1, 0.5]))


def test_pixel_candidates_inside_one_set_never_return_the_image_itself():
    g = torch.Generator().manual_seed(2)
    imgs = nn.functional.avg_pool2d(torch.rand(40, 3, 34, 34, generator=g), 3, 1)
    cand = shifted_candidates(imgs, k=6, max_shift=2)
    assert cand.shape == (40, 6)
    assert not (cand == torch.arange(40)[:, None]).any()
    assert all(len(set(row.tolist())) == 6 for row in cand)


def test_pixel_leakage_is_the_same_for_any_pixel_range():
    # the standardisation's floor is a share of the pixel range: 0..1, 0..255 and
    # normalised images give the same pairs and ratios (it was a fixed 1e-2, tiny at 0..255)
    g = torch.Generator().manual_seed(4)
    imgs = nn.functional.avg_pool2d(torch.rand(30, 3, 36, 36, generator=g), 5, 1)
    imgs[5] = imgs[5] * 0.02 + 0.5  # a nearly flat image: where the floor matters
    imgs[21] = torch.roll(imgs[5], shifts=(1, 2), dims=(1, 2))
    unit = pixel_leakage(imgs, candidates=4, crop=20, max_shift=3)
    for scaled in (imgs * 255, (imgs - 0.45) / 0.25):
        r = pixel_leakage(scaled, candidates=4, crop=20, max_shift=3)
        # image 21 is image 5 moved: for most images the two tie exactly (ratio 1), and
        # rounding picks either; where the best match is clear it is the same one
        clear = unit.ratio < 0.999
        assert clear.sum() >= 2
        assert torch.equal(r.reference[clear], unit.reference[clear])
        assert torch.allclose(r.ratio, unit.ratio, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, crop, shift", [((3, 20, 20), 14, 3), ((1, 12, 15), 8, 2)])
def test_aligned_distance_equals_comparing_every_shifted_window(shape, crop, shift):
    from dcloop.health.pixels import _standardise, _unit_range, aligned_distance

    g = torch.Generator().manual_seed(0)
    q = torch.rand(5, *shape, generator=g)
    r = torch.rand(7, *shape, generator=g)
    r[2] = torch.roll(q[1], shifts=(1, -2), dims=(1, 2))  # a moved copy
    cand = torch.randint(0, 7, (5, 4), generator=g)
    cand[1, 0] = 2
    got = aligned_distance(q, r, cand, crop=crop, max_shift=shift)
    qu, ru = _unit_range(q, r)
    h, w = shape[1:]
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    want = torch.full((5, 4), float("inf"))
    for i in range(5):
        a = _standardise(qu[i, :, y0 : y0 + crop, x0 : x0 + crop])
        for j in range(4):
            for dy in range(-shift, shift + 1):
                for dx in range(-shift, shift + 1):
                    win = ru[cand[i, j], :, y0 + dy : y0 + dy + crop, x0 + dx : x0 + dx + crop]
                    d = ((a - _standardise(win)) ** 2).mean()
                    want[i, j] = torch.minimum(want[i, j], d)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if shape[0] == 3:  # the copy, moved back within the window, matches exactly
        assert got[1, 0] < 1e-4
