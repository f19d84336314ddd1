"""akd_ray.stats against scipy where scipy has the statistic, Holm by hand, the paired bootstrap's
promises (seeded, [0, 0] for identical predictions, wider for a smaller test set, each metric equal
to akd_ray.tasks.metrics on the full data) and Dodge et al.'s expected maximum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from akd_ray import stats
from akd_ray.tasks import metrics

A = [0.912, 0.921, 0.917, 0.925]
B = [0.899, 0.905, 0.897, 0.903]


def test_mean_interval_is_scipy_s_t_interval():
    got = stats.mean_interval(A)
    assert got.mean == pytest.approx(np.mean(A)) and got.std == pytest.approx(sps.tstd(A))
    assert (got.low, got.high) == pytest.approx(sps.t.interval(0.95, 3, loc=np.mean(A), scale=sps.sem(A)))
    assert math.isnan(stats.mean_interval([0.9]).low) and math.isnan(stats.mean_interval([]).mean)


def test_welch_interval_is_scipy_s_unequal_variance_interval():
    got = stats.welch_interval(A, B[:3])
    ci = sps.ttest_ind(A, B[:3], equal_var=False).confidence_interval(0.95)
    assert got.estimate == pytest.approx(np.mean(A) - np.mean(B[:3]))
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high))


@pytest.mark.parametrize("level", [0.95, 0.99])
def test_paired_interval_is_scipy_s_ttest_rel(level):
    got = stats.paired_interval(A, B, level)
    res = sps.ttest_rel(A, B)
    ci = res.confidence_interval(level)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high))
    assert got.pvalue == pytest.approx(res.pvalue) and got.n == 4 and got.test == "paired t"
    # pairing removes the shared seed effect: narrower than Welch on the same numbers
    welch = stats.welch_interval(A, B)
    assert got.high - got.low != pytest.approx(welch.high - welch.low)


def test_slope_interval_is_linregress_with_a_t_interval():
    x, y = [2.6, 2.9, 3.2, 3.8, 4.1], [5.0, 4.0, 4.2, 2.9, 2.0]
    got = stats.slope_interval(x, y)
    fit = sps.linregress(x, y)
    half = sps.t.ppf(0.975, 3) * fit.stderr
    assert (got.slope, got.intercept, got.stderr) == pytest.approx((fit.slope, fit.intercept, fit.stderr))
    assert (got.low, got.high) == pytest.approx((fit.slope - half, fit.slope + half)) and got.high < 0


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    h = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert h.adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert h.reject.tolist() == [True, False, False, True]
    # the two rejected at 0.05/3 and 0.05/4; the procedure stopped at step 3: level 0.05/2 for the rest
    assert h.alpha == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    assert stats.holm([0.2]).adjusted.tolist() == [0.2] and not stats.holm([0.2]).reject[0]
    assert stats.holm([0.5, 0.6]).adjusted == pytest.approx([1.0, 1.0])


def _two_methods(n: int, seeds: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random((seeds, n)) < 0.85, y, 1 - y)
    b = np.where(rng.random((seeds, n)) < 0.80, y, 1 - y)
    return a, b, y


def test_bootstrap_is_reproducible_with_its_seed_and_pairs_the_draw():
    a, b, y = _two_methods(300)
    first = stats.paired_bootstrap(a, b, y, "accuracy", rng=7)
    assert stats.paired_bootstrap(a, b, y, "accuracy", rng=7) == first
    assert stats.paired_bootstrap(a, b, y, "accuracy", rng=8) != first
    assert first.estimate == pytest.approx((a == y).mean() - (b == y).mean())
    assert first.low < first.estimate < first.high and first.test == "paired bootstrap"
    swapped = stats.paired_bootstrap(b, a, y, "accuracy", rng=7)  # the same draws, the sign flipped
    assert (swapped.low, swapped.high) == pytest.approx((-first.high, -first.low))


@pytest.mark.parametrize("metric", stats.BOOTSTRAP_METRICS)
def test_identical_predictions_give_zero_and_p_one(metric):
    a, _, y = _two_methods(200)
    got = stats.paired_bootstrap(a, a.copy(), y, metric, resamples=2000, rng=0)
    assert (got.estimate, got.low, got.high, got.pvalue) == (0.0, 0.0, 0.0, 1.0)


def test_the_interval_widens_as_the_test_set_shrinks():
    a, b, y = _two_methods(2000)
    wide = stats.paired_bootstrap(a[:, :200], b[:, :200], y[:200], "accuracy", rng=0)
    narrow = stats.paired_bootstrap(a, b, y, "accuracy", rng=0)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)  # ~ sqrt(10) wider
    # the seed term alone (ttest_rel on per-seed accuracies) misses the test-set term
    per_seed = stats.paired_interval((a[:, :200] == y[:200]).mean(1), (b[:, :200] == y[:200]).mean(1))
    assert per_seed.estimate == pytest.approx(wide.estimate)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc", "pearson"])
def test_each_metric_matches_the_task_metric_on_the_full_data(metric):
    a, b, y = _two_methods(150, seeds=2, seed=3)
    if metric == "pearson":
        rng = np.random.default_rng(1)
        y = rng.normal(size=150)
        a, b = y + rng.normal(size=(2, 150)), y + 2 * rng.normal(size=(2, 150))
    fn = getattr(metrics, metric)
    want = np.mean([fn(torch.tensor(a[s]), torch.tensor(y)) for s in range(2)]) - \
        np.mean([fn(torch.tensor(b[s]), torch.tensor(y)) for s in range(2)])
    assert stats.paired_bootstrap(a, b, y, metric, resamples=200, rng=0).estimate == pytest.approx(want)


def test_bootstrap_refuses_what_it_cannot_do():
    a, b, y = _two_methods(50)
    with pytest.raises(ValueError, match="'spearman' is not supported; valid: accuracy, f1, mcc, pearson"):
        stats.paired_bootstrap(a, b, y, "spearman")
    with pytest.raises(ValueError, match=r"must both be \(seeds, 50 examples\)"):
        stats.paired_bootstrap(a, b[:2], y, "accuracy")


def test_a_clear_difference_has_a_small_p_value_that_holm_can_use():
    a, b, y = _two_methods(2000)
    clear = stats.paired_bootstrap(a, b, y, "accuracy", rng=0)
    assert clear.low > 0 and clear.pvalue < 0.01
    noise = stats.paired_bootstrap(a, a[::-1].copy(), y, "accuracy", rng=0)  # the same method, seeds swapped
    assert noise.low < 0 < noise.high and noise.pvalue > 0.05


def test_dodge_expected_max():
    v = [0.61, 0.70, 0.72, 0.80, 0.93]
    e = stats.expected_max(v, 50)
    assert e.mean[0] == pytest.approx(np.mean(v)) and e.std[0] == pytest.approx(np.std(v))
    assert np.all(np.diff(e.mean) > 0) and e.mean[-1] == pytest.approx(max(v), abs=1e-4)
    # n = 2 by hand: P(max = v_(i)) = (i/N)^2 - ((i-1)/N)^2
    assert e.mean[1] == pytest.approx(sum(x * ((i / 5) ** 2 - ((i - 1) / 5) ** 2) for i, x in enumerate(sorted(v), 1)))
    assert len(stats.expected_max(v).n) == 5 and len(stats.expected_max([]).mean) == 0


# ---------------------------------------------------------------------------------------- seeds x test examples (#22)
def test_crossed_interval_is_the_test_sets_t_interval_when_seeds_agree():
    """Every seed predicts alike: no seed term, so the interval is Student's t over the per-example
    differences (scipy.stats.ttest_1samp), df N-1."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    a1, b1 = np.where(rng.random(300) < 0.9, y, 1 - y), np.where(rng.random(300) < 0.85, y, 1 - y)
    a, b = np.tile(a1, (3, 1)), np.tile(b1, (3, 1))
    d = stats.crossed_interval(a, y, "accuracy", b)
    ref = sps.ttest_1samp((a1 == y).astype(float) - (b1 == y), 0)
    ci = ref.confidence_interval(0.95)
    assert (d.low, d.high, d.pvalue) == pytest.approx((ci.low, ci.high, ref.pvalue))


def test_crossed_interval_is_the_paired_t_over_seeds_when_examples_agree():
    """Each seed is all right or all wrong on every example alike: no example term, so the interval is the
    paired t-interval over seeds (scipy.stats.ttest_rel), df S-1."""
    y = np.zeros(50, dtype=int)
    right = np.array([[1, 1, 0, 1], [0, 1, 0, 0]])  # seeds x method: a right / b right
    a = np.stack([np.full(50, 0 if r else 1) for r in right[0]])
    b = np.stack([np.full(50, 0 if r else 1) for r in right[1]])
    d = stats.crossed_interval(a, y, "accuracy", b)
    ref = sps.ttest_rel(right[0].astype(float), right[1].astype(float))
    ci = ref.confidence_interval(0.95)
    assert d.estimate == pytest.approx(0.5)
    assert d.pvalue == pytest.approx(ref.pvalue) and d.low == pytest.approx(ci.low)
    assert d.high == 1.0 and ci.high > 1  # clipped: a difference of accuracies is at most 100 points


def test_crossed_interval_of_f1_takes_its_terms_from_the_example_bootstrap():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    a = np.where(rng.random((4, 400)) < 0.9, y, 1 - y)
    b = np.where(rng.random((4, 400)) < 0.8, y, 1 - y)
    d = stats.crossed_interval(a, y, "f1", b, rng=0)
    assert d.low < d.estimate < d.high and d.low > 0  # 10 points apart on 400 examples: clearly positive
    mean = stats.crossed_interval(a, y, "mcc", rng=0)
    assert -1 <= mean.low < mean.estimate < mean.high <= 1


def test_bounded_clips_to_the_metrics_range():
    assert stats.bounded(0.9, 1.2, "accuracy") == (0.9, 1.0)
    assert stats.bounded(-2.5, 0.1, "mcc", difference=True) == (-2.0, 0.1)
    assert stats.bounded(math.nan, math.nan, "f1")[0] != stats.bounded(math.nan, math.nan, "f1")[0]


def test_seeds_for_power_matches_the_textbook_one_sample_t():
    """Cohen's d = 1 (mean 1, SD 1), two-sided alpha 0.05, 80% power: 10 pairs (Cohen 1988; G*Power)."""
    d = np.array([0.0, 1.0, 2.0])  # mean 1, SD 1
    p = stats.seeds_for_power(d)
    assert p.seeds_needed == 10
    # the power reported at the observed 3 seeds is the noncentral t's
    crit = sps.t.ppf(0.975, 2)
    assert p.power == pytest.approx(sps.nct.sf(crit, 2, np.sqrt(3)) + sps.nct.cdf(-crit, 2, np.sqrt(3)))
    assert stats.seeds_for_power(d, effect=0.5).seeds_needed > 30  # half the effect: about 4x the seeds
    assert stats.seeds_for_power([1.0, 1.0, 1.0]).seeds_needed is None  # no spread: nothing to judge by


def test_seeds_for_power_with_the_evaluation_sets_noise_as_a_floor():
    """A floor (variance more seeds do not shrink) asks for more seeds, and none at all once the
    evaluation set alone hides the effect: at infinitely many seeds the test is a z-test of
    effect / sqrt(floor), whose power stays below 80% when that ratio is under z_0.975 + z_0.8 = 2.80."""
    d = np.array([0.0, 1.0, 2.0])  # mean 1, SD 1: 10 seeds without a floor
    small = stats.seeds_for_power(d, floor=0.01)
    assert small.seeds_needed > 10
    assert small.power < stats.seeds_for_power(d).power  # the same 3 seeds have less power with the floor
    assert stats.seeds_for_power(d, floor=(1 / 2.7) ** 2).seeds_needed == 0  # 1 / sqrt(floor) = 2.7 < 2.80
    assert stats.seeds_for_power(d, floor=(1 / 3.2) ** 2).seeds_needed > 10  # 3.2 > 2.80: reachable
    # no seed spread but a floor: judged by the floor alone
    assert stats.seeds_for_power([1.0, 1.0, 1.0], floor=1.0).seeds_needed == 0


def test_crossed_interval_reports_the_examples_variance_as_its_floor():
    """The floor is the examples' term the seeds do not average away: identical seeds leave only it."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    a = np.stack([np.where(rng.random(400) < 0.8, y, 1 - y)] * 3)  # 3 identical seeds: no seed noise
    d = stats.crossed_interval(a, y, "accuracy")
    hits = (a[0] == y).astype(float)
    assert d.floor == pytest.approx(hits.var(ddof=1) / len(y), rel=1e-9)  # the test set's binomial variance


def test_racing_looks_double_up_to_the_cap():
    assert stats.racing_looks(3, 10) == [3, 6, 10]
    assert stats.racing_looks(3, 8) == [3, 6, 8]
    assert stats.racing_looks(3, 3) == [3]
    assert stats.racing_looks(5, 10) == [5, 10]
