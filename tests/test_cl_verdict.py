import cleanlab
import numpy as np
import pytest
import torch

from dcloop import cl
from dcloop.cl import verdict
from dcloop.safety import action_weights


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
    res = verdict(
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
        verdict(torch.from_numpy(labels), torch.from_numpy(probs), filter_by="x")


@pytest.mark.parametrize("filter_by", list(cl.FILTER_BY))
@pytest.mark.parametrize("quality_method", list(cl.SCORE_METHODS))
@pytest.mark.parametrize("n, c", [(600, 4), (3000, 37)])
def test_one_pass_equals_the_separate_engine_calls(filter_by, quality_method, n, c):
    """flags, quality, suggested label, joint and noise matrix: bit for bit what
    find_label_issues + get_label_quality_scores + estimate_joint + estimate_noise_matrices +
    argmax give, each of which reads the whole matrix again."""
    g = torch.Generator().manual_seed(n + c)
    probs = (torch.randn(n, c, generator=g) * 3).softmax(1)
    labels = torch.randint(0, c, (n,), generator=g)
    res = verdict(labels, probs, filter_by=filter_by, quality_method=quality_method)
    flags = cl.find_label_issues(labels, probs, filter_by=filter_by)
    quality = cl.get_label_quality_scores(labels, probs, method=quality_method)
    joint = torch.as_tensor(cl.estimate_joint(labels, probs)).float()
    noise, _ = cl.estimate_noise_matrices(labels, probs)
    assert torch.equal(res.flags, torch.as_tensor(flags).bool())
    assert torch.equal(res.quality, torch.as_tensor(quality).float())
    assert torch.equal(res.suggested, probs.argmax(1))
    assert torch.equal(res.joint, joint)
    assert torch.equal(res.noise_matrix, torch.as_tensor(noise).float())
    assert res.noise_rate == pytest.approx(float(1 - joint.trace()))


def test_verdict_reads_the_matrix_in_one_scan(monkeypatch):
    """One scan of the (N, C) matrix per verdict (the separate calls each scan it again)."""
    import importlib

    count = importlib.import_module("dcloop.cl.count")
    vmod = importlib.import_module("dcloop.cl.verdict")  # (dcloop.cl.verdict is the function)

    calls = []
    real = count.scan
    monkeypatch.setattr(vmod, "scan", lambda inputs: (calls.append(1), real(inputs))[1])
    labels, probs, _ = noisy_problem()
    verdict(labels, probs)
    assert len(calls) == 1
