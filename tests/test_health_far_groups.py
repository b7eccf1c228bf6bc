"""Small far groups (find_far_groups): a group of alike samples far from the rest, which
Datalab's kNN distance does not see (the group is its own neighbourhood)."""

import pytest
import torch

from dcloop.errors import UserInputError
from dcloop.health import find_far_groups, find_outliers, knn


def _blob_and_group(offset=20.0, group=20, n=1000, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    blob = torch.randn(n, d, generator=g)
    far = offset + 0.1 * torch.randn(group, d, generator=g)
    return torch.cat([blob, far])


def test_a_tight_far_group_of_20_is_flagged_where_datalabs_k10_rule_misses_it():
    x = _blob_and_group()
    datalab = find_outliers(x, k=10, metric="euclidean")
    assert not datalab.flags[1000:].any()  # the group is its own 10 nearest neighbours
    far = find_far_groups(x, metric="euclidean")
    assert far.flags[1000:].all()
    assert not far.flags[:1000].any()
    assert far.size[1000:].eq(20).all() and far.group[1000:].unique().numel() == 1
    assert bool((far.gap[1000:] > far.radius).all())
    assert far.radius == pytest.approx(datalab.cutoff)
    assert far.max_size == 21  # 2 % of 1,020, rounded up


def test_cosine_group_in_a_direction_of_its_own():
    g = torch.Generator().manual_seed(1)
    blob = torch.randn(1000, 16, generator=g).abs()  # the positive orthant
    blob[:, 0] = 0.0
    grp = torch.zeros(20, 16)
    grp[:, 0] = 1.0
    grp += 0.01 * torch.randn(20, 16, generator=g)
    x = torch.cat([blob, grp])
    assert not find_outliers(x).flags[1000:].any()
    far = find_far_groups(x)
    assert far.flags[1000:].all() and not far.flags[:1000].any()


def test_a_group_larger_than_max_size_or_near_the_bulk_is_not_flagged():
    x = _blob_and_group()
    assert not find_far_groups(x, metric="euclidean", max_size=19).flags.any()
    assert not find_far_groups(x, metric="euclidean", max_share=0.01).flags.any()  # 11 < 20
    near = _blob_and_group(offset=0.5)  # inside the blob's reach
    assert not find_far_groups(near, metric="euclidean").flags.any()


def test_no_structure_no_flags():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(2))
    assert not find_far_groups(x, metric="euclidean").flags.any()
    assert not find_far_groups(x).flags.any()


def test_single_far_samples_only_with_min_size_1():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(3))
    x[0] = 50.0
    assert not find_far_groups(x, metric="euclidean").flags[0]
    assert find_far_groups(x, metric="euclidean", min_size=1).flags[0]


def test_shared_neighbours_give_the_same_groups_and_too_few_columns_are_refused():
    x = _blob_and_group()
    own = find_far_groups(x, metric="euclidean")
    nb = knn(x, k=30, metric="euclidean")
    shared = find_far_groups(x, metric="euclidean", neighbours=nb)
    assert torch.equal(own.flags, shared.flags) and torch.equal(own.group, shared.group)
    with pytest.raises(UserInputError, match="at least max\\(k, max_size\\) = 21 columns"):
        find_far_groups(x, metric="euclidean", neighbours=knn(x, k=10, metric="euclidean"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_share": 0.0}, "max_share"),
        ({"max_share": 1.5}, "max_share"),
        ({"min_size": 0}, "min_size"),
        ({"min_size": 5, "max_size": 3}, "max_size"),
        ({"k": 0}, "k must be"),
        ({"metric": "manhattan"}, "metric must be one of"),
        ({"threshold": 0.0}, "threshold"),
    ],
)
def test_bad_options_name_the_value(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        find_far_groups(torch.randn(50, 3), **kwargs)


def test_bad_features_are_refused():
    with pytest.raises(UserInputError, match="2-D"):
        find_far_groups(torch.randn(50))
    bad = torch.randn(50, 3)
    bad[7, 1] = float("nan")
    with pytest.raises(UserInputError, match="first row 7"):
        find_far_groups(bad)
