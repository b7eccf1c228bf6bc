"""dcloop.calibrate: temperature and noise matrix fitted together on the noisy labels."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dcloop.calibrate import CALIBRATE_METHODS, calibrate, noise_fields
from dcloop.cl import verdict
from dcloop.errors import UserInputError
from dcloop.safety import CleaningPolicy


def make(n=3000, c=5, k=3, rate=0.4, temps=(1.0,), seed=0):
    """Rows whose true label is drawn from ``softmax(logits)`` (so those logits are the
    calibrated posterior), a fraction ``rate`` flipped uniformly to another class; the
    evidence is ``softmax(logits / temps[fold])`` (a replica's mis-scaled softmax)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3.0
    true = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    flip = torch.rand(n, generator=g, dtype=torch.float64) < rate
    other = (true + torch.randint(1, c, (n,), generator=g)) % c
    given = torch.where(flip, other, true)
    folds = torch.arange(n) % k
    scale = torch.as_tensor([temps[int(f) % len(temps)] for f in folds], dtype=torch.float64)
    evidence = torch.softmax(logits / scale.unsqueeze(1), 1).float()
    return evidence, given, folds, float((given != true).double().mean())


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_rate_where_confident_counting_overestimates(rate):
    """The model's own uncertainty is not label noise: the confident joint counts it as
    noise (+30 to +70 % here), the calibrated posterior does not."""
    evidence, given, folds, true_rate = make(rate=rate)
    raw = verdict(given, evidence).noise_rate
    assert raw / true_rate - 1 > 0.25  # what the estimate did without calibrate
    cal = calibrate(evidence, given, folds)
    assert abs(cal.noise_rate / true_rate - 1) < 0.1


def test_temperature_per_fold_recovered():
    """Each fold's softmax mis-scaled by its own temperature: each is undone."""
    temps = (0.5, 2.0, 3.0)
    evidence, given, folds, true_rate = make(temps=temps, rate=0.2)
    cal = calibrate(evidence, given, folds)
    assert cal.temperatures.shape == (3,)
    for fitted, t in zip(cal.temperatures.tolist(), temps, strict=True):
        assert fitted * t == pytest.approx(1.0, rel=0.2)  # T_fit = 1 / t undoes it
    assert abs(cal.noise_rate / true_rate - 1) < 0.1
    one = calibrate(evidence, given)  # one temperature for all: cannot undo all three
    assert abs(one.noise_rate / true_rate - 1) > abs(cal.noise_rate / true_rate - 1)


def test_outputs_shapes_and_sums():
    evidence, given, folds, _ = make(n=600, c=4, k=5, rate=0.3)
    cal = calibrate(evidence, given, folds)
    assert cal.probs.shape == evidence.shape and cal.probs.dtype == evidence.dtype
    torch.testing.assert_close(cal.probs.sum(1), torch.ones(600), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cal.noise_matrix.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-9, rtol=0
    )
    assert cal.posterior_clean.shape == (600,)
    assert 0 <= float(cal.posterior_clean.min()) <= float(cal.posterior_clean.max()) <= 1
    joint = cal.noise_matrix * cal.prior.unsqueeze(0)
    assert cal.noise_rate == pytest.approx(1 - float(joint.trace()))
    assert float(cal.prior.sum()) == pytest.approx(1.0)
    assert 1 <= cal.iterations <= 30


def test_clean_labels_give_little_noise():
    evidence, given, folds, true_rate = make(rate=0.0)
    assert true_rate == 0.0
    assert calibrate(evidence, given, folds).noise_rate < 0.03


def test_deterministic():
    evidence, given, folds, _ = make(n=800)
    a, b = calibrate(evidence, given, folds), calibrate(evidence, given, folds)
    assert torch.equal(a.probs, b.probs) and a.noise_rate == b.noise_rate


def test_noise_fields_fit_a_verdict():
    """The estimate goes into a verdict as one consistent set of fields."""
    evidence, given, folds, _ = make(n=900, c=4, rate=0.3)
    cal = calibrate(evidence, given, folds)
    fields = noise_fields(cal)
    result = dataclasses.replace(verdict(given, evidence), **fields)
    assert result.noise_rate == pytest.approx(cal.noise_rate, abs=1e-6)
    assert float(result.joint.sum()) == pytest.approx(1.0, abs=1e-5)
    assert result.noise_matrix.dtype == torch.float32 and result.class_noise_rate.shape == (4,)
    low, high = cal.noise_rate_range
    assert low <= cal.noise_rate <= high
    assert set(CALIBRATE_METHODS) == {"noise_aware", "posterior", "none"}


def test_counted_matrix_without_confident_rows_is_identity():
    """No row reaches ``confident``: the counted matrix says nothing (identity), and the
    estimate is half the likelihood's."""
    evidence, given, folds, _ = make(n=600, c=3, rate=0.3)
    cal = calibrate(evidence, given, folds, confident=1.0)
    assert torch.equal(cal.counted_matrix, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(cal.noise_matrix, (cal.likelihood_matrix + torch.eye(3)) / 2)
    with pytest.raises(UserInputError, match="confident"):
        calibrate(evidence, given, folds, confident=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e, y, f: (e[0], y, f), r"evidence must be a float \(N, C\)"),
        (lambda e, y, f: (e, y[:-1], f), r"labels must have shape \(500,\)"),
        (lambda e, y, f: (e, y + 5, f), r"labels must be in \[0, 5\)"),
        (lambda e, y, f: (e, y, f[:3]), r"folds must have shape \(500,\)"),
        (lambda e, y, f: (e, y, f - 1), r"folds must be >= 0; got -1"),
        (lambda e, y, f: (e.clone().fill_(float("nan")), y, f), "evidence must be finite"),
    ],
)
def test_bad_input_is_one_clear_error(change, message):
    evidence, given, folds, _ = make(n=500)
    with pytest.raises(ValueError, match=message):
        calibrate(*change(evidence, given, folds))


def test_cleaning_policy_calibrate():
    """cl.calibrate=noise_aware: the verdict's noise estimate is calibrate's, the flags and
    scores are confident learning's; none: the verdict as it was."""
    from dcloop.safety import CleaningPolicy

    evidence, given, folds, true_rate = make(rate=0.2)
    plain = CleaningPolicy().verdict(given, evidence)
    assert CleaningPolicy().calibrate == "none"
    fixed = CleaningPolicy(calibrate="noise_aware").verdict(given, evidence, folds=folds)
    assert torch.equal(fixed.flags, plain.flags) and torch.equal(fixed.quality, plain.quality)
    assert fixed.noise_rate == pytest.approx(calibrate(evidence, given, folds).noise_rate)
    assert abs(fixed.noise_rate / true_rate - 1) < 0.1 < abs(plain.noise_rate / true_rate - 1)
    with pytest.raises(UserInputError, match="calibrate must be one of .*got 'platt'"):
        CleaningPolicy(calibrate="platt")


def test_fit_on_evenly_spaced_rows():
    """``max_fit_rows`` bounds the fit's cost; every row is still calibrated and counted."""
    evidence, given, folds, true_rate = make(n=4000, rate=0.3, temps=(2.0,))
    full = calibrate(evidence, given, folds)
    part = calibrate(evidence, given, folds, max_fit_rows=2000)
    assert part.probs.shape == evidence.shape and part.posterior_clean.shape == (4000,)
    torch.testing.assert_close(part.temperatures, full.temperatures, rtol=0.2, atol=0)
    assert abs(part.noise_rate / true_rate - 1) < 0.1
    with pytest.raises(UserInputError, match="max_fit_rows must be an integer"):
        calibrate(evidence, given, folds, max_fit_rows=0)


def test_cleaning_policy_posterior_flags():
    """cl.calibrate=posterior: the flags are the rows whose calibrated posterior of the given
    label is below 0.5 (confirmed rows never), that posterior is the quality, and on
    under-confident evidence (where confident learning over-flags) the flagged count follows
    the truth and the flags score a higher F1 than confident learning's."""
    from dcloop.safety import CleaningPolicy

    evidence, given, folds, true_rate = make(rate=0.3, seed=1)
    # make() draws the truth from the logits; rebuild it the same way to score the flags
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3000, 5, generator=g, dtype=torch.float64) * 3.0
    true = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    true_noisy = given != true
    assert float(true_noisy.double().mean()) == pytest.approx(true_rate)

    def f1(flags):
        tp = float((flags & true_noisy).sum())
        return 2 * tp / (float(flags.sum()) + float(true_noisy.sum()))

    plain = CleaningPolicy().verdict(given, evidence)
    post = CleaningPolicy(calibrate="posterior").verdict(given, evidence, folds=folds)
    cal = calibrate(evidence, given, folds)
    assert torch.equal(post.flags, cal.posterior_clean.float() < 0.5)
    torch.testing.assert_close(post.quality, cal.posterior_clean.float())
    assert post.noise_rate == pytest.approx(cal.noise_rate)
    assert abs(float(post.flags.double().mean()) / true_rate - 1) < abs(
        float(plain.flags.double().mean()) / true_rate - 1
    )
    assert f1(post.flags) > f1(plain.flags)
    confirmed = post.flags.clone()
    again = CleaningPolicy(calibrate="posterior").verdict(given, evidence, confirmed, folds)
    assert not bool(again.flags.any())


def test_the_k_temperature_searches_run_in_lockstep_and_each_finds_its_folds_optimum():
    """_fit_log_t searches every fold's temperature in one pass per step; each result is the
    maximum of that fold's own likelihood (a grid over log T), and a fold with no rows
    keeps log T = 0."""
    from dcloop.calibrate import _fit_log_t

    g = torch.Generator().manual_seed(3)
    n, c = 600, 4
    labels = torch.randint(0, c, (n,), generator=g)
    folds = torch.randint(0, 2, (n,), generator=g) * 2  # folds 0 and 2; fold 1 is empty
    sharp = torch.tensor([0.5, 1.0, 3.0])[folds]  # a different best temperature per fold
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    logits[torch.arange(n), labels] += 1.5
    z = (logits * sharp.double().unsqueeze(1)).log_softmax(1)
    rows = torch.eye(c, dtype=torch.float64)[labels]
    got = _fit_log_t(z, rows, folds, [True, False, True], torch.zeros(3), None)
    grid = torch.linspace(-3.9, 3.9, 7801, dtype=torch.float64)
    for j in (0, 2):
        zj = z[folds == j]
        ll = [
            float(torch.softmax(zj * torch.exp(-x), 1)[torch.arange(len(zj)), labels[folds == j]]
                  .log().sum())
            for x in grid
        ]  # fmt: skip
        best = float(grid[int(torch.tensor(ll).argmax())])
        assert abs(float(got[j]) - best) < 2e-3, (j, float(got[j]), best)
    assert float(got[1]) == 0.0
    assert float(got[0]) != pytest.approx(float(got[2]), abs=0.1)  # two different optima


def test_warm_start_from_a_previous_fit_needs_fewer_rounds_and_lands_near_the_optimum():
    """Between two loop steps the evidence moves little: a fit started where the last one
    ended needs a few rounds; cold, the alternating fit runs to max_iter."""
    evidence, given, folds, _ = make(rate=0.4, temps=(0.5, 1.0, 2.0))
    before = calibrate(evidence, given, folds, max_iter=200)
    moved = (0.9 * evidence + 0.1 * make(rate=0.4, temps=(0.5, 1.0, 2.0), seed=1)[0]).float()
    cold = calibrate(moved, given, folds, max_iter=200)
    warm = calibrate(moved, given, folds, max_iter=200, start=before.warm_start())
    assert warm.iterations < cold.iterations
    torch.testing.assert_close(warm.temperatures, cold.temperatures, atol=0.02, rtol=0.02)
    assert abs(warm.noise_rate - cold.noise_rate) < 0.005


def test_warm_start_of_another_shape_is_ignored():
    evidence, given, folds, _ = make(k=3)
    other = calibrate(*make(k=2, c=4)[:3]).warm_start()
    a = calibrate(evidence, given, folds)
    b = calibrate(evidence, given, folds, start=other)
    torch.testing.assert_close(a.temperatures, b.temperatures)
    assert a.iterations == b.iterations


def test_cleaning_policy_carries_the_fit_between_calls():
    evidence, given, folds, _ = make()
    policy = CleaningPolicy(calibrate="posterior", calibrate_warm=True)
    warm: dict = {}
    policy.verdict(given, evidence, folds=folds, warm=warm)
    first = warm["calibration"]
    assert first.temperatures.shape == (3,) and first.likelihood_matrix.shape == (5, 5)
    policy.verdict(given, evidence, folds=folds, warm=warm)
    assert warm["calibration"] is not first


def test_the_loops_warm_start_travels_in_the_callbacks_checkpoint_state():
    from dcloop.callbacks import ConfidentLearning

    evidence, given, folds, _ = make()
    cb = ConfidentLearning(calibrate="posterior", calibrate_warm=True)
    cb.run(given, evidence, folds=folds)
    state = cb.state_dict()
    resumed = ConfidentLearning(calibrate="posterior", calibrate_warm=True)
    resumed.load_state_dict(state)
    torch.testing.assert_close(
        resumed.warm["calibration"].temperatures, cb.warm["calibration"].temperatures
    )
    a = cb.run(given, evidence, folds=folds)
    b = resumed.run(given, evidence, folds=folds)
    torch.testing.assert_close(a.quality, b.quality)  # the same start, the same fit
    older = {k: v for k, v in state.items() if k != "calibration_start"}
    fresh = ConfidentLearning(calibrate="posterior", calibrate_warm=True)
    fresh.load_state_dict(older)
    assert fresh.warm == {}
    cold = ConfidentLearning(calibrate="posterior")
    cold.run(given, evidence, folds=folds)
    assert cold.warm == {} and "calibration_start" not in cold.state_dict()


@pytest.mark.parametrize("warm_on", [False, True])
def test_the_warm_start_is_used_only_with_calibrate_warm(monkeypatch, warm_on):
    import dcloop.safety as safety

    starts = []
    real = safety.calibrate

    def spy(*args, start=None, **kwargs):
        starts.append(start)
        return real(*args, start=start, **kwargs)

    monkeypatch.setattr(safety, "calibrate", spy)
    evidence, given, folds, _ = make()
    policy = CleaningPolicy(calibrate="posterior", calibrate_warm=warm_on)
    warm: dict = {}
    policy.verdict(given, evidence, folds=folds, warm=warm)
    first = warm.get("calibration")
    assert (first is not None) == warm_on  # kept only where it is used
    policy.verdict(given, evidence, folds=folds, warm=warm)
    assert starts[0] is None
    assert (starts[1] is first) if warm_on else starts[1] is None
