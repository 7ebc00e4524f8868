"""Plasticity diagnostics: rank measures of features, dormant / dead units, weight magnitude and
weight stable rank.

Every function here is pure: it never modifies its input, keeps no state and returns a
Python ``float`` (except :func:`dormant_scores` and :func:`unit_activity`, which return
tensors because other modules select units with them).  Inputs may be ``torch.Tensor``
objects on any device (CPU or CUDA) or anything ``numpy.asarray`` accepts (numpy arrays,
nested lists).  Tensors are detached and all arithmetic is done in float64 on the input's
own device, so float32 activations and CUDA tensors give the same answers up to the
precision of the input values themselves.

Layouts
-------
* Feature / activation matrices are ``(n, units)``: one row per sample, one column per unit.
* Convolutional activations are ``(n, C, H, W)`` (any number of trailing spatial
  dimensions is accepted): the unit is the channel ``C`` and the spatial positions are
  pooled as described in each function.
* Weights are reshaped to ``(out, -1)``, i.e. dimension 0 is the output dimension
  (``nn.Linear.weight`` is ``(out, in)``, ``nn.Conv2d.weight`` is ``(out, in, kH, kW)``).

Conventions for degenerate inputs (all-zero matrices, all-zero activations) are stated in
each docstring; inputs with no rows or containing NaN/inf raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "singular_values",
    "effective_rank",
    "srank",
    "feature_rank",
    "dormant_scores",
    "dormant_fraction",
    "dormant_scores_from_mean_abs",
    "dormant_fraction_from_scores",
    "unit_activity",
    "dead_fraction",
    "activation_rate",
    "dead_fraction_from_counts",
    "activation_rate_from_counts",
    "REDO_TAU",
    "REFERENCE_DEAD_RULES",
    "rank_measures",
    "reference_dead_units",
    "reference_dead_units_per_member",
    "weight_rms",
    "weight_change_rms",
    "stable_rank",
]


# --------------------------------------------------------------------------- helpers


class NonFiniteInput(ValueError):
    """A metric was given NaN or inf: the network it measures has diverged (the training loop
    fails that member alone, DESIGN.md section 8)."""


def _as_tensor(x: Any) -> torch.Tensor:
    """``x`` as a detached tensor of its own dtype and device (numpy -> CPU tensor)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    # ascontiguousarray also copes with negative-stride numpy views, which torch rejects.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))


def _checked(x: Any, name: str) -> torch.Tensor:
    """``x`` as a detached tensor of its own dtype and device (numpy -> CPU tensor); real, finite."""
    t = _as_tensor(x)
    if t.is_complex():
        raise ValueError(f"{name}: complex input is not supported")
    if t.is_floating_point() and t.numel() > 0 and not _all_finite(t):
        raise NonFiniteInput(f"{name}: input contains NaN or inf")
    return t


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite, in one reduction for the common case: NaN and inf propagate
    into a sum, so a finite sum proves them absent; only a non-finite sum (or one that
    overflowed) needs the slower elementwise test."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _to_float64(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a detached float64 tensor on its own device (numpy -> CPU tensor)."""
    return _checked(x, name).to(torch.float64)


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    """float64 ``(n, d)`` matrix; inputs with more than 2 dims are flattened to ``(n, -1)``."""
    t = _to_float64(x, name)
    if t.ndim < 2:
        raise ValueError(f"{name}: expected a 2-D (n, d) matrix, got shape {tuple(t.shape)}")
    if t.ndim > 2:
        t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: empty matrix of shape {tuple(t.shape)}")
    return t


def _as_activations(x: Any, name: str, float64: bool = True) -> torch.Tensor:
    """Activations ``(n, units)`` or ``(n, C, *spatial)`` with n >= 1 and >= 1 unit, as float64
    (or in their own dtype where only signs matter: a float64 copy would only cost time)."""
    t = _to_float64(x, name) if float64 else _checked(x, name)
    if t.ndim < 2:
        raise ValueError(
            f"{name}: expected activations of shape (n, units) or (n, C, H, W), "
            f"got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name}: empty activations of shape {tuple(t.shape)}")
    return t


def _singular_values(x: Any, name: str) -> torch.Tensor:
    """Singular values (descending, float64, on the input's device) of the (n, d) matrix."""
    return torch.linalg.svdvals(_as_matrix(x, name))


def singular_values(features: Any) -> torch.Tensor:
    """Singular values of an ``(n, d)`` feature matrix, descending, float64, on its device.

    The spectrum every rank measure below is computed from; exposed so diagnostics can save it
    (e.g. for spectrum plots) without a second definition.
    """
    return _singular_values(features, "singular_values")


# --------------------------------------------------------------------------- rank measures


def effective_rank(features: Any) -> float:
    r"""Entropy-based effective rank of an ``(n, d)`` feature matrix.

    Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality",
    EUSIPCO.  With singular values :math:`s_1 \ge \dots \ge s_m` (:math:`m = \min(n, d)`)::

        p_i   = s_i / sum_j s_j
        erank = exp( -sum_i p_i * log(p_i) )        (terms with p_i = 0 contribute 0)

    The value lies in ``[1, min(n, d)]`` for a non-zero matrix: 1 for a rank-1 matrix and
    ``min(n, d)`` when all singular values are equal.  Convention: an all-zero matrix has no
    spectrum to normalise and returns ``0.0``.  Inputs with more than two dimensions are
    flattened to ``(n, -1)``.
    """
    return _effective_rank_of(_singular_values(features, "effective_rank"))


def _effective_rank_of(s: torch.Tensor) -> float:
    total = s.sum()
    if not bool(total > 0):
        return 0.0
    p = s / total
    entropy = -torch.special.xlogy(p, p).sum()  # xlogy(0, 0) == 0
    return float(torch.exp(entropy).item())


def srank(features: Any, delta: float = 0.01) -> float:
    r"""Kumar et al. (2021) effective feature rank ``srank_delta``.

    Kumar, Agarwal, Ghosh & Levine (2021), "Implicit Under-Parameterization Inhibits
    Data-Efficient Deep Reinforcement Learning", ICLR.  With singular values sorted
    descending :math:`s_1 \ge s_2 \ge \dots`::

        srank_delta = min { k : sum_{i<=k} s_i >= (1 - delta) * sum_i s_i }

    ``delta`` must lie in ``[0, 1)``.  Returned as a float holding an integer in
    ``[1, min(n, d)]``; an all-zero matrix returns ``0.0``.
    """
    if not 0.0 <= float(delta) < 1.0:
        raise ValueError(f"srank: delta must be in [0, 1), got {delta}")
    return _srank_of(_singular_values(features, "srank"), delta)


def _srank_of(s: torch.Tensor, delta: float) -> float:
    # on the CPU: CUDA's floating-point cumsum has no deterministic kernel (experiment.deterministic)
    s = s.cpu()
    cumulative = torch.cumsum(s, dim=0)
    total = cumulative[-1]  # the same sum the cumulative sums reach, so k <= len(s) always
    if not bool(total > 0):
        return 0.0
    threshold = (1.0 - float(delta)) * total
    # cumulative is non-decreasing: the number of prefixes still below threshold, plus one.
    k = int((cumulative < threshold).sum().item()) + 1
    return float(min(k, s.numel()))


def feature_rank(features: Any, eps: float = 0.01) -> float:
    r"""Lyle et al. (2022) feature rank: number of singular values of ``features / sqrt(n)``
    strictly above ``eps``.

    Lyle, Rowland & Dabney (2022), "Understanding and Preventing Capacity Loss in
    Reinforcement Learning", ICLR.  For an ``(n, d)`` matrix ``Phi``::

        feature_rank = #{ i : s_i(Phi / sqrt(n)) > eps }

    Returned as a float holding an integer in ``[0, min(n, d)]`` (0 for an all-zero matrix).
    """
    if float(eps) < 0:
        raise ValueError(f"feature_rank: eps must be >= 0, got {eps}")
    x = _as_matrix(features, "feature_rank")
    return _feature_rank_of(torch.linalg.svdvals(x), x.shape[0], eps)


def _feature_rank_of(s: torch.Tensor, n: int, eps: float) -> float:
    return float((s / math.sqrt(n) > float(eps)).sum().item())


def rank_measures(features: Any, delta: float = 0.01, eps: float = 0.01) -> dict[str, Any]:
    """:func:`effective_rank`, :func:`srank` and :func:`feature_rank` of one ``(n, d)`` feature
    matrix and its ``singular_values``, from a single decomposition (a probe computes all three
    for every layer)."""
    x = _as_matrix(features, "rank_measures")
    s = torch.linalg.svdvals(x)
    return {
        "effective_rank": _effective_rank_of(s), "srank": _srank_of(s, delta),
        "feature_rank": _feature_rank_of(s, x.shape[0], eps), "singular_values": s,
    }


# --------------------------------------------------------------------------- unit activity


def dormant_scores(activations: Any) -> torch.Tensor:
    r"""Per-unit normalised activity scores of ReDo (Sokar et al. 2023).

    Sokar, Agarwal, Castro & Evci (2023), "The Dormant Neuron Phenomenon in Deep
    Reinforcement Learning", ICML.  For a layer with ``H`` units::

        a_i = E_x |h_i(x)|
        s_i = a_i / ( (1/H) * sum_k a_k )

    * Dense activations ``(n, H)``: the unit is a column, ``E_x`` is the mean over rows.
    * Conv activations ``(n, C, H, W)`` (or any trailing spatial dims): the unit is a
      channel and ``E`` is the mean over the batch *and* all spatial positions.

    Convention: if every activation is zero the denominator is zero and every score is
    defined as ``0`` (so every unit is dormant for any ``tau >= 0``).

    :func:`dormant_fraction` and the ReDo intervention both use it; the normalisation itself is
    :func:`dormant_scores_from_mean_abs`.  Returns a float64 tensor of shape ``(H,)`` / ``(C,)``
    on the input's device.
    """
    a = _as_activations(activations, "dormant_scores")
    reduce_dims = (0,) + tuple(range(2, a.ndim))
    return dormant_scores_from_mean_abs(a.abs().mean(dim=reduce_dims))


def dormant_scores_from_mean_abs(mean_abs: Any) -> torch.Tensor:
    """ReDo scores ``s_i = a_i / ((1/H) sum_k a_k)`` from per-unit ``a_i = E|h_i|``.

    The single definition of the normalisation (all-zero ``a``: every score is 0), shared by
    :func:`dormant_scores` and by diagnostics that accumulate ``E|h_i|`` over a probe set in
    chunks instead of holding all activations.  ``mean_abs`` is a 1-D tensor of shape ``(H,)``.
    """
    a = _to_float64(mean_abs, "dormant_scores_from_mean_abs")
    if a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"dormant_scores_from_mean_abs: expected a non-empty (H,) vector, got {tuple(a.shape)}")
    layer_mean = a.mean()
    if not bool(layer_mean > 0):
        return torch.zeros_like(a)
    return a / layer_mean


def dormant_fraction(activations: Any, tau: float) -> float:
    r"""Fraction of tau-dormant units (Sokar et al. 2023, ReDo).

    A unit is dormant when its score ``s_i <= tau`` where ``s_i`` is given by
    :func:`dormant_scores` (``s_i = E_x|h_i(x)| / ((1/H) sum_k E_x|h_k(x)|)``)::

        dormant_fraction = (1/H) * #{ i : s_i <= tau }

    All-zero activations: every score is 0, so every unit counts as dormant (returns 1.0
    for any ``tau >= 0``).
    """
    return dormant_fraction_from_scores(dormant_scores(activations), tau)


def dormant_fraction_from_scores(scores: Any, tau: float) -> float:
    """Fraction of units whose ReDo score is ``<= tau`` (boundary included).

    Shared by :func:`dormant_fraction` and by diagnostics that pool the scores of several
    layers (an "overall" fraction over all units of a network).
    """
    s = _to_float64(scores, "dormant_fraction_from_scores")
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"dormant_fraction_from_scores: expected a non-empty (H,) vector, got {tuple(s.shape)}")
    return float((s <= float(tau)).to(torch.float64).mean().item())


def unit_activity(activations: Any) -> torch.Tensor:
    """Boolean ``(n, units)`` mask: is unit ``j`` active (``> 0``) on sample ``i``?

    * Dense ``(n, H)``: ``mask[i, j] = h[i, j] > 0``.
    * Conv ``(n, C, H, W)`` (any trailing spatial dims): a channel counts as active on a
      sample if *any* of its spatial entries is ``> 0``, i.e.
      ``mask[i, c] = any_{y,x} h[i, c, y, x] > 0``.

    This is the one definition of "active" used by :func:`dead_fraction` and
    :func:`activation_rate`.  The mask lives on the input's device.
    """
    a = _as_activations(activations, "unit_activity", float64=False)
    positive = a > 0
    if positive.ndim > 2:
        positive = positive.flatten(start_dim=2).any(dim=2)
    return positive


def dead_fraction(activations: Any) -> float:
    """Fraction of units that are never active over the given rows.

    With the mask ``A = unit_activity(activations)`` (``A[i, j]``: unit ``j`` is ``> 0`` on
    sample ``i``; a conv channel is active on a sample if any spatial entry is ``> 0``)::

        dead_fraction = (1/H) * #{ j : A[i, j] is False for every row i }

    This is the "dead ReLU unit" count used in the plasticity literature (e.g. Lyle et al.
    2022; Abbas et al. 2023, "Loss of Plasticity in Continual Deep Reinforcement Learning").
    """
    return dead_fraction_from_counts(unit_activity(activations).sum(dim=0))


def activation_rate(activations: Any) -> float:
    """Mean over units of the fraction of rows in which the unit is active (``> 0``).

    With ``A = unit_activity(activations)`` of shape ``(n, H)`` (same conv convention as
    :func:`unit_activity`)::

        activation_rate = (1/H) * sum_j (1/n) * sum_i A[i, j]

    which equals the overall fraction of ``True`` entries of ``A``.  Activation sparsity
    of this kind is a standard plasticity diagnostic (e.g. Lyle et al. 2023, "Understanding
    Plasticity in Neural Networks", ICML).
    """
    active = unit_activity(activations)
    return activation_rate_from_counts(active.sum(dim=0), active.shape[0])


def _as_counts(active_counts: Any, name: str) -> torch.Tensor:
    """Per-unit counts of active samples as a non-empty float64 ``(H,)`` vector."""
    c = _to_float64(active_counts, name)
    if c.ndim != 1 or c.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (H,) vector of counts, got {tuple(c.shape)}")
    return c


def dead_fraction_from_counts(active_counts: Any) -> float:
    """:func:`dead_fraction` from per-unit counts ``c_j = sum_i A[i, j]`` of active samples.

    ``dead_fraction = (1/H) * #{ j : c_j == 0 }``.  Counts add up over chunks of samples, so a
    probe set can be streamed through the network and still give exactly the full-set value.
    """
    c = _as_counts(active_counts, "dead_fraction_from_counts")
    return float((c == 0).to(torch.float64).mean().item())


def activation_rate_from_counts(active_counts: Any, n: int) -> float:
    """:func:`activation_rate` from per-unit active counts ``c_j`` over ``n`` samples:
    ``(1/H) * sum_j c_j / n`` (exact for integer counts, as they add up over chunks)."""
    if int(n) <= 0:
        raise ValueError(f"activation_rate_from_counts: n must be positive, got {n}")
    c = _as_counts(active_counts, "activation_rate_from_counts")
    return float((c / int(n)).mean().item())


REDO_TAU = 0.025
"""The dormancy threshold of ReDo's main experiments (Sokar et al. 2023): a unit whose score
is at most 2.5% of its layer's mean activity counts as dormant."""


# --------------------------------------------------------------------------- reference dead units

REFERENCE_DEAD_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": lambda h: h == 0,
    "tanh": lambda h: h.abs() > 0.99,
}
"""Per-entry "dead" test of the reference code (Juliani & Ash 2024, ``calc_dead_units``) for the
activations it defines and this package has. The reference also has sigmoid (outside
[0.01, 0.99]), which plasticity-lab does not offer; for every other activation it raises."""


def reference_dead_units(activations: Any, activation: str) -> float:
    """The reference paper's per-epoch ``dead_units``: the fraction of *entries* (sample x unit)
    of a layer's output that are dead by the activation's own rule, or NaN where no rule is
    meaningful.

    * ``relu``: exactly zero (``h == 0``), also with a norm before the ReLU (the reference's
      ln-relu / gn-relu).
    * ``tanh``: saturated (``|h| > 0.99``).
    * ``crelu``: NaN, although the reference counts its exact zeros: ``[relu(x), relu(-x)]`` is
      zero in at least one half for every pre-activation, so that fraction is
      ``0.5 + 0.5 * P(x == 0) >= 0.5`` by construction and says nothing about unit health.
    * ``leaky-relu``, ``mish``, ``gelu``, ``dff``: NaN (the reference has no rule; an exact-zero
      count would be 0 by construction, not a finding).

    Compare conditions with different activations with :func:`dormant_fraction` instead.
    """
    rule = REFERENCE_DEAD_RULES.get(activation)
    if rule is None:
        return float("nan")
    h = _as_activations(activations, "reference_dead_units", float64=False)
    return float(rule(h).to(torch.float64).mean().item())


def reference_dead_units_per_member(activations: torch.Tensor, activation: str) -> torch.Tensor:
    """:func:`reference_dead_units` of each member's ``activations[k]`` (a population's
    (K, n, units) trunk output), as a float64 (K,) tensor: one reduction for all members and no
    host sync, because the training loop calls it on every minibatch."""
    rule = REFERENCE_DEAD_RULES.get(activation)
    if activations.ndim < 3 or activations.shape[1] == 0:
        raise ValueError(f"reference_dead_units_per_member: expected (K, n, units), got {tuple(activations.shape)}")
    if rule is None:
        return torch.full((activations.shape[0],), float("nan"), dtype=torch.float64, device=activations.device)
    h = activations.detach().flatten(1)
    if activation == "relu" and h.shape[1] < 2**24:
        # ReLU outputs are >= 0, so sign() is 1 where an entry lives and 0 (-0) where it is dead:
        # the dead count is n minus a float32 sum of signs (bf16 features too), exact below 2^24
        # entries. About 5x faster on the CPU than count_nonzero(h == 0) (a boolean temporary and
        # a slow reduction). torch's sign(NaN) is 0, so a NaN entry counts as dead here (h == 0
        # counts it alive); a member with NaN features has a NaN loss and fails that epoch anyway.
        return (h.shape[1] - torch.sign(h).sum(dim=1, dtype=torch.float32)).to(torch.float64) / h.shape[1]
    return torch.count_nonzero(rule(h), dim=1).to(torch.float64) / h.shape[1]


# --------------------------------------------------------------------------- weights


def _stacked_weights(members: Sequence[Sequence[Any]], name: str) -> list[torch.Tensor]:
    """Each member's i-th weight stacked into a (K, ...) tensor."""
    lists = [list(ws) for ws in members]
    if not lists or any(len(ws) != len(lists[0]) for ws in lists):
        raise ValueError(f"{name}: expected one equally long weight list per member, got lengths {[len(ws) for ws in lists]}")
    stacked = []
    for i, group in enumerate(zip(*lists)):
        tensors = [_as_tensor(w) for w in group]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"{name}: weight {i} has shapes {sorted({tuple(t.shape) for t in tensors})} across members")
        stacked.append(torch.stack(tensors))
    return stacked


def _float64_stacked(stacked: Sequence[Any], name: str) -> list[torch.Tensor]:
    """(K, ...) weight tensors checked once for all members, as float64."""
    out = [_checked(t, name).to(torch.float64) for t in stacked]
    if not out or sum(t[0].numel() for t in out) == 0:
        raise ValueError(f"{name}: expected at least one non-empty weight tensor")
    return out


def _pooled_rms(stacked: list[torch.Tensor]) -> list[float]:
    """Pooled RMS of each member's row of (K, ...) tensors: one reduction per tensor for all K."""
    total = sum(t.pow(2).flatten(1).sum(dim=1) for t in stacked)
    return torch.sqrt(total / sum(t[0].numel() for t in stacked)).tolist()


def weight_rms_stacked(stacked: Sequence[Any]) -> list[float]:
    r""":func:`weight_rms` of each member from (K, ...) tensors, one per weight (member k's
    weights are row k of each): a population's stacked weights, one reduction per layer for all
    members (the training loop reports it every epoch)."""
    return _pooled_rms(_float64_stacked(stacked, "weight_rms"))


def weight_rms_members(members: Sequence[Sequence[Any]]) -> list[float]:
    """:func:`weight_rms` of each member's list of weights (the same shapes for every member)."""
    return weight_rms_stacked(_stacked_weights(members, "weight_rms"))


def weight_rms(weights: Sequence[Any]) -> float:
    r"""Root mean square of all entries of a list of weight tensors, pooled::

        weight_rms = sqrt( sum_t sum_ij W_t[ij]^2 / sum_t numel(W_t) )

    Pooled (not a mean of per-tensor RMS), so every weight counts once whatever layer it is in.
    """
    return weight_rms_members([weights])[0]


def weight_change_rms_stacked(before: Sequence[Any], after: Sequence[Any]) -> list[float]:
    """:func:`weight_change_rms` of each member from (K, ...) tensors as in :func:`weight_rms_stacked`."""
    old = _float64_stacked(before, "weight_change_rms")
    new = _float64_stacked(after, "weight_change_rms")
    if len(old) != len(new):
        raise ValueError(f"weight_change_rms: {len(old)} tensors before, {len(new)} after")
    for a, b in zip(old, new):
        if a.shape != b.shape:
            raise ValueError(f"weight_change_rms: shape {tuple(a.shape[1:])} before, {tuple(b.shape[1:])} after")
    return _pooled_rms([b - a.to(b.device) for a, b in zip(old, new)])


def weight_change_rms_members(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]]) -> list[float]:
    """:func:`weight_change_rms` of each member (``before[k]`` and ``after[k]``)."""
    if len(before) != len(after) or any(len(b) != len(a) for b, a in zip(before, after)):
        raise ValueError(f"weight_change_rms: {[len(b) for b in before]} tensors before, {[len(a) for a in after]} after")
    return weight_change_rms_stacked(_stacked_weights(before, "weight_change_rms"), _stacked_weights(after, "weight_change_rms"))


def weight_change_rms(before: Sequence[Any], after: Sequence[Any]) -> float:
    """:func:`weight_rms` of ``after - before``, tensor by tensor (same shapes, same order)."""
    return weight_change_rms_members([before], [after])[0]


def stable_rank(weight: Any) -> float:
    r"""Stable rank of a weight tensor: ``||W||_F^2 / ||W||_2^2``.

    Rudelson & Vershynin (2007), "Sampling from large matrices: an approach through
    geometric functional analysis", J. ACM; used as a plasticity diagnostic of weights
    (e.g. Lyle et al. 2023).  ``W`` is reshaped to ``(out, -1)`` first (dimension 0 is the
    output dimension, so a conv kernel ``(out, in, k, k)`` becomes ``(out, in*k*k)``)::

        stable_rank = sum_i s_i^2 / s_1^2

    where ``s_1`` is the largest singular value.  It lies in ``[1, rank(W)]``.
    A zero weight returns ``0.0``.  A 1-D tensor is treated as an ``(out, 1)`` column and
    therefore has stable rank 1 (if non-zero).
    """
    w = _to_float64(weight, "stable_rank")
    if w.ndim == 0 or w.numel() == 0:
        raise ValueError(f"stable_rank: expected a non-empty weight tensor, got shape {tuple(w.shape)}")
    w = w.reshape(w.shape[0], -1)
    s = torch.linalg.svdvals(w)
    top = s[0]
    if not bool(top > 0):
        return 0.0
    return float(((s / top) ** 2).sum().item())
