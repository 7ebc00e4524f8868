"""Verdict words from a comparison's numbers (issue 19), so that prose cannot drift from them.

A comparison is *better* or *worse* only when its Holm-adjusted test is significant, in the
metric's own direction (fewer dead or dormant units is better); *equivalent* only when the
equivalence test (TOST against the declared margin, Holm-adjusted) passes; otherwise
*inconclusive*: a difference that is not significant is never "no effect". A metric without a
better direction (activation rate, effective rank) is *higher* or *lower* instead. A significant
difference that also lies within the margin is called better or worse: the test of a difference
comes first, and comparisons.csv holds both p-values.

A claim about a size ("-52% dead units") holds only if the 95% interval contains it; a claim that a
method is best holds only if it is better than every other condition, Holm-adjusted over all the
pairs of conditions that such a claim implies.
"""

from __future__ import annotations

import math

BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
HIGHER, LOWER = "higher", "lower"
"""Verdicts of a significant difference on a metric without a better direction."""
OPPOSITE = {BETTER: WORSE, WORSE: BETTER, HIGHER: LOWER, LOWER: HIGHER}


def verdict(diff: float, p_holm: float, p_equivalence_holm: float, direction: int, alpha: float) -> str:
    """The word for one paired comparison. ``direction``: +1 when higher values are better, -1 when
    lower are, 0 when neither is."""
    if p_holm <= alpha and diff != 0:  # NaN compares False: no test, no claim
        if direction == 0:
            return HIGHER if diff > 0 else LOWER
        return BETTER if diff * direction > 0 else WORSE
    if p_equivalence_holm <= alpha:
        return EQUIVALENT
    return INCONCLUSIVE


def claim_verdict(expected: str, found: str, size: float | None = None, lo: float = math.nan, hi: float = math.nan) -> str:
    """Whether a claim holds, from the comparison's verdict ``found``.

    ``expected``: the claimed verdict (better, worse, higher, lower or equivalent); ``size``: the
    claimed change (e.g. -52 for "-52%"), checked against the interval [lo, hi] of the same change.
    """
    if found == expected:
        if size is None or expected == EQUIVALENT or lo <= size <= hi:
            return "holds"
        return "direction holds, size differs"
    if found == INCONCLUSIVE:
        return "inconclusive"
    return "contradicted"


def best(condition: str, found: dict[str, str]) -> str:
    """Whether ``condition`` is best, from its pairwise verdicts against every other condition
    (other condition -> verdict of ``condition`` against it, Holm-adjusted over all pairs)."""
    if not found:
        return INCONCLUSIVE
    if all(v == BETTER for v in found.values()):
        return "holds"
    if any(v == WORSE for v in found.values()):
        return "contradicted"
    return INCONCLUSIVE
