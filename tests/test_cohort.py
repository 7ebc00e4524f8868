"""Batched methods (interventions/cohort.py): a method run once over the stacked state of a
population's acting members does to each member exactly what its one-network hook does to that
member alone, and nothing to the members that do not act; the rounding premise it rests on."""

from __future__ import annotations

import pytest
import torch

from plasticity_lab.agents.population_optim import PopulationAdamW
from plasticity_lab.config import ModelConfig
from plasticity_lab.interventions.cohort import Cohort
from plasticity_lab.nets import build_model
from plasticity_lab.nets.population import PopulationNetwork
from plasticity_lab.streams import Streams
from tests.test_interventions import build, ctx, frames, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3
OBS = (16, 16, 3)
# methods with a batched hook, with parameters that make them act at once
BATCHED = {
    "reset": ("at_shift", {"parts": ["encoder", "policy", "value"]}),
    "shrink_perturb": ("at_shift", {}),
    "soft_shrink_perturb": ("after_step", {"shrink": 0.9, "perturb": 0.1}),
    "soft_shrink_perturb_init": ("after_step", {"shrink": 0.9, "perturb": 0.1, "target": "init"}),
    "nap": ("after_step", {}),
    "l2_init": ("loss", {"coef": 0.5}),
    "l2_init_squared": ("loss", {"coef": 0.5, "squared": True}),
    "w2_init": ("loss", {"coef": 0.5}),
    "redo": ("periodic", {"every": 1, "tau": 0.5}),
}


def test_stacked_elementwise_ops_and_row_reductions_round_as_one_members():
    """The premise: on K stacked rows, the operations the batched methods use give each row what
    they give that row alone (fused multiply-add included, at any length and position)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        k, n = int(torch.randint(2, 9, (1,), generator=gen)), int(torch.randint(1, 5000, (1,), generator=gen))
        a, b = torch.randn(k, n, generator=gen), torch.randn(k, n, generator=gen)
        cases = {
            "shrink+perturb": (a.clone().mul_(0.999).add_(b, alpha=1e-3), [a[i].clone().mul_(0.999).add_(b[i], alpha=1e-3) for i in range(k)]),
            "norm": (torch.linalg.vector_norm(a, dim=1), [torch.linalg.vector_norm(a[i]) for i in range(k)]),
            "squared norm, double": (a.double().pow(2).sum(1), [a[i].double().pow(2).sum() for i in range(k)]),
            "sort": (a.sort(dim=1).values, [a[i].sort().values for i in range(k)]),
        }
        for what, (stacked, rows) in cases.items():
            assert torch.equal(stacked, torch.stack(rows)), (what, k, n)


def members(name: str, params: dict) -> tuple[list, list]:
    """K networks (seeds 0..K-1) with their instances of the method, each with its own streams;
    built twice, identically: the population's and the single networks'."""
    method = name.removesuffix("_init").removesuffix("_squared") if name.endswith(("_squared", "perturb_init")) else name
    norm = {"norm": "layernorm"} if method == "nap" else {}
    out = []
    for _ in range(2):
        models = [make_model(k, OBS, enc_type="mlp", **norm) for k in range(K)]
        instances = [build(method, m, **params) for m in models]
        for k, iv in enumerate(instances):
            gen = torch.Generator().manual_seed(100 + k)
            iv.streams = Streams(gen, gen)
        out.append((models, instances))
    return out[0], out[1]


def perturbed(models) -> None:
    """Move every member away from its initialisation (a method towards theta_0 has work to do)."""
    with torch.no_grad():
        for k, m in enumerate(models):
            gen = torch.Generator().manual_seed(k)
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=gen), alpha=0.05)


@pytest.mark.parametrize("acting", [[0, 2], [1, 2]], ids=["first-acts", "first-idle"])
@pytest.mark.parametrize("name", sorted(BATCHED))
def test_a_batched_method_does_to_each_acting_member_what_it_does_to_that_member_alone(name, acting):
    hook, params = BATCHED[name]
    (models, instances), (singles, single_ivs) = members(name, params)
    perturbed(models)
    perturbed(singles)
    net = PopulationNetwork(models)
    assert type(instances[0]).batched(hook)
    optimizer = PopulationAdamW(net.trainable(), lr=1e-3)
    for m in optimizer.exp_avg.values():
        m.fill_(1.0)
    full = Cohort(instances, models, net.params, lambda k: optimizer.member_view(k, models[k]))
    cohort = full.acting(acting, {})
    (idle,) = set(range(K)) - set(acting)
    obs = [frames(32, seed=k, shape=OBS) for k in range(K)]
    if name == "redo":
        for m in (models[2], singles[2]):  # dormant units in one member only
            with torch.no_grad():
                m.blocks[-1].layer.weight[:5] = 0.0
                m.blocks[-1].layer.bias[:5] = -1.0
    before = {n: p.detach().clone() for n, p in net.params.items()}
    if hook == "loss":
        net.zero_grad()
        cohort.instances[0].loss_members(cohort, [ctx(obs[k]) for k in acting]).backward()
    elif hook == "periodic":
        stats = cohort.instances[0].periodic_members(cohort, [obs[k] for k in acting], 1)
    else:
        getattr(cohort.instances[0], f"{hook}_members")(cohort)
    for k in acting:
        single, iv = singles[k], single_ivs[k]
        if hook == "loss":
            iv.loss(single, ctx(obs[k])).backward()
        elif hook == "periodic":
            assert iv.periodic(single, None, obs[k], 1) == stats[acting.index(k)]
        else:
            getattr(iv, hook)(single, None)
        for n, p in single.named_parameters():
            got = net.params[n][k]
            assert torch.equal(got, p.detach()), (n, k)
            if hook == "loss" and p.grad is not None:
                assert torch.equal(net.params[n].grad[k], p.grad), (n, k)
    for n, p in net.params.items():
        assert torch.equal(p.detach()[idle], before[n][idle]), n  # the member that does not act is untouched
        if hook == "loss" and n in net.trainable():
            assert not p.grad[idle].any()
    if name in ("reset", "redo"):  # re-initialised entries lose their moments, in acting members only
        name_w = "blocks.1.layer.weight"
        assert optimizer.exp_avg[name_w][idle].eq(1).all()
        cleared = optimizer.exp_avg[name_w][acting[-1]]
        assert cleared.eq(0).all() if name == "reset" else cleared[:5].eq(0).all()
    if name == "redo":
        assert stats[-1]["redo_reset_units"] >= 5


def test_a_population_holds_each_members_anchors_once():
    """L2 Init's theta_0 of member k is a view of the cohort's stacked anchors (no second copy),
    and its checkpoint state is a copy of its own row only."""
    (models, instances), _ = members("l2_init", {"coef": 0.1})
    net = PopulationNetwork(models)
    cohort = Cohort(instances, models, net.params, lambda k: None)
    stacked = cohort.stack_anchors("anchors")
    for k, iv in enumerate(instances):
        for param, anchor in iv.anchors.pairs():
            name = cohort.name(dict(models[0].named_parameters())[dict((p, n) for n, p in models[k].named_parameters())[param]])
            assert anchor.data_ptr() == stacked[name][k].data_ptr()
        saved = iv.anchors.state_dict()
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in saved.values())


def cchain_model(k: int, kind: str) -> torch.nn.Module:
    if kind == "gaussian":  # continuous actions: the policy's log std is a parameter of each member
        torch.manual_seed(k)
        return build_model(ModelConfig(h_size=32, enc_type="mlp"), 3, (8,), continuous=True)
    return make_model(k, OBS, enc_type="mlp", **({"spectral_norm": "encoder"} if kind == "specnorm" else {}))


def cchain_frames(k: int, kind: str) -> torch.Tensor:
    return torch.randn(32, 8, generator=torch.Generator().manual_seed(k)) if kind == "gaussian" else frames(32, seed=k, shape=OBS)


@pytest.mark.parametrize("acting", [[0, 2], [1, 2]], ids=["first-acts", "first-idle"])
@pytest.mark.parametrize("kind", ["plain", "specnorm", "gaussian"])
def test_cchain_batched_terms_are_each_members_own(kind, acting):
    """C-CHAIN's term over a cohort (previous networks stacked, both forwards in the population's
    batched program) gives each acting member the gradient and statistics its one-network hook
    gives it, spectral norm's power-iteration buffers and a Gaussian policy's log std included,
    and nothing to the idle member."""
    built = []
    for _ in range(2):
        models = [cchain_model(k, kind) for k in range(K)]
        built.append((models, [build("cchain", m, coef=2.0, value_coef=0.5) for m in models]))
    (models, instances), (singles, single_ivs) = built
    net = PopulationNetwork(models)
    cohort = Cohort(instances, models, net.params, lambda k: None, buffers=net.buffers,
                    forward=net.forward_members).acting(acting, {})
    (idle,) = set(range(K)) - set(acting)
    obs = [cchain_frames(k, kind) for k in range(K)]
    assert cohort.instances[0].loss_members(cohort, [ctx(obs[k], 0.5) for k in acting]) is None  # no previous network yet
    for k in acting:
        assert single_ivs[k].loss(singles[k], ctx(obs[k], 0.5)) is None
    perturbed(models)
    perturbed(singles)
    buffers_before = {n: b.clone() for n, b in net.buffers.items()}
    net.zero_grad()
    cohort.instances[0].loss_members(cohort, [ctx(obs[k], 0.25) for k in acting]).backward()
    for k in acting:
        single, iv = singles[k], single_ivs[k]
        iv.loss(single, ctx(obs[k], 0.25)).backward()
        assert instances[k].epoch == iv.epoch and instances[k].epoch["reg_steps"] == 1
        for n, p in single.named_parameters():
            assert torch.equal(net.params[n].grad[k], p.grad), (n, k)
        for n, b in single.named_buffers():
            assert torch.equal(net.buffers[n][k], b), (n, k)
        for n, t in iv.prev.items():
            assert torch.equal(instances[k].prev[n], t), (n, k)
    assert instances[idle].prev is None and instances[idle].epoch["steps"] == 0
    for n, p in net.trainable().items():
        assert not p.grad[idle].any(), n
    for n, b in net.buffers.items():
        assert torch.equal(b[idle], buffers_before[n][idle]), n
    if kind == "specnorm":
        assert any(not torch.equal(b[acting[0]], buffers_before[n][acting[0]]) for n, b in net.buffers.items())
