"""Verdict words follow from the numbers (analysis/verdicts.py, aggregate.decide): better / worse
only through a significant Holm-adjusted test in the metric's direction, equivalent only through a
passing TOST, inconclusive otherwise; size and "best" claims checked against their intervals and
the all-pairs table."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from plasticity_lab.analysis import verdicts
from plasticity_lab.analysis.aggregate import decide, direction, paired_comparison, pairwise_verdicts
from plasticity_lab.config import AnalysisConfig

PLAN = AnalysisConfig()
SEEDS = 10


def compared(metric: str, shift: float, noise: float, n: int = SEEDS, condition: str = "method", seed: int = 0):
    """``condition`` = the baseline + ``shift`` + noise, per seed; the baseline's scores are spread
    widely across seeds (the part pairing removes)."""
    rng = np.random.default_rng(seed)
    base = 10.0 + 3.0 * rng.normal(size=n)
    values = base + shift + noise * rng.normal(size=n)
    return paired_comparison(condition, "baseline", metric, dict(enumerate(values)), dict(enumerate(base)), PLAN, reps=999)


def decided(*comparisons):
    decide(list(comparisons), PLAN.alpha)
    return [c.verdict for c in comparisons]


def test_a_clear_gain_in_return_is_better_and_a_clear_loss_worse():
    assert decided(compared("test_r", 1.0, 0.1), compared("test_r", -1.0, 0.1, condition="other")) == ["better", "worse"]


def test_fewer_dead_units_is_better_and_p_beats_counts_the_lower_value():
    fewer = compared("dead_units", -1.0, 0.1)
    assert decided(fewer) == ["better"]
    assert fewer.win.value == 1.0  # every seed has fewer dead units than its baseline: wins all
    assert compared("test_r", -1.0, 0.1).win.value == 0.0  # the same numbers as a return lose every seed
    assert direction("dead_units") == direction("dormant_units") == -1 and direction("test_r") == 1


def test_a_metric_without_a_better_direction_is_higher_or_lower_and_nothing_beats():
    c = compared("diagnostics/dense/effective_rank", 1.0, 0.1)
    assert decided(c) == ["higher"] and np.isnan(c.win.value)


def test_a_tiny_difference_with_little_noise_is_equivalent_not_no_effect():
    c = compared("test_r", 0.05, 0.1)  # 0.5% of a baseline mean of ~10, margin +-10%
    assert decided(c) == ["equivalent"] and c.p_holm > PLAN.alpha
    assert c.margin == pytest.approx(0.1) and c.margin_abs == pytest.approx(0.1 * abs(np.mean(10.0 + 3.0 * np.random.default_rng(0).normal(size=SEEDS))))


def test_few_noisy_seeds_are_inconclusive_whatever_the_mean_difference():
    c = compared("test_r", 1.0, 3.0, n=3)
    assert decided(c) == ["inconclusive"] and c.diff.value != 0


def test_a_significant_test_before_holm_is_inconclusive_after_it():
    """Four comparisons, one at p 0.02 before adjustment: Holm multiplies the smallest by 4."""
    table = [compared("test_r", 0.0, 1.0, condition=f"c{i}", seed=i) for i in range(4)]
    raw = [c.p for c in table]
    decide(table, PLAN.alpha)
    assert [c.p_holm for c in table] == pytest.approx(multipletests(raw, method="holm")[1])
    assert [c.p_equivalence_holm for c in table] == pytest.approx(multipletests([c.p_equivalence for c in table], method="holm")[1])
    assert verdicts.verdict(0.3, 0.08, 0.9, 1, 0.05) == "inconclusive"  # p 0.02 x 4
    assert verdicts.verdict(0.3, 0.02, 0.9, 1, 0.05) == "better"


def test_verdict_needs_a_test():
    assert verdicts.verdict(0.3, float("nan"), float("nan"), 1, 0.05) == "inconclusive"
    assert verdicts.verdict(0.0, 0.01, 0.9, 1, 0.05) == "inconclusive"  # no difference has no direction
    assert verdicts.verdict(-0.3, 0.01, 0.01, -1, 0.05) == "better"  # significant and within the margin: the test comes first


def test_size_claims_hold_only_inside_the_interval():
    claim = verdicts.claim_verdict
    assert claim("better", "better", 20.0, 10.0, 30.0) == "holds"
    assert claim("better", "better", 20.0, 42.2, 89.1) == "direction holds, size differs"
    assert claim("better", "worse", 20.0, -30.0, -10.0) == "contradicted"
    assert claim("worse", "inconclusive", -19.8, 2.6, 48.4) == "inconclusive"
    assert claim("equivalent", "equivalent") == "holds"
    assert claim("equivalent", "inconclusive") == "inconclusive"
    assert claim("better", "equivalent") == "contradicted"


def test_best_holds_only_when_better_than_every_other_condition_after_holm_over_all_pairs():
    a_vs_b = compared("test_r", 1.0, 0.1, condition="a")
    a_vs_b.against = "b"
    c_vs_a = compared("test_r", 0.05, 3.0, condition="c", seed=3)  # noisy: inconclusive
    c_vs_a.against = "a"
    decide([a_vs_b, c_vs_a], PLAN.alpha)
    assert pairwise_verdicts([a_vs_b, c_vs_a], "a") == {"b": "better", "c": c_vs_a.verdict}
    assert pairwise_verdicts([a_vs_b], "b") == {"a": "worse"}  # read from the other side
    assert verdicts.best("a", {"b": "better", "c": "better"}) == "holds"
    assert verdicts.best("a", {"b": "better", "c": "inconclusive"}) == "inconclusive"
    assert verdicts.best("a", {"b": "better", "c": "worse"}) == "contradicted"
