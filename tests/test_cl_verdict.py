import cleanlab
import numpy as np
import pytest
import torch

from dcloop.cleaning import action_weights, confident_learning


def noisy_problem(n=600, c=4, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    labels = true.copy()
    flip = rng.random(n) < 0.2
    labels[flip] = (true[flip] + 1) % c
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), true] += 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs, flip


@pytest.mark.parametrize("backend", ["torch", "cleanlab"])
@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "both", "confident_learning"])
def test_flags_equal_a_direct_cleanlab_call(backend, filter_by):
    labels, probs, _ = noisy_problem()
    res = confident_learning(
        torch.from_numpy(labels),
        torch.from_numpy(probs).float(),
        filter_by=filter_by,
        backend=backend,
    )
    ref = cleanlab.filter.find_label_issues(labels, probs.astype(np.float32), filter_by=filter_by)
    np.testing.assert_array_equal(res.flags.numpy(), ref)
    ref_q = cleanlab.rank.get_label_quality_scores(labels, probs.astype(np.float32))
    np.testing.assert_allclose(res.quality.numpy(), ref_q, rtol=1e-5, atol=1e-6)
    assert 0.1 < res.noise_rate < 0.3
    np.testing.assert_array_equal(res.suggested.numpy(), probs.argmax(1))


def test_action_weights():
    flags = torch.tensor([True, False, True])
    q = torch.tensor([0.04, 0.9, 0.5])
    assert action_weights(flags, q, action="prune").tolist() == [0.0, 1.0, 0.0]
    assert action_weights(flags, q, action="detect").tolist() == [1.0, 1.0, 1.0]
    down = action_weights(flags, q, action="downweight", floor=0.1, power=2.0)
    torch.testing.assert_close(down, torch.tensor([0.1, 1.0, 0.25]))
    with pytest.raises(ValueError, match=r"action must be one of \['prune'"):
        action_weights(flags, q, action="drop")
    with pytest.raises(ValueError, match="floor"):
        action_weights(flags, q, action="downweight", floor=2.0)


def test_bad_choices():
    labels, probs, _ = noisy_problem(n=50)
    with pytest.raises(ValueError, match="filter_by"):
        confident_learning(torch.from_numpy(labels), torch.from_numpy(probs), filter_by="x")
