"""Small-sample statistics of a study report (DESIGN.md section 7).

Seeds are the unit of replication, and a study has few of them (2-10), so every interval here is
one whose coverage holds at that n, not only asymptotically; ``tests/test_stats.py`` measures it by
simulation at n = 2, 3, 5 and 10. Runs of one seed share evaluation levels, shift permutations and
(where shapes match) initialisation across conditions, so a comparison between conditions uses the
per-seed differences (a paired design), never two independent samples.

Libraries do the work where one fits: scipy.stats (t quantiles, the sign-flip permutation test,
the paired t test, D'Agostino's skewness test, Clopper-Pearson intervals, Pearson's r),
statsmodels (Holm's adjustment, t-test power) and rliable (the IQM is its ``aggregate_iqm``, the
25% trimmed mean). Written here, each with the reason: the trimmed mean's interval (scipy has
Yuen's trimmed t only for two independent samples, and ``mstats.trimmed_mean_ci`` rounds the trim
count differently from the IQM), Fieller's interval of a ratio of paired means, the equivalence
test against a margin relative to the baseline's mean (statsmodels' ``ttost_paired`` takes the
margin as a known number), and the repeated-measures correlation (no installed library has it).

Every function takes one sample along the last axis, so the coverage simulations can pass
thousands of samples at once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CI_LEVEL = 0.95
WEAK_BELOW = 5
"""With fewer seeds than this an interval is wide and rests on few values: the report says so and
lists the seeds themselves."""
IQM_TRIM = 0.25
"""The interquartile mean drops int(0.25 n) values from each end (rliable's ``aggregate_iqm``)."""
EXACT_SIGN_FLIP_MAX = 20
"""Up to this many pairs the sign-flip test enumerates all 2^n sign patterns (exact p); above, it
draws random patterns (2^20 is a million patterns, a fraction of a second)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided CI_LEVEL interval over ``n`` values.

    ``lo``/``hi`` are NaN when there are too few values for an interval, and -inf/+inf when the
    data are compatible with every value (Fieller's interval when the denominator is not clearly
    away from 0)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def _t_crit(df: np.ndarray | float) -> np.ndarray:
    return stats.t.ppf(0.5 + CI_LEVEL / 2, df)


# ---------------------------------------------------------------------------------------- location
def t_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval along the last axis (exact for normal values at any n >= 2)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = _t_crit(n - 1) * values.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def trimmed_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interquartile mean (25% trimmed mean) and its Tukey-McLaughlin interval along the last axis.

    With g = int(0.25 n) values dropped from each end and h = n - 2g kept, the standard error is
    sqrt((n - 1) s_w^2 / (h (h - 1))) from the g-winsorised variance s_w^2, with a t quantile on
    h - 1 degrees of freedom (Yuen 1974; Wilcox, "Introduction to Robust Estimation", 4.3). Below
    4 values nothing is trimmed and this is the t interval of the mean.
    """
    ordered = np.sort(np.asarray(values, dtype=float), axis=-1)
    n = ordered.shape[-1]
    g = int(IQM_TRIM * n)
    h = n - 2 * g
    mean = ordered[..., g : n - g].mean(axis=-1)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    winsorised = np.clip(ordered, ordered[..., g : g + 1], ordered[..., n - g - 1 : n - g])
    se = np.sqrt((n - 1) * winsorised.var(axis=-1, ddof=1) / (h * (h - 1)))
    half = _t_crit(h - 1) * se
    return mean, mean - half, mean + half


def ratio_interval(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of paired means mean(x) / mean(y) with Fieller's interval, along the last axis.

    The interval is every R for which the paired t test of x_i - R y_i = 0 does not reject, so
    its coverage is that of the t test (exact for bivariate normal pairs). Solving
    (mean(x) - R mean(y))^2 <= q (s_xx - 2 R s_xy + R^2 s_yy) / n for R gives a quadratic; when
    mean(y) is not clearly away from 0 (a <= 0 below) the set is unbounded and (-inf, inf) is
    returned.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.shape[-1]
    mx, my = x.mean(axis=-1), y.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mx / my
    if n < 2:
        nan = np.full_like(ratio, np.nan)
        return ratio, nan, nan
    k = _t_crit(n - 1) ** 2 / n
    dx, dy = x - mx[..., None], y - my[..., None]
    sxx, syy, sxy = ((dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1))
    sxx, syy, sxy = sxx / (n - 1), syy / (n - 1), sxy / (n - 1)
    a = my * my - k * syy
    b = mx * my - k * sxy
    c = mx * mx - k * sxx
    root = np.sqrt(np.maximum(b * b - a * c, 0.0))
    bounded = a > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.where(bounded, (b - root) / a, -np.inf)
        hi = np.where(bounded, (b + root) / a, np.inf)
    return ratio, lo, hi


def _estimate(values: np.ndarray, interval) -> Interval:
    """``interval(finite values) -> (estimate, lo, hi)`` as an Interval with its n."""
    values = _finite(values)
    if not len(values):
        return Interval(math.nan)
    value, lo, hi = interval(values)
    return Interval(float(value), float(lo), float(hi), len(values))


def mean_estimate(values: np.ndarray) -> Interval:
    return _estimate(values, t_interval)


def iqm_estimate(values: np.ndarray) -> Interval:
    return _estimate(values, trimmed_interval)


def ratio_estimate(x: np.ndarray, y: np.ndarray) -> Interval:
    """Fieller's ratio of paired means; pairs with a missing value are dropped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return Interval(math.nan)
    ratio, lo, hi = ratio_interval(x[keep], y[keep])
    return Interval(float(ratio), float(lo), float(hi), int(keep.sum()))


def relative_change(x: np.ndarray, y: np.ndarray) -> Interval:
    """(mean(x) - mean(y)) / |mean(y)| in percent over the complete pairs, with Fieller's interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    ratio = ratio_estimate(x[keep], y[keep])
    sign = -1.0 if keep.any() and y[keep].mean() < 0 else 1.0
    lo, hi = sorted(((ratio.lo - 1) * sign * 100, (ratio.hi - 1) * sign * 100))
    return Interval((ratio.value - 1) * sign * 100, lo, hi, ratio.n)


# ------------------------------------------------------------------------------------------ tests
def sign_flip_p(differences: np.ndarray, resamples: int = 99_999, seed: int = 0) -> np.ndarray:
    """Two-sided p of the paired sign-flip permutation test of mean difference 0, along the last axis.

    Under the null each per-seed difference is as likely to be negative as positive (the two
    conditions are exchangeable within a seed), so the mean's null distribution is that of every
    sign pattern. Exact (all 2^n patterns) up to EXACT_SIGN_FLIP_MAX pairs. The smallest possible
    p is 2 / 2^n: with fewer than 6 pairs no difference reaches p < 0.05.
    """
    d = np.asarray(differences, dtype=float)
    n = d.shape[-1]
    if n == 0:
        return np.full(d.shape[:-1], np.nan)
    if n == 1:  # both sign patterns are as extreme as the observed one
        return np.ones(d.shape[:-1])
    exact = n <= EXACT_SIGN_FLIP_MAX
    result = stats.permutation_test(
        (d,), lambda s, axis: np.mean(s, axis=axis), permutation_type="samples", vectorized=True, axis=-1,
        n_resamples=np.inf if exact else resamples, rng=None if exact else np.random.default_rng(seed),
    )
    return np.minimum(np.asarray(result.pvalue, dtype=float), 1.0)


def sign_flip_label(n: int, resamples: int) -> str:
    """What a sign-flip p over ``n`` pairs is: exact or Monte Carlo, with its draws and floor.

    scipy adds the observed pattern to the random ones (p = (count + 1) / (draws + 1) per side), so
    a Monte Carlo two-sided p is never below 2 / (draws + 1); an exact one never below 2 / 2^n."""
    if n <= EXACT_SIGN_FLIP_MAX:
        return f"sign-flip, exact (all {2**n} patterns, p >= {2 / 2**n:.2g})"
    return f"sign-flip, Monte Carlo ({resamples} random patterns, p >= {2 / (resamples + 1):.2g})"


def paired_t_p(differences: np.ndarray) -> np.ndarray:
    """Two-sided p of the paired t test of mean difference 0 along the last axis (scipy's
    ttest_1samp); NaN below 2 pairs or when every difference is 0."""
    d = np.asarray(differences, dtype=float)
    if d.shape[-1] < 2:
        return np.full(d.shape[:-1], np.nan)
    with warnings.catch_warnings():  # identical differences: scipy warns and returns p 0 (or NaN for all 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(stats.ttest_1samp(d, 0.0, axis=-1).pvalue, dtype=float)


SKEW_TEST_MIN = 8
"""scipy's skewtest (D'Agostino's test of zero skewness) needs at least 8 values: with fewer pairs
the symmetry the sign-flip test assumes cannot be checked."""
SKEW_ALPHA = 0.05
"""Differences whose skewtest p is below this count as skewed."""


def skewness_p(differences: np.ndarray) -> np.ndarray:
    """p of D'Agostino's skewness test along the last axis; NaN below SKEW_TEST_MIN values."""
    d = np.asarray(differences, dtype=float)
    if d.shape[-1] < SKEW_TEST_MIN:
        return np.full(d.shape[:-1], np.nan)
    with warnings.catch_warnings():  # constant differences: no skewness to test (NaN)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(stats.skewtest(d, axis=-1).pvalue, dtype=float)


@dataclass(frozen=True)
class PairedTest:
    """The test of mean paired difference 0 that a verdict rests on, and the check that chose it."""

    p: float
    test: str
    """Which test ``p`` is (sign_flip_label, or 'paired t' with the reason)."""
    p_sign_flip: float
    p_t: float
    skew_p: float
    """skewtest p of the differences; NaN below SKEW_TEST_MIN pairs (symmetry not checkable)."""
    p_floor: float
    """Smallest p the chosen test can give with these pairs and draws (0 for the t test)."""


def paired_test(differences: np.ndarray, resamples: int = 99_999, seed: int = 0) -> PairedTest:
    """The sign-flip test, unless the differences are shown skewed: then the paired t test.

    The sign-flip test is exact only if, under the null, each difference is as likely to be
    positive as negative with the same size: symmetric differences. Skewed differences with mean 0
    are not symmetric about 0, so it would test the wrong null; the t test targets the mean itself
    and is robust to skew at moderate n. Whether the differences are skewed is decided by
    D'Agostino's skewtest at SKEW_ALPHA, which needs SKEW_TEST_MIN pairs; below that symmetry is
    assumed, and the report says so.
    """
    d = _finite(differences)
    n = len(d)
    p_sign_flip = float(sign_flip_p(d, resamples, seed)) if n else math.nan
    p_t, skew = float(paired_t_p(d)), float(skewness_p(d))
    if skew < SKEW_ALPHA and math.isfinite(p_t):
        return PairedTest(p_t, f"paired t (differences skewed, skewtest p {skew:.2g})", p_sign_flip, p_t, skew, 0.0)
    floor = 2 / 2**n if n <= EXACT_SIGN_FLIP_MAX else 2 / (resamples + 1)
    return PairedTest(p_sign_flip, sign_flip_label(n, resamples), p_sign_flip, p_t, skew, floor if n else math.nan)


def equivalence_p(x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
    """p of the paired TOST that mean(x) - mean(y) lies within +-margin |mean(y)|, along the last axis.

    Two one-sided paired t tests (Schuirmann's TOST), p = the larger: mean(x - (1 - m s) y) > 0
    and mean(x - (1 + m s) y) < 0 with s = sign(mean(y)). Testing these combinations, rather than
    mean(x - y) against +-m |mean(y)| as a fixed number (statsmodels' ttost_paired), carries the
    baseline mean's own uncertainty: p <= alpha exactly when Fieller's 1 - 2 alpha interval of
    mean(x) / mean(y) lies within [1 - m, 1 + m] (for mean(y) > 0). statsmodels' ``transform=log``
    variant is a ratio of geometric means and needs positive scores, which returns are not.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape[-1] < 2:
        return np.full(x.shape[:-1], np.nan)
    s = np.sign(y.mean(axis=-1, keepdims=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        above = stats.ttest_1samp(x - (1 - margin * s) * y, 0.0, axis=-1, alternative="greater").pvalue
        below = stats.ttest_1samp(x - (1 + margin * s) * y, 0.0, axis=-1, alternative="less").pvalue
    return np.maximum(np.asarray(above, dtype=float), np.asarray(below, dtype=float))


def min_sign_flip_pairs(alpha: float) -> int:
    """Fewest pairs with which the exact sign-flip test can reach p <= alpha (2 / 2^n <= alpha)."""
    return max(1, math.ceil(math.log2(2 / alpha)))


def win_rate(x: np.ndarray, y: np.ndarray) -> Interval:
    """P(a seed's x beats its y): the fraction of paired seeds won, with a Clopper-Pearson interval.

    Clopper-Pearson is exact (coverage >= CI_LEVEL at every n), so it stays honest when one
    condition wins every seed: 5 wins of 5 give [0.48, 1], not rliable's degenerate [1, 1]. A tie
    counts half in the estimate; the interval takes its lower end with ties as losses and its upper
    end with ties as wins, so it covers either reading.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n = len(d)
    if n == 0:
        return Interval(math.nan)
    wins, ties = int((d > 0).sum()), int((d == 0).sum())
    lo = stats.binomtest(wins, n).proportion_ci(CI_LEVEL, method="exact").low
    hi = stats.binomtest(wins + ties, n).proportion_ci(CI_LEVEL, method="exact").high
    return Interval((wins + ties / 2) / n, float(lo), float(hi), n)


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment over the finite p-values (NaN stays NaN)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


# ------------------------------------------------------------------------------------ correlation
@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int
    """Values the correlation rests on: runs (within condition) or conditions (between)."""
    groups: int = 0
    why_none: str = ""


def within_correlation(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Correlation:
    """Repeated-measures correlation (Bakdash & Marusich 2017): Pearson r of x and y after removing
    each group's (condition's) mean, tested on N - k - 1 degrees of freedom.

    It asks whether, within a condition, a run with more of x ends with more (or less) y, which a
    pooled correlation confounds with the conditions' differences. Groups with one run carry no
    within-group information and are left out.
    """
    x, y, groups = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(groups)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[keep], y[keep], groups[keep]
    labels, counts = np.unique(groups, return_counts=True)
    repeated = np.isin(groups, labels[counts >= 2])
    x, y, groups = x[repeated], y[repeated], groups[repeated]
    k = int((counts >= 2).sum())
    n = len(x)
    df = n - k - 1
    if df < 1:
        return Correlation(math.nan, math.nan, n, k, "too few runs per condition")
    for g in np.unique(groups):
        x[groups == g] -= x[groups == g].mean()
        y[groups == g] -= y[groups == g].mean()
    sxx, syy = float((x * x).sum()), float((y * y).sum())
    if sxx <= 1e-24 * max(1.0, n) or syy <= 1e-24 * max(1.0, n):
        return Correlation(math.nan, math.nan, n, k, "no variation within conditions")
    r = float(np.clip((x * y).sum() / math.sqrt(sxx * syy), -1.0, 1.0))
    t = r * math.sqrt(df / max(1e-300, 1 - r * r))
    return Correlation(r, float(2 * stats.t.sf(abs(t), df)), n, k)


def between_correlation(x: np.ndarray, y: np.ndarray) -> Correlation:
    """Pearson r of per-condition means: n is the number of conditions, whatever the seeds."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return Correlation(math.nan, math.nan, len(x), len(x), "fewer than 3 conditions")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, len(x), len(x), "constant across conditions")
    r, p = stats.pearsonr(x, y)
    return Correlation(float(r), float(p), len(x), len(x))


# ------------------------------------------------------------------------------------------ power
@dataclass(frozen=True)
class SeedsNeeded:
    effect: float
    """Difference to detect, in the metric's units."""
    sd: float
    """Standard deviation of per-seed differences used for the calculation."""
    seeds: int
    """Seeds per condition for the requested power (at least enough for the exact sign-flip test)."""


MAX_SEEDS = 100_000
"""seeds_needed searches up to this many pairs."""


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> SeedsNeeded:
    """Pairs needed to detect a mean paired difference ``effect`` with a two-sided paired t test.

    The smallest n whose power (statsmodels' TTestPower, the noncentral t) reaches ``power``,
    raised to the smallest n at which the report's exact sign-flip test can reach ``alpha`` at all.
    ``seeds`` is -1 when the effect or SD is unknown and MAX_SEEDS + 1 when even that is not enough.
    """
    from statsmodels.stats.power import TTestPower

    floor = max(2, min_sign_flip_pairs(alpha))
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return SeedsNeeded(effect, sd, -1)
    if sd == 0:
        return SeedsNeeded(effect, sd, floor)
    size = abs(effect) / sd
    for first, last in ((2, 64), (65, 2048), (2049, MAX_SEEDS)):  # power grows with n: search block by block
        n = np.arange(first, last + 1)
        with np.errstate(all="ignore"):
            achieved = TTestPower().power(effect_size=size, nobs=n, alpha=alpha, alternative="two-sided")
        # the noncentral t's tail underflows to NaN only when the effect is many standard errors
        # away from the critical value, that is where power is 1 to machine precision
        far = size * np.sqrt(n) > stats.t.ppf(1 - alpha / 2, n - 1) + 8
        enough = np.flatnonzero(np.where(np.isnan(achieved) & far, 1.0, achieved) >= power)
        if len(enough):
            return SeedsNeeded(effect, sd, max(floor, int(n[enough[0]])))
    return SeedsNeeded(effect, sd, MAX_SEEDS + 1)


def sd_upper_bound(sd: float, df: int, confidence: float = 0.8) -> float:
    """One-sided upper confidence bound of a standard deviation estimated on ``df`` degrees of
    freedom (chi-square): planning with it guards against a lucky small-sample estimate."""
    if df < 1 or not math.isfinite(sd):
        return math.nan
    return sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]
