"""Every interval, test, correction and bootstrap the verdict and the capacity report use: small pure
functions of arrays (numpy + scipy only), each with its formula, assumptions and reference.

Results are named tuples, as in scipy.stats. Levels are two-sided confidence levels (0.95); a `nan`
bound means "no interval from this little data", never an error.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special
from scipy import stats as sps

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_METRICS = ("accuracy", "f1", "mcc", "pearson")
_CHUNK_CELLS = 4_000_000  # resamples x examples held at once: ~32 MB of float64 per chunk


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


class MeanInterval(NamedTuple):
    mean: float
    std: float
    low: float
    high: float


class Difference(NamedTuple):
    """A difference of two methods: its estimate, interval, two-sided p-value and how it was computed."""
    estimate: float
    low: float
    high: float
    pvalue: float
    n: int  # seeds paired
    test: str
    floor: float = 0.0  # crossed_interval: the variance of the estimate that more seeds do not shrink (the examples')


class Power(NamedTuple):
    power: float  # at the seeds given
    seeds_needed: int | None  # the fewest seeds reaching the target power; None: not within the cap; 0: never


class Holm(NamedTuple):
    adjusted: np.ndarray  # Holm-adjusted p-values, in the input order
    reject: np.ndarray  # bool, at family-wise level alpha
    alpha: np.ndarray  # the per-comparison level each was judged at (see `holm`)


class ExpectedMax(NamedTuple):
    n: np.ndarray  # 1..n_max
    mean: np.ndarray  # E[max of n trials]
    std: np.ndarray


class Slope(NamedTuple):
    slope: float
    intercept: float
    low: float
    high: float
    stderr: float


# ---------------------------------------------------------------------------------------- t-intervals
def mean_interval(values, level: float = LEVEL) -> MeanInterval:
    """Student's t-interval for the mean: mean ± t_{(1+level)/2, n-1} · s / sqrt(n).

    Assumes independent, roughly normal values (here: one per seed). Fewer than 2 values give no
    interval (nan bounds; no std from 1 value). Reference: Student (1908); scipy.stats.t.interval.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return MeanInterval(mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = special.stdtrit(n - 1, (1 + level) / 2) * std / math.sqrt(n)
    return MeanInterval(mean, std, mean - half, mean + half)


def welch_interval(a, b, level: float = LEVEL) -> Interval:
    """Welch's t-interval for mean(a) - mean(b), not assuming equal variances:
    d ± t_{(1+level)/2, df} · sqrt(s_a²/n_a + s_b²/n_b), df by Welch–Satterthwaite
    (v_a + v_b)² / (v_a²/(n_a-1) + v_b²/(n_b-1)), v = s²/n.

    For two *independent* samples; paired runs want `paired_interval`. Reference: Welch (1947);
    scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval().
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = sps.t.ppf((1 + level) / 2, df) * se
    return Interval(diff, diff - half, diff + half)


def paired_interval(a, b, level: float = LEVEL) -> Difference:
    """Paired t-interval of the mean difference d_i = a_i - b_i (a_i, b_i from the same seed):
    mean(d) ± t_{(1+level)/2, n-1} · s_d / sqrt(n), and the two-sided p-value of mean(d) = 0.

    Assumes the pairs independent and d roughly normal; covers seed noise only (the test set is held
    fixed). Fewer than 2 pairs: nan bounds, p = 1. All d equal: a zero-width interval, p = 0 unless
    d = 0. Reference: Student (1908); scipy.stats.ttest_rel(a, b).confidence_interval().
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, 1.0, 0, "paired t")
    mean = float(d.mean())
    if n < 2:
        return Difference(mean, math.nan, math.nan, 1.0, n, "paired t")
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Difference(mean, mean, mean, 1.0 if mean == 0 else 0.0, n, "paired t")
    half = special.stdtrit(n - 1, (1 + level) / 2) * se
    p = float(2 * special.stdtr(n - 1, -abs(mean) / se))
    return Difference(mean, mean - half, mean + half, p, n, "paired t")


def slope_interval(x, y, level: float = LEVEL) -> Slope:
    """Ordinary least squares y = a + b·x and the t-interval of the slope:
    b ± t_{(1+level)/2, n-2} · SE(b), SE(b) = sqrt(Σ r_i² / (n-2) / Σ (x_i - x̄)²).

    Assumes independent, homoscedastic, normal residuals; needs 3 points for an interval (nan
    otherwise). Reference: any regression text; scipy.stats.linregress gives b, a and SE(b).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fit = sps.linregress(x, y)
    if len(x) < 3:
        return Slope(float(fit.slope), float(fit.intercept), math.nan, math.nan, math.nan)
    half = sps.t.ppf((1 + level) / 2, len(x) - 2) * fit.stderr
    return Slope(float(fit.slope), float(fit.intercept), float(fit.slope - half), float(fit.slope + half),
                 float(fit.stderr))


# ---------------------------------------------------------------------------------------- multiple comparisons
def holm(pvalues, alpha: float = 1 - LEVEL) -> Holm:
    """Holm–Bonferroni step-down: sort the m p-values p_(1) ≤ … ≤ p_(m); reject H_(k) while
    p_(k) ≤ alpha / (m - k + 1), stop at the first that is not. Adjusted p-values
    p~_(k) = max_{j ≤ k} min(1, (m - j + 1) p_(j)); H_(k) is rejected iff p~_(k) ≤ alpha.

    Controls the family-wise error rate at alpha under any dependence. `alpha` in the result is the
    level each comparison was judged at: alpha / (m - k + 1) for the rejected ones, and for the rest
    the level of the step where the procedure stopped (intervals at 1 - that level agree with the
    decisions). Reference: Holm (1979), Scand. J. Statist. 6, 65-70.
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    steps = m - np.arange(m)  # m, m-1, ..., 1
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(steps * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    reject = adjusted <= alpha
    rejected = int(reject.sum())
    levels_sorted = alpha / steps
    if rejected < m:  # the step where it stopped: every comparison from there on was judged at its level
        levels_sorted[rejected:] = alpha / steps[rejected]
    levels = np.empty(m)
    levels[order] = levels_sorted
    return Holm(adjusted, reject, levels)


# ---------------------------------------------------------------------------------------- seeds x test examples
RANGES = {"accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "mcc": (-1.0, 1.0), "pearson": (-1.0, 1.0),
          "spearman": (-1.0, 1.0)}
CROSSED = "seeds × test examples t (variance components)"


def metric_range(metric: str, difference: bool = False) -> tuple[float, float]:
    """Where `metric` (a fraction, as akd_ray.tasks.metrics computes it) can lie; a difference of two
    such metrics lies in [lo - hi, hi - lo]. An unknown metric: unbounded."""
    lo, hi = RANGES.get(metric, (-math.inf, math.inf))
    return (lo - hi, hi - lo) if difference else (lo, hi)


def bounded(low: float, high: float, metric: str, difference: bool = False) -> tuple[float, float]:
    """An interval clipped to the metric's range (nan stays nan): a 95% interval of an accuracy never
    runs past 100 points."""
    lo, hi = metric_range(metric, difference)
    return (low if low != low else min(max(low, lo), hi), high if high != high else min(max(high, lo), hi))


def crossed_interval(pred_a, labels, metric: str, pred_b=None, level: float = LEVEL,
                     resamples: int = 2_000, rng=None) -> Difference:
    """Interval of mean_s M(a_s) (or, with `pred_b`, of mean_s M(a_s) - M(b_s), paired by seed) that
    covers both the seeds and the finite test set, with Student's t at Satterthwaite's degrees of
    freedom: the seeds are S draws of the training noise, the test examples N draws of the task.

    Model (two-way crossed random effects, one observation per cell): x_si = μ + α_s + β_i + ε_si,
    x_si the score of seed s on example i (for accuracy 1[ŷ_si = y_i], minus that of b for a
    difference). The estimate x̄ has Var = σ_α²/S + σ_β²/N + σ_ε²/(SN) = (MS_seed + MS_ex - MS_err)/(SN)
    from the ANOVA mean squares (E MS_seed = Nσ_α² + σ_ε², E MS_ex = Sσ_β² + σ_ε², E MS_err = σ_ε²):
    the seeds' term v_α = max(MS_seed - MS_err, 0)/(SN) (S-1 df) plus the examples' v_β = MS_ex/(SN)
    (N-1 df; it carries σ_ε²/(SN)), SE² = max(v_α + v_β, MS_seed/(SN)), and Satterthwaite's
    df = (v_α + v_β)² / (v_α²/(S-1) + v_β²/(N-1)) (Satterthwaite 1946; MS_err, with (S-1)(N-1) df, is
    taken as known). The interval is x̄ ± t_{(1+level)/2, df} · SE and p is the two-sided t p-value of
    x̄ = 0. Where the seeds' own term dominates, df falls to S-1: a paired t-interval over seeds widened
    by the test set's noise; where it vanishes, a t-interval over the test examples.

    Metrics that are not a mean over examples (F1, MCC, Pearson) take the same terms from a bootstrap
    over test examples with the seeds held fixed (`resamples`, seeded by `rng`): MS_seed/(SN) =
    s²(d_s)/S, v_β = Var*(x̄*), MS_err/(SN) = (mean_s Var*(d_s*) - v_β)/(S-1).
    The bounds are clipped to the metric's range (`bounded`). Fewer than 2 seeds: nan bounds, p = 1.
    References: Satterthwaite (1946) Biometrics Bull. 2, 110-114; Bouthillier et al. (2021)
    "Accounting for variance in machine learning benchmarks"; the benchmark bench/calibration.py
    measures its coverage.
    """
    a = np.atleast_2d(np.asarray(pred_a))
    y = np.asarray(labels)
    b = None if pred_b is None else np.atleast_2d(np.asarray(pred_b))
    if b is not None and b.shape != a.shape:
        raise ValueError(f"crossed_interval: predictions {a.shape} and {b.shape} must both be (seeds, examples)")
    if a.shape[1] != len(y):
        raise ValueError(f"crossed_interval: predictions {a.shape} must be (seeds, {len(y)} examples)")
    seeds, n = a.shape
    full = np.ones((1, n))
    per_seed = _metric(a, y, full, metric)[:, 0] - (0 if b is None else _metric(b, y, full, metric)[:, 0])
    estimate = float(per_seed.mean())
    if seeds < 2:
        return Difference(estimate, math.nan, math.nan, 1.0, seeds, CROSSED)
    if metric == "accuracy":
        x = (a == y).astype(float) - (0 if b is None else (b == y).astype(float))
        rows, cols = x.mean(1), x.mean(0)
        ms_seed = n * rows.var(ddof=1)
        ms_ex = seeds * cols.var(ddof=1)
        resid = x - rows[:, None] - cols[None, :] + x.mean()
        ms_err = float((resid ** 2).sum()) / ((seeds - 1) * (n - 1))
        v_seed, v_ex, v_err = ms_seed / (seeds * n), ms_ex / (seeds * n), ms_err / (seeds * n)
    else:
        w = _example_counts(np.random.default_rng(rng), n, resamples)
        d = _metric(a, y, w, metric) - (0 if b is None else _metric(b, y, w, metric))  # (S, k)
        v_seed, v_ex = float(per_seed.var(ddof=1)) / seeds, float(d.mean(0).var(ddof=1))
        v_err = max(float(d.var(1, ddof=1).mean()) - v_ex, 0.0) / (seeds - 1)
    seed_part = max(v_seed - v_err, 0.0)  # σ_α²/S: the seeds' own term, S-1 df
    var = max(seed_part + v_ex, v_seed)
    se = math.sqrt(var)
    if se == 0:
        return Difference(estimate, estimate, estimate, 1.0 if estimate == 0 else 0.0, seeds, CROSSED)
    # Satterthwaite's df with the seeds' term at its upper 95% confidence bound, (S-1)·v_α / χ²_{0.05, S-1}:
    # with 2 or 4 df an underestimated seed term would otherwise inflate df and the interval would be
    # too narrow twice over (measured: bench/calibration.py)
    seed_up = max(seed_part, v_seed - v_err) * (seeds - 1) / special.chdtri(seeds - 1, 0.95)
    dens = seed_up ** 2 / (seeds - 1) + v_ex ** 2 / (n - 1)
    df = float(np.clip((seed_up + v_ex) ** 2 / dens if dens > 0 else seeds - 1, seeds - 1, n - 1))
    half = special.stdtrit(df, (1 + level) / 2) * se  # Student's t quantile (scipy.special: no per-call overhead)
    p = float(2 * special.stdtr(df, -abs(estimate) / se))
    low, high = bounded(float(estimate - half), float(estimate + half), metric, difference=b is not None)
    return Difference(estimate, low, high, p, seeds, CROSSED, floor=max(v_ex - v_err, 0.0))


def seeds_for_power(differences, effect: float | None = None, power: float = 0.8, alpha: float = 1 - LEVEL,
                    cap: int = 1_000, floor: float = 0.0) -> Power:
    """How many seeds a two-sided paired t-test at `alpha` needs to tell a difference `effect`
    (default: the observed mean of `differences`) from 0 with probability `power`, taking the seed
    standard deviation s_d of the observed paired `differences` as the truth:

        power(n) = P(|T| > t_{1-α/2, n-1}),  T ~ noncentral t(n-1, δ = effect / sqrt(s_d²/n + floor))

    (scipy.stats.nct). `floor` is the part of the estimate's variance that more seeds do not shrink --
    the evaluation set's own noise (crossed_interval's example term; 0: a test over seeds alone, the
    textbook δ = effect·sqrt(n)/s_d). With a floor, power has a ceiling: an effect the evaluation set
    cannot resolve is never reached, however many seeds. Returns the power at the observed number of
    seeds and the fewest n ≥ 2 reaching `power`: 0 when no number of seeds can (with a floor, the power
    with infinitely many seeds is Φ(|δ∞| − z) + Φ(−|δ∞| − z), δ∞ = effect / sqrt(floor), z = z_{1-α/2}),
    None when more than `cap` would, or with no spread to judge by. Reference: Cohen (1988), Statistical Power Analysis, ch. 2; statsmodels' TTestPower computes the
    floor-free case.
    """
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return Power(math.nan, None)
    sd = float(d.std(ddof=1))
    effect = float(d.mean()) if effect is None else float(effect)
    if (sd == 0 and floor <= 0) or effect == 0:
        return Power(math.nan, None)

    def at(n):
        crit = sps.t.ppf(1 - alpha / 2, n - 1)
        nc = abs(effect) / np.sqrt(sd ** 2 / n + floor)
        return sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)

    if floor > 0:
        z, big = sps.norm.ppf(1 - alpha / 2), abs(effect) / math.sqrt(floor)
        if sps.norm.cdf(big - z) + sps.norm.cdf(-big - z) < power:  # the evaluation set alone hides it
            return Power(float(at(len(d))), 0)
    ns = np.arange(2, cap + 1)
    powers = at(ns)
    reach = np.flatnonzero(powers >= power)
    return Power(float(at(len(d))), int(ns[reach[0]]) if len(reach) else None)


def racing_looks(first: int, cap: int) -> list[int]:
    """The seed counts at which the racing confirmation looks: `first`, then doubling, ending at `cap`
    (3, 6, 10 for 3 and 10; one look when cap <= first). Each look is judged at level alpha / len(looks)
    (Bonferroni over the planned looks), so the chance of a decision with no true difference stays
    below alpha however early it stops."""
    looks = [first]
    while looks[-1] < cap:
        looks.append(min(cap, max(1, 2 * looks[-1])))
    return looks


# ---------------------------------------------------------------------------------------- bootstrap
def paired_bootstrap(pred_a, pred_b, labels, metric: str, level: float = LEVEL,
                     resamples: int = BOOTSTRAP_RESAMPLES, rng=None) -> Difference:
    """Paired bootstrap over seeds AND test examples of mean_s M(a_s) - mean_s M(b_s): the estimate on
    the full data, the percentile interval at `level` and the two-sided p-value of the resampled
    differences (see `bootstrap_differences`, `percentile_interval`, `bootstrap_pvalue`).

    Identical predictions give [0, 0] and p = 1; a smaller test set gives a wider interval.
    """
    diffs = bootstrap_differences(pred_a, pred_b, labels, metric, resamples, rng)
    a, b = np.atleast_2d(np.asarray(pred_a)), np.atleast_2d(np.asarray(pred_b))
    full = np.ones((1, a.shape[1]))
    y = np.asarray(labels)
    estimate = float(_metric(a, y, full, metric).mean() - _metric(b, y, full, metric).mean())
    low, high = percentile_interval(diffs, level)
    return Difference(estimate, low, high, bootstrap_pvalue(diffs), a.shape[0], "paired bootstrap")


def bootstrap_differences(pred_a, pred_b, labels, metric: str, resamples: int = BOOTSTRAP_RESAMPLES,
                          rng=None) -> np.ndarray:
    """(resamples,): the difference mean_s M(a_s) - mean_s M(b_s) under each bootstrap resample.

    `pred_a`, `pred_b`: (seeds x examples) per-example predictions of two methods, row s of both from
    the same seed; `labels`: (examples,). Each resample draws S seeds with replacement, then N examples
    with replacement -- the same draw for both methods and every seed (the test set is one sample of
    the task, the seeds another: a crossed two-way resampling) -- and recomputes each method's metric
    averaged over the drawn seeds. Vectorised: the example draw is a multinomial count vector w, so
    every metric comes from weighted sums (accuracy Σ w·1[ŷ=y] / N; F1 and MCC from weighted
    tp/fp/fn/tn; Pearson from weighted moments). Seeded by `rng` (an int or a numpy Generator).
    Reference: Koehn (2004) "Statistical significance tests for machine translation evaluation";
    Bouthillier et al. (2021) "Accounting for variance in machine learning benchmarks".
    """
    a, b = np.atleast_2d(np.asarray(pred_a)), np.atleast_2d(np.asarray(pred_b))
    y = np.asarray(labels)
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"paired_bootstrap: metric {metric!r} is not supported; valid: {', '.join(BOOTSTRAP_METRICS)} "
                         f"(a rank metric such as spearman re-ranks every resample: use the paired t-interval)")
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"paired_bootstrap: predictions {a.shape} and {b.shape} must both be "
                         f"(seeds, {len(y)} examples)")
    rng = np.random.default_rng(rng)
    seeds, n = a.shape
    diffs = np.empty(resamples)
    chunk = max(1, _CHUNK_CELLS // max(n, seeds))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=k)  # (k, S)
        w = _example_counts(rng, n, k)
        ma, mb = _metric(a, y, w, metric), _metric(b, y, w, metric)  # (S, k)
        diffs[start:start + k] = ((ma - mb) * seed_counts.T).sum(0) / seeds
    return diffs


def percentile_interval(diffs, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap percentile interval: the (1-level)/2 and (1+level)/2 quantiles of the resampled
    statistic. Reference: Efron & Tibshirani (1993), An Introduction to the Bootstrap, ch. 13."""
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(diffs, dtype=float), [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_pvalue(diffs) -> float:
    """Two-sided p-value of "no difference" from the resampled differences d*:
    min(1, 2·(1 + min(#{d* ≤ 0}, #{d* ≥ 0})) / (B + 1)) -- the percentile interval at level 1 - p just
    reaches 0; the +1 keeps p > 0 (Davison & Hinkley 1997, Bootstrap Methods, ch. 4). No spread at all
    (e.g. identical predictions): 1 when d* = 0, else 0."""
    d = np.asarray(diffs, dtype=float)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(min(1.0, 2 * (1 + min((d <= 0).sum(), (d >= 0).sum())) / (len(d) + 1)))


def _metric(pred: np.ndarray, y: np.ndarray, w: np.ndarray, metric: str) -> np.ndarray:
    """(seeds, resamples): the metric of each seed's predictions under each example weighting w (k, N);
    the same definitions as akd_ray.tasks.metrics (F1 / MCC binary, of the positive class 1; 0 when
    undefined). Every weighted sum comes from one matrix product."""
    total = w.sum(1)  # N for every resample
    if metric == "pearson":
        x, t = pred.astype(float), np.broadcast_to(y.astype(float), pred.shape)
        sx, sy, sxx, syy, sxy = _weighted([x, t, x * x, t * t, x * t], w)
        cov = total * sxy - sx * sy
        var = (total * sxx - sx ** 2) * (total * syy - sy ** 2)
        return np.divide(cov, np.sqrt(np.clip(var, 0, None)), out=np.zeros_like(cov), where=var > 1e-12)
    if metric == "accuracy":
        (hits,) = _weighted([pred == y], w)
        return hits / total
    pos, true = pred == 1, y == 1
    tp, fp, fn, tn = _weighted([pos & true, pos & ~true, ~pos & true, ~pos & ~true], w)
    if metric == "f1":
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=tp > 0)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.divide(tp * tn - fp * fn, denom, out=np.zeros_like(tp), where=denom > 0)


def _weighted(features: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """(F, seeds, resamples): Σ_i w_i · f[s, i] for every feature f (seeds x examples)."""
    f = np.stack([np.asarray(x, dtype=float) for x in features])  # (F, S, N)
    return (f.reshape(-1, f.shape[-1]) @ w.T).reshape(f.shape[0], f.shape[1], -1)


def _example_counts(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(k, n): how often each example is drawn in each of k resamples of n with replacement (a
    multinomial count vector, by bincount: faster than rng.multinomial)."""
    draws = rng.integers(0, n, (k, n)) + (np.arange(k) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=k * n).reshape(k, n).astype(float)


# ---------------------------------------------------------------------------------------- tuning budget
def expected_max(values, n_max: int | None = None) -> ExpectedMax:
    """Expected best validation score after n trials drawn from the N observed (Dodge et al. 2019,
    "Show Your Work", EMNLP, eq. 1): with v_(1) ≤ … ≤ v_(N) sorted,

        E[max_n] = Σ_i v_(i) · ((i/N)^n - ((i-1)/N)^n),  Var = Σ_i v_(i)² · (…) - E².

    Treats the observed trials as the distribution of one trial's score (n draws with replacement):
    at n = 1 it is the mean, it rises monotonically with n and tends to max(v). n runs 1..n_max
    (default N). No values: empty arrays.
    """
    v = np.sort(np.asarray(values, dtype=float))
    big = len(v)
    n = np.arange(1, (n_max or big) + 1)
    if big == 0:
        return ExpectedMax(np.arange(0), np.empty(0), np.empty(0))
    i = np.arange(1, big + 1)
    weights = (i / big)[None, :] ** n[:, None] - ((i - 1) / big)[None, :] ** n[:, None]  # (n, N)
    mean = weights @ v
    var = np.clip(weights @ (v * v) - mean ** 2, 0, None)
    return ExpectedMax(n, mean, np.sqrt(var))
