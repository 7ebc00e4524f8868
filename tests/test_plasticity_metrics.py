"""Tests for plasticity_lab.metrics.plasticity.

Every metric is checked two ways: against an independent numpy computation written here
(np.linalg.svd / plain array reductions) on random inputs, and on constructed inputs whose
answer is known in closed form.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from plasticity_lab import metrics
from plasticity_lab.metrics import (
    activation_rate,
    dead_fraction,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    feature_rank,
    srank,
    stable_rank,
    unit_activity,
)

SEEDS = [0, 1, 2]
SHAPES = [(64, 16), (20, 50), (33, 33), (7, 3)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


# ----------------------------------------------------------------- numpy references


def np_svals(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.svd(x.reshape(x.shape[0], -1), compute_uv=False)


def np_effective_rank(x: np.ndarray) -> float:
    s = np_svals(x)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def np_srank(x: np.ndarray, delta: float = 0.01) -> float:
    s = np.sort(np_svals(x))[::-1]
    if s.sum() == 0:
        return 0.0
    csum = np.cumsum(s)
    for k in range(1, len(s) + 1):
        if csum[k - 1] >= (1 - delta) * s.sum():
            return float(k)
    return float(len(s))


def np_feature_rank(x: np.ndarray, eps: float = 0.01) -> float:
    return float(np.count_nonzero(np_svals(x) / np.sqrt(x.shape[0]) > eps))


def np_dormant_scores(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    axes = (0,) + tuple(range(2, a.ndim))
    m = np.abs(a).mean(axis=axes)
    if m.mean() == 0:
        return np.zeros_like(m)
    return m / m.mean()


def np_activity(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        return a > 0
    return (a.reshape(a.shape[0], a.shape[1], -1) > 0).any(axis=2)


def np_stable_rank(w: np.ndarray) -> float:
    m = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    spec = np.linalg.norm(m, 2)
    return 0.0 if spec == 0 else float(np.sum(m**2) / spec**2)


def rand(seed: int, shape, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def relu_with_dead(seed: int, n: int, h: int, dead: list[int]) -> torch.Tensor:
    x = torch.relu(rand(seed, (n, h)))
    g = torch.Generator().manual_seed(seed + 100)
    neg = -torch.rand(n, len(dead), generator=g, dtype=torch.float64)
    neg[::3] = 0.0  # exact zeros are not "active" either
    x[:, dead] = neg
    return x


# ----------------------------------------------------------------- API surface


def test_public_api_reexported():
    for name in [
        "effective_rank",
        "srank",
        "feature_rank",
        "dormant_scores",
        "dormant_fraction",
        "unit_activity",
        "dead_fraction",
        "activation_rate",
        "stable_rank",
    ]:
        fn = getattr(metrics, name)
        assert callable(fn)
        assert fn.__doc__ and len(fn.__doc__) > 80, name


# ----------------------------------------------------------------- effective rank


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_effective_rank_matches_numpy(seed, shape):
    x = rand(seed, shape)
    # make the spectrum non-flat so the test is sensitive to the weighting
    x = x * torch.linspace(0.05, 3.0, shape[1], dtype=torch.float64)
    got = effective_rank(x)
    assert isinstance(got, float)
    assert got == pytest.approx(np_effective_rank(x.numpy()), rel=1e-10, abs=1e-10)


def test_effective_rank_equal_singular_values_is_full():
    for n, d, c in [(50, 10, 1.0), (30, 30, 7.5), (12, 4, 0.01)]:
        q, _ = torch.linalg.qr(rand(n, (n, d)))
        assert effective_rank(c * q) == pytest.approx(float(d), abs=1e-6)
        # the row-layout (d, n) matrix has the same spectrum
        assert effective_rank(c * q.T) == pytest.approx(float(d), abs=1e-6)


def test_effective_rank_rank_one_and_known_spectrum():
    u, v = rand(3, (40, 1)), rand(4, (1, 25))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    # spectrum (2, 1, 1): p = (1/2, 1/4, 1/4), H = 1.5 log 2, erank = 2 ** 1.5
    x = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert effective_rank(x) == pytest.approx(2**1.5, rel=1e-12)
    # exact zero singular values contribute nothing (no NaN from 0 * log 0)
    z = torch.zeros(5, 4, dtype=torch.float64)
    z[0, 0], z[1, 1] = 1.0, 1.0
    assert effective_rank(z) == pytest.approx(2.0, rel=1e-12)


def test_effective_rank_all_zero_is_zero():
    assert effective_rank(torch.zeros(10, 6)) == 0.0
    assert effective_rank(np.zeros((3, 3))) == 0.0


# ----------------------------------------------------------------- srank


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_srank_matches_numpy(seed, shape, delta):
    x = rand(seed, shape) * torch.logspace(-3, 1, shape[1], dtype=torch.float64)
    got = srank(x, delta=delta)
    assert isinstance(got, float)
    assert got == np_srank(x.numpy(), delta)


def test_srank_known_spectrum():
    # rotate diag(4, 3, 2, 1) with random orthogonal matrices: cumsum = 4, 7, 9, 10 of 10
    qa, _ = torch.linalg.qr(rand(5, (6, 6)))
    qb, _ = torch.linalg.qr(rand(6, (4, 4)))
    d = torch.zeros(6, 4, dtype=torch.float64)
    d[:4, :4] = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    x = qa @ d @ qb.T
    assert srank(x) == 4.0  # needs 9.9
    assert srank(x, delta=0.15) == 3.0  # needs 8.5
    assert srank(x, delta=0.25) == 3.0  # needs 7.5
    assert srank(x, delta=0.35) == 2.0  # needs 6.5
    assert srank(x, delta=0.65) == 1.0  # needs 3.5


@pytest.mark.parametrize("r", [1, 3, 7])
def test_srank_of_low_rank_matrix_at_most_rank(r):
    x = rand(r, (80, r)) @ rand(r + 10, (r, 30))
    assert 1.0 <= srank(x) <= r
    assert srank(x.float()) <= r


def test_srank_all_zero_and_bad_delta():
    assert srank(torch.zeros(8, 5)) == 0.0
    with pytest.raises(ValueError):
        srank(torch.ones(3, 3), delta=1.0)
    with pytest.raises(ValueError):
        srank(torch.ones(3, 3), delta=-0.1)


# ----------------------------------------------------------------- feature rank


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0])
def test_feature_rank_matches_numpy(seed, shape, eps):
    x = rand(seed, shape) * torch.logspace(-2, 0.5, shape[1], dtype=torch.float64)
    got = feature_rank(x, eps=eps)
    assert isinstance(got, float)
    assert got == np_feature_rank(x.numpy(), eps)


@pytest.mark.parametrize("r", [1, 4, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feature_rank_of_known_rank_matrix(r, dtype):
    x = (rand(10 * r, (128, r)) @ rand(10 * r + 1, (r, 40))).to(dtype)
    assert feature_rank(x) == float(r)
    assert srank(x) <= r


def test_feature_rank_uses_sqrt_n_normalisation():
    # singular values of c * I_n are c; divided by sqrt(n) they are c / sqrt(n)
    n = 16  # sqrt(n) = 4
    x = torch.diag(torch.tensor([0.2] * 8 + [0.08] * 8, dtype=torch.float64))
    # scaled: 0.05 and 0.02
    assert feature_rank(x, eps=0.03) == 8.0
    assert feature_rank(x, eps=0.01) == 16.0
    assert feature_rank(x, eps=0.05) == 0.0  # strictly above
    assert feature_rank(torch.zeros(n, 4)) == 0.0


# ----------------------------------------------------------------- dormant


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(64, 16), (5, 40), (200, 3)])
def test_dormant_scores_and_fraction_match_numpy_dense(seed, shape):
    # signed pre-activation-like values with per-unit scales: |h| matters, not h
    x = rand(seed, shape) * torch.logspace(-3, 0.5, shape[1], dtype=torch.float64)
    sc = dormant_scores(x)
    assert isinstance(sc, torch.Tensor) and sc.shape == (shape[1],)
    ref = np_dormant_scores(x.numpy())
    np.testing.assert_allclose(sc.cpu().numpy(), ref, rtol=1e-12)
    for tau in [0.0, 0.025, 0.1, 0.5, 1.0]:
        got = dormant_fraction(x, tau)
        assert isinstance(got, float)
        assert got == pytest.approx(float(np.mean(ref <= tau)), abs=1e-15)


def _columns_with_mean_abs(m: list[float], n: int = 6) -> torch.Tensor:
    """(n, len(m)) matrix whose column j alternates +m_j / -m_j (mean |h| = m_j, mean h = 0)."""
    sign = torch.tensor([1.0, -1.0] * (n // 2), dtype=torch.float64)[:, None]
    return sign * torch.tensor(m, dtype=torch.float64)[None, :]


def test_dormant_hand_computed_scores():
    # mean |h| = [0, 1, 2, x] with x = 0.02 * mean  =>  x = 0.015 / 0.995
    x4 = 0.015 / 0.995
    a = _columns_with_mean_abs([0.0, 1.0, 2.0, x4])
    layer_mean = (3.0 + x4) / 4.0
    expected = torch.tensor([0.0, 1.0 / layer_mean, 2.0 / layer_mean, 0.02], dtype=torch.float64)
    torch.testing.assert_close(dormant_scores(a), expected, rtol=1e-12, atol=1e-14)
    assert dormant_fraction(a, 0.0) == 0.25  # only the all-zero unit
    assert dormant_fraction(a, 0.025) == 0.5  # plus the 0.02 unit
    assert dormant_fraction(a, 0.1) == 0.5
    assert dormant_fraction(a, 1.5) == 0.75  # 1 / 0.7538 = 1.327 <= 1.5
    assert dormant_fraction(a, 3.0) == 1.0


def test_dormant_threshold_is_inclusive():
    # mean |h| = [0, 0.25, 0.5, 1.25, 3] (dyadic, exact), layer mean 1 => scores equal m
    a = _columns_with_mean_abs([0.0, 0.25, 0.5, 1.25, 3.0], n=4)
    torch.testing.assert_close(
        dormant_scores(a), torch.tensor([0.0, 0.25, 0.5, 1.25, 3.0], dtype=torch.float64)
    )
    assert dormant_fraction(a, 0.25) == 0.4  # s <= tau, boundary included
    assert dormant_fraction(a, 0.2499) == 0.2
    assert dormant_fraction(a, 0.5) == 0.6


def test_dormant_scores_scale_invariant_and_all_zero():
    x = rand(7, (30, 12))
    torch.testing.assert_close(dormant_scores(37.0 * x), dormant_scores(x))
    z = torch.zeros(10, 5)
    torch.testing.assert_close(dormant_scores(z), torch.zeros(5, dtype=torch.float64))
    assert dormant_fraction(z, 0.0) == 1.0
    assert dormant_fraction(torch.zeros(4, 3, 2, 2), 0.1) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_dormant_conv_groups_by_channel(seed):
    n, c, h, w = 6, 8, 5, 4
    x = rand(seed, (n, c, h, w)) * torch.logspace(-3, 0, c, dtype=torch.float64)[None, :, None, None]
    x[:, 2] = 0.0
    sc = dormant_scores(x)
    assert sc.shape == (c,)
    ref = np_dormant_scores(x.numpy())
    np.testing.assert_allclose(sc.numpy(), ref, rtol=1e-12)
    # grouping must differ from treating (C*H*W) as units or averaging over channels
    assert sc[2] == 0.0
    for tau in [0.0, 0.01, 0.1, 0.5]:
        assert dormant_fraction(x, tau) == pytest.approx(float(np.mean(ref <= tau)), abs=1e-15)


def test_dormant_conv_hand_computed():
    # channel 0: |h| mean 1 ; channel 1: |h| mean 3 (a single 12 among four positions) ;
    # channel 2: 0  => layer mean 4/3, scores [0.75, 2.25, 0]
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 0] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    x[0, 1, 0, 0] = -12.0
    torch.testing.assert_close(dormant_scores(x), torch.tensor([0.75, 2.25, 0.0], dtype=torch.float64))
    assert dormant_fraction(x, 0.8) == pytest.approx(2 / 3)


# ----------------------------------------------------------------- dead / activation rate


def test_activation_rate_and_dead_hand_computed():
    a = torch.tensor(
        [
            [1.0, 0.0, -1.0],
            [2.0, 0.0, 0.0],
            [0.0, 3.0, -2.0],
            [0.5, 0.0, 0.0],
        ]
    )
    # column activity fractions: 3/4, 1/4, 0  ->  mean 1/3 ; column 2 never > 0 -> dead
    assert activation_rate(a) == pytest.approx(1.0 / 3.0, abs=1e-15)
    assert dead_fraction(a) == pytest.approx(1.0 / 3.0, abs=1e-15)
    mask = unit_activity(a)
    assert mask.dtype == torch.bool and mask.shape == (4, 3)
    assert mask.sum().item() == 4


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dead", [[], [0], [1, 5, 6], list(range(10))])
def test_dead_fraction_known_dead_columns(seed, dead):
    x = relu_with_dead(seed, 200, 10, dead)
    # with 200 rows of relu(N(0,1)) every live column is active somewhere
    assert dead_fraction(x) == len(dead) / 10
    np.testing.assert_array_equal(unit_activity(x).numpy(), np_activity(x.numpy()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(50, 7), (3, 20), (1, 5)])
def test_activation_rate_and_dead_match_numpy_dense(seed, shape):
    # shifted so that activity rates vary across columns; some columns rarely active
    x = rand(seed, shape) - torch.linspace(-1.0, 2.5, shape[1], dtype=torch.float64)
    act = np_activity(x.numpy())
    assert activation_rate(x) == pytest.approx(float(act.mean(axis=0).mean()), abs=1e-15)
    assert dead_fraction(x) == pytest.approx(float((~act.any(axis=0)).mean()), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_activity_per_channel(seed):
    n, c = 5, 6
    x = rand(seed, (n, c, 3, 3)) - 2.0  # mostly negative: per-sample channel activity varies
    x[:, 4] = -1.0  # dead channel
    x[:, 1] = -1.0
    x[2, 1, 2, 0] = 0.5  # channel 1 active only on sample 2, at one spatial position
    mask = unit_activity(x)
    assert mask.shape == (n, c)
    ref = np_activity(x.numpy())
    np.testing.assert_array_equal(mask.numpy(), ref)
    assert mask[:, 1].tolist() == [False, False, True, False, False]
    assert activation_rate(x) == pytest.approx(float(ref.mean()), abs=1e-15)
    assert dead_fraction(x) == pytest.approx(float((~ref.any(axis=0)).mean()), abs=1e-15)
    assert not mask[:, 4].any()


def test_conv_activity_hand_computed():
    x = -torch.ones(2, 2, 2, 2)
    x[0, 0, 1, 1] = 1.0  # channel 0 active on sample 0 only
    # channel 1 never active; zeros are not active
    x[1, 1] = 0.0
    assert unit_activity(x).tolist() == [[True, False], [False, False]]
    assert activation_rate(x) == 0.25
    assert dead_fraction(x) == 0.5


# ----------------------------------------------------------------- stable rank


def test_stable_rank_diag():
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert stable_rank(w) == pytest.approx((9 + 4 + 1) / 9, rel=1e-12)
    assert stable_rank(-5.0 * w) == pytest.approx(14 / 9, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(16, 8), (8, 16), (32, 4, 3, 3), (6, 3, 5, 5), (10, 1)])
def test_stable_rank_matches_numpy(seed, shape):
    w = rand(seed, shape)
    got = stable_rank(w)
    assert isinstance(got, float)
    assert got == pytest.approx(np_stable_rank(w.numpy()), rel=1e-10)


def test_stable_rank_conv_uses_out_dim_first():
    # out=4 rows of the (4, 18) reshape: e_a, e_a, e_b, 0
    w = torch.zeros(4, 2, 3, 3, dtype=torch.float64)
    w[0, 0, 1, 1] = 1.0
    w[1, 0, 1, 1] = 1.0  # same row direction as unit 0 => rank-1 part
    w[2, 1, 0, 0] = 1.0  # orthogonal direction
    m = w.reshape(4, -1)
    # rows: e_a, e_a, e_b, 0  ->  singular values sqrt(2), 1  ->  (2 + 1) / 2
    assert stable_rank(w) == pytest.approx(1.5, rel=1e-12)
    assert stable_rank(w) == pytest.approx(np_stable_rank(m.numpy()), rel=1e-12)
    # orthogonal matrix: stable rank = dimension
    q, _ = torch.linalg.qr(rand(11, (9, 9)))
    assert stable_rank(q) == pytest.approx(9.0, rel=1e-10)


def test_stable_rank_zero():
    assert stable_rank(torch.zeros(4, 5)) == 0.0
    assert stable_rank(np.zeros((3, 2, 3, 3))) == 0.0


# ----------------------------------------------------------------- input types / devices


ALL_FLOAT_FNS = [
    ("effective_rank", lambda x: effective_rank(x)),
    ("srank", lambda x: srank(x)),
    ("feature_rank", lambda x: feature_rank(x, eps=0.1)),
    ("dormant_fraction", lambda x: dormant_fraction(x, 0.1)),
    ("dead_fraction", lambda x: dead_fraction(x)),
    ("activation_rate", lambda x: activation_rate(x)),
    ("stable_rank", lambda x: stable_rank(x)),
]


def _mixed_input(seed: int = 5) -> torch.Tensor:
    x = rand(seed, (40, 12)) * torch.logspace(-2, 0.5, 12, dtype=torch.float64)
    x[:, 3] = -x[:, 3].abs()  # a dead column
    return x


@pytest.mark.parametrize("name,fn", ALL_FLOAT_FNS)
def test_numpy_and_float32_inputs(name, fn):
    x64 = _mixed_input()
    x32 = x64.float()
    ref = fn(x64)
    got_np64 = fn(x64.numpy())
    got_np32 = fn(x32.numpy())
    got_t32 = fn(x32)
    for got in (ref, got_np64, got_np32, got_t32):
        assert type(got) is float, name
    assert got_np64 == ref
    # float32 inputs are upcast; differences only come from rounding of the inputs
    assert got_t32 == pytest.approx(ref, rel=1e-5)
    assert got_np32 == got_t32
    # non-contiguous numpy views (negative strides) are accepted
    assert fn(x64.numpy()[::-1].copy()) == pytest.approx(fn(np.ascontiguousarray(x64.numpy()[::-1])))
    assert fn(x64.numpy()[::-1]) == pytest.approx(fn(x64.flip(0)), rel=1e-12)


def test_inputs_not_modified_and_grad_tensors_ok():
    x = _mixed_input().requires_grad_(True)
    before = x.detach().clone()
    for _, fn in ALL_FLOAT_FNS:
        fn(x)
    dormant_scores(x)
    unit_activity(x)
    assert torch.equal(x.detach(), before)
    assert x.grad is None


def test_dormant_scores_dtype_device_and_numpy():
    x = _mixed_input()
    sc = dormant_scores(x.float().numpy())
    assert sc.dtype == torch.float64 and sc.device.type == "cpu"
    np.testing.assert_allclose(sc.numpy(), np_dormant_scores(x.float().numpy()), rtol=1e-12)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        effective_rank(torch.ones(5))
    with pytest.raises(ValueError):
        srank(torch.ones(0, 4))
    with pytest.raises(ValueError):
        dormant_scores(torch.ones(7))
    with pytest.raises(ValueError):
        dead_fraction(torch.ones(0, 3))
    with pytest.raises(ValueError):
        effective_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        stable_rank(torch.tensor(3.0))


@CUDA
@pytest.mark.parametrize("name,fn", ALL_FLOAT_FNS)
def test_cuda_matches_cpu(name, fn):
    x = _mixed_input()
    got = fn(x.float().cuda())
    assert type(got) is float
    assert got == pytest.approx(fn(x.float()), rel=1e-9, abs=1e-12)


@CUDA
def test_cuda_tensors_stay_on_device():
    x = _mixed_input().cuda()
    sc = dormant_scores(x)
    assert sc.is_cuda and sc.dtype == torch.float64
    np.testing.assert_allclose(sc.cpu().numpy(), np_dormant_scores(x.cpu().numpy()), rtol=1e-10)
    mask = unit_activity(x.reshape(40, 3, 2, 2))
    assert mask.is_cuda and mask.dtype == torch.bool
    conv = rand(1, (8, 4, 3, 3)).cuda()
    assert stable_rank(conv) == pytest.approx(np_stable_rank(conv.cpu().numpy()), rel=1e-9)


def test_rank_measures_equal_the_separate_measures_from_one_decomposition():
    from plasticity_lab.metrics.plasticity import rank_measures, singular_values

    gen = torch.Generator().manual_seed(7)
    for phi in (torch.randn(50, 12, generator=gen) @ torch.randn(12, 20, generator=gen), torch.zeros(5, 3), torch.randn(4, 9, generator=gen)):
        out = rank_measures(phi, delta=0.05, eps=0.1)
        assert out["effective_rank"] == effective_rank(phi)
        assert out["srank"] == srank(phi, delta=0.05)
        assert out["feature_rank"] == feature_rank(phi, eps=0.1)
        assert torch.equal(out["singular_values"], singular_values(phi))
