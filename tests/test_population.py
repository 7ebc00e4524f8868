"""Populations: member k of a population computes what the single run of seed k computes.

Equivalence is checked on the metrics files the runs write (first epoch to 1e-5 relative, every
epoch of a short run close), for every intervention and the model variants of the findings
study, for fixed and episode collection; the per-member pieces (gradient clip, advantage
normalisation, AdamW steps, hooks, random streams) each against a single-member reference; and
a killed population resumes to the uninterrupted result.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from plasticity_lab.agents.population_optim import PopulationAdamW, clip_member_grad_norms
from plasticity_lab.agents.ppo import ppo_loss
from plasticity_lab.config import RunConfig
from plasticity_lab.distributions import Categorical
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import REGISTRY, validate_interventions

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = {
    "environment": {"name": "gridworld", "task": "gather_4", "grid_size": 5, "episode_steps": 12, "env_copies": 4},
    "model": {"enc_type": "mlp", "h_size": 16},
    "ppo_trainer": {"num_epochs": 3, "shift_points": [1], "buffer_size": 64, "batch_size": 16, "num_passes": 2,
                    "test_interval": 1, "test_episodes": 3},
    "diagnostics": {"probe_interval": 1, "probe_size": 32, "trainability_every": 2, "trainability_steps": 2, "budget": None},
}
SKIP = {"wall_time", "steps_per_s", "probe_seconds"}

# Parameters that make each method act within a 3-epoch run of 4 minibatches per epoch.
METHODS = {
    "reset": {"parts": ["encoder", "policy", "value"]},
    "shrink_perturb": {},
    "soft_shrink_perturb": {"shrink_per_task": 0.5},
    "l2_init": {"coef": 0.01},
    "w2_init": {"coef": 0.01},
    "parseval": {},
    "redo": {"every": 1, "tau": 0.5},
    "cbp": {"replacement_rate": 0.1, "maturity_threshold": 2},
    "nap": {},
    "cchain": {},
    "inject": {},
    "l2": {"coef": 0.01},
    "adam_beta": {},
    "trac": {},
    "kron": {},
}
VARIANTS = {
    "layernorm": {"norm": "layernorm"},
    "rmsnorm": {"norm": "rmsnorm"},
    "specnorm": {"spectral_norm": "encoder"},
    "leaky-relu": {"activation": "leaky-relu"},
    "mish": {"activation": "mish"},
    "crelu": {"activation": "crelu"},
}


def config(interventions: dict | None = None, model: dict | None = None, **ppo) -> RunConfig:
    raw = {**GRID, "model": {**GRID["model"], **(model or {})}, "ppo_trainer": {**GRID["ppo_trainer"], **ppo},
           "interventions": interventions or {}}
    if interventions and "nap" in interventions:
        raw["model"]["norm"] = "layernorm"
    cfg = RunConfig.model_validate(raw)
    cfg.interventions = validate_interventions(cfg)
    return cfg


def rows(path: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    with open(path / name, newline="") as handle:
        return list(csv.DictReader(handle))


def train_population(cfg: RunConfig, root: Path, seeds: list[int]) -> list[Path]:
    dirs = [root / "population" / f"seed_{s}" for s in seeds]
    for d in dirs:
        d.mkdir(parents=True)
    assert Run(cfg, dirs, seeds, device="cpu").train() == "done"
    return dirs


def train_single(cfg: RunConfig, root: Path, seed: int) -> Path:
    d = root / "single" / f"seed_{seed}"
    d.mkdir(parents=True)
    assert Run(cfg, d, seed, device="cpu").train() == "done"
    return d


def relative_gaps(a: list[dict[str, str]], b: list[dict[str, str]]) -> list[float]:
    """Largest relative difference of each epoch's metrics (atol 1e-7 for values near 0)."""
    assert len(a) == len(b)
    out = []
    for ra, rb in zip(a, b):
        gap = 0.0
        for key in ra:
            if key in SKIP or ra[key] == rb[key]:
                continue
            assert ra[key] and rb[key], (key, ra[key], rb[key])  # both empty or both set
            x, y = float(ra[key]), float(rb[key])
            if math.isnan(x) and math.isnan(y):
                continue
            gap = max(gap, abs(x - y) / max(abs(y), 1e-2) if abs(x - y) > 1e-7 else 0.0)
        out.append(gap)
    return out


def first_epoch_rows(cfg: RunConfig, root: Path, seeds: list[int], member: int) -> tuple[dict, dict]:
    """Epoch 0's metrics row of member ``member`` of a population of ``seeds``, and of the single
    run of its seed, at full precision (metrics.csv keeps 6 digits)."""
    dirs = [root / "first" / f"seed_{s}" for s in seeds]
    for d in dirs:
        d.mkdir(parents=True)
    population = Run(cfg, dirs, seeds, device="cpu").run_epoch(0)[member]
    (root / "first" / "single").mkdir()
    (single,) = Run(cfg, root / "first" / "single", seeds[member], device="cpu").run_epoch(0)
    return population, single


def assert_close_rows(a: dict, b: dict, rtol: float, atol: float) -> None:
    for key, x in a.items():
        if key in SKIP:
            continue
        y = b[key]
        if x is None or y is None or (isinstance(x, float) and math.isnan(x)):
            assert x is None and y is None or math.isnan(x) and math.isnan(y), (key, x, y)
            continue
        assert math.isclose(x, y, rel_tol=rtol, abs_tol=atol), (key, x, y)


def assert_member_is_its_single_run(cfg: RunConfig, tmp_path: Path, member: int = 1) -> list[float]:
    """Epoch 0 identical to 1e-5 relative (1e-6 absolute for values near 0: explained variance
    is 1 minus a ratio of variances), then a 3-epoch run with a shift (every hook) as close in
    every epoch as float rounding allows, diagnostics included."""
    assert_close_rows(*first_epoch_rows(cfg, tmp_path, [0, 1, 2], member), rtol=1e-5, atol=1e-6)
    population = train_population(cfg, tmp_path, [0, 1, 2])
    single = train_single(cfg, tmp_path, member)
    gaps = relative_gaps(rows(population[member]), rows(single))
    assert max(gaps) <= 1e-3, gaps
    assert max(relative_gaps(rows(population[member], "diagnostics.csv"), rows(single, "diagnostics.csv"))) <= 1e-3
    return gaps


def test_every_intervention_is_covered():
    assert set(METHODS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_member_equals_single_run_with_each_intervention(tmp_path, name):
    if name == "kron":
        pytest.importorskip("kron_torch")
    if name == "trac":
        pytest.importorskip("trac_optimizer")
    assert_member_is_its_single_run(config({name: METHODS[name]}), tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_member_equals_single_run_with_each_model_variant(tmp_path, variant):
    assert_member_is_its_single_run(config(model=VARIANTS[variant]), tmp_path)


def test_episode_collection_members_with_different_buffers_match_their_single_runs(tmp_path):
    """Episode collection: members store different numbers of transitions, so some take more
    minibatches than others (masked AdamW steps, per-member step counts)."""
    cfg = config(rollout="episodes", buffer_size=60)
    cfg.environment.time_limit = "terminal"
    cfg.environment.episode_steps = 40
    for seed in (0, 2):
        assert_close_rows(*first_epoch_rows(cfg, tmp_path / f"first{seed}", [0, 1, 2], seed), rtol=1e-5, atol=1e-6)
    population = train_population(cfg, tmp_path, [0, 1, 2])
    steps = [[int(r["env_steps"]) for r in rows(d)] for d in population]
    assert len({tuple(s) for s in steps}) > 1  # the members really gathered different amounts
    for seed in (0, 2):
        assert max(relative_gaps(rows(population[seed]), rows(train_single(cfg, tmp_path, seed)))) <= 1e-3


def test_bf16_member_equals_single_run(tmp_path):
    cfg = config(precision="bf16")
    assert_close_rows(*first_epoch_rows(cfg, tmp_path, [0, 1], 1), rtol=1e-2, atol=1e-3)  # bf16 rounding


def test_members_do_not_share_random_streams(tmp_path):
    """Different seeds: different initial weights, shifts and actions; a repeated seed in one
    population gives identical members (nothing leaks between members)."""
    cfg = config({"shrink_perturb": {}})
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    run = Run(cfg, dirs, [5, 6, 5], device="cpu")
    assert not torch.equal(run.net.params["policy.weight"][0], run.net.params["policy.weight"][1])
    assert torch.equal(run.net.params["policy.weight"][0], run.net.params["policy.weight"][2])
    run.train()
    a, b, c = (rows(d) for d in dirs)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in SKIP} for r in rs]  # noqa: E731
    assert strip(a) == strip(c) and strip(a) != strip(b)


# ----------------------------------------------------------------- the per-member pieces


def test_gradient_clip_is_per_member():
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([100.0, 0.01, 1.0])
    grads = [torch.randn(3, 4, 5, generator=gen) * scale.view(3, 1, 1), torch.randn(3, 7, generator=gen) * scale.view(3, 1)]
    params = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norms = clip_member_grad_norms(params, 0.5)
    for k in range(3):
        singles = [torch.zeros(g[k].shape, requires_grad=True) for g in grads]
        for p, g in zip(singles, grads):
            p.grad = g[k].clone()
        expected = torch.nn.utils.clip_grad_norm_(singles, 0.5)
        assert float(norms[k]) == pytest.approx(float(expected), rel=1e-6)
        for p, single in zip(params, singles):
            torch.testing.assert_close(p.grad[k], single.grad)
    assert float(norms[0]) > 0.5 > float(norms[1])  # one member clipped, one left alone


def test_advantage_normalisation_and_losses_are_per_member():
    gen = torch.Generator().manual_seed(1)
    K, B, A = 3, 8, 4
    logits = torch.randn(K, B, A, generator=gen)
    values, returns = torch.randn(K, B, generator=gen), torch.randn(K, B, generator=gen)
    actions = torch.randint(0, A, (K, B), generator=gen)
    old = torch.randn(K, B, generator=gen) - 1.5
    adv = torch.randn(K, B, generator=gen) * torch.tensor([[1.0], [50.0], [0.1]]) + torch.tensor([[0.0], [10.0], [-3.0]])
    parts = ppo_loss(Categorical(logits), values, actions, old, adv, returns, 0.2)
    for k in range(K):
        single = ppo_loss(Categorical(logits[k]), values[k], actions[k], old[k], adv[k], returns[k], 0.2)
        for field in ("policy", "value", "entropy", "approx_kl", "clipfrac", "value_error"):
            torch.testing.assert_close(getattr(parts, field)[k], getattr(single, field))


@pytest.mark.parametrize("decay", [{"weight_decay": 0.1}, {"coupled_weight_decay": 0.1}])
def test_population_adamw_steps_each_member_as_torch_adam(decay):
    """Member k's slice moves as torch's AdamW (decoupled) or Adam (coupled L2) on member k, also
    when members skip steps (their own step counts, untouched while masked)."""
    gen = torch.Generator().manual_seed(2)
    K = 3
    start = torch.randn(K, 4, 3, generator=gen)
    stacked = torch.nn.Parameter(start.clone())
    opt = PopulationAdamW({"w": stacked}, lr=0.01, betas=(0.9, 0.99), **decay)
    singles = [torch.nn.Parameter(start[k].clone()) for k in range(K)]
    make = torch.optim.AdamW if "weight_decay" in decay else torch.optim.Adam
    torch_opts = [make([p], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1) for p in singles]
    masks = [None, torch.tensor([True, False, True]), torch.tensor([False, False, True]), None]
    for mask in masks:
        grads = torch.randn(K, 4, 3, generator=gen)
        stacked.grad = grads.clone()
        opt.step(mask)
        for k in range(K):
            if mask is None or mask[k]:
                singles[k].grad = grads[k].clone()
                torch_opts[k].step()
    for k in range(K):
        torch.testing.assert_close(stacked.detach()[k], singles[k].detach(), rtol=1e-6, atol=1e-7)
    assert opt.steps.tolist() == [3, 2, 4]


def test_a_hook_edits_only_its_own_member(tmp_path):
    """ReDo recycles the dormant units of the member whose units are dormant, and clears only that
    member's Adam moments."""
    cfg = config({"redo": {"every": 1, "tau": 0.1}}, num_epochs=2, shift_points=[])
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    for d in dirs:
        d.mkdir()
    run = Run(cfg, dirs, [0, 1], device="cpu")
    run.run_epoch(0)  # moments exist now
    dense = run.members[1].model.blocks[-1].layer
    with torch.no_grad():
        dense.weight[:5] = 0.0
        dense.bias[:5] = -1.0  # dead after the ReLU: dormant
    before = {n: p.detach().clone() for n, p in run.net.params.items()}
    moments = {n: m.clone() for n, m in run.optimizer.exp_avg.items()}
    obs = torch.from_numpy(run.envs.observe_current()[1]).repeat(8, 1, 1, 1)
    out = run.members[1].interventions[0].periodic(run.members[1].model, run.optimizer_view(run.members[1]), obs, 1)
    assert out["redo_reset_units"] >= 5
    name = "blocks.1.layer.weight"
    assert torch.equal(run.net.params[name][0], before[name][0])  # member 0 untouched
    assert not torch.equal(run.net.params[name][1][:5], before[name][1][:5])  # member 1's units re-drawn
    assert torch.equal(run.optimizer.exp_avg[name][0], moments[name][0])
    assert run.optimizer.exp_avg[name][1][:5].abs().sum() == 0


# ----------------------------------------------------------------- resume


def test_a_killed_population_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = config(num_epochs=5, shift_points=[2])
    cfg.experiment.save_freq = 1
    full = train_population(cfg, tmp_path / "full", [0, 1, 2])
    dirs = [tmp_path / "cut" / f"seed_{s}" for s in (0, 1, 2)]
    for d in dirs:
        d.mkdir(parents=True)
    stopped = Run(cfg, dirs, [0, 1, 2], device="cpu")
    run_epoch = stopped.run_epoch

    def killed_at_3(epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return run_epoch(epoch)

    stopped.run_epoch = killed_at_3
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    resumed = Run(cfg, dirs, [0, 1, 2], device="cpu")
    states = resumed.load_resume_state()
    assert [s["next_epoch"] for s in states] == [3, 3, 3]
    assert resumed.train(states) == "done"
    for a, b in zip(full, dirs):
        assert relative_gaps(rows(a), rows(b)) == [0.0] * 5


def test_runs_resuming_at_different_epochs_form_separate_populations(tmp_path):
    from plasticity_lab.config import StudyConfig
    from plasticity_lab.experiment.population import population_groups
    from plasticity_lab.experiment.study import plan_runs

    study = StudyConfig({**GRID, "experiment": {"conditions": {"baseline": {}, "l2": {"interventions.l2": {}}}}}, "x.yaml")
    specs = plan_runs(study, "s", None, [0, 1, 2, 3], tmp_path, resume=True)
    for spec in specs:
        spec.run_dir.mkdir(parents=True)
    (specs[0].run_dir / "DONE").write_text("")  # finished: not re-run
    (specs[1].run_dir / "checkpoints").mkdir()
    torch.save({"format": 2, "next_epoch": 7}, specs[1].run_dir / "checkpoints" / "latest.pt")
    groups = population_groups(specs, size=None, resume=True)
    labels = sorted(sorted(s.label for s in g) for g in groups)
    assert labels == [["baseline/seed_1"], ["baseline/seed_2", "baseline/seed_3"], [f"l2/seed_{s}" for s in range(4)]]
    chunks = population_groups(specs, size=3, resume=False)
    assert sorted(len(g) for g in chunks) == [1, 3, 3]


def test_population_over_the_memory_limit_is_refused_in_one_line():
    from plasticity_lab.config import ConfigError
    from plasticity_lab.experiment.population import check_population_fits, population_memory

    cfg = config()
    estimate = population_memory(cfg)
    assert estimate.total(10) - estimate.total(9) == estimate.per_member > 0
    assert population_memory(config(model={"spectral_norm": "encoder"})).per_member == estimate.per_member
    cfg.experiment.population_memory_gib = (estimate.total(4) + estimate.total(5)) / 2 / 1024**3
    check_population_fits(cfg, 4, torch.device("cpu"), "s/baseline")
    with pytest.raises(ConfigError, match=r"population of 5 members needs about .* at most 4 members fit") as err:
        check_population_fits(cfg, 5, torch.device("cpu"), "s/baseline")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------- a whole short study


def test_a_short_study_has_the_same_condition_means_as_single_runs(tmp_path):
    """Six seeds of a 12-epoch protocol with two shifts, as one population and as six single
    runs: paired by seed, the final training returns differ by far less than the seeds do, and a
    paired t test finds no difference."""
    cfg = config(num_epochs=12, shift_points=[4, 8], test_interval=4)
    cfg.diagnostics.enabled = False
    seeds = list(range(6))
    population = train_population(cfg, tmp_path, seeds)
    finals_pop = [np.mean([float(r["train_r"]) for r in rows(d)[-4:]]) for d in population]
    finals_single = [np.mean([float(r["train_r"]) for r in rows(train_single(cfg, tmp_path, s))[-4:]]) for s in seeds]
    diffs = np.subtract(finals_pop, finals_single)
    spread = np.std(finals_single, ddof=1)
    assert spread > 0
    assert np.abs(diffs).mean() < 0.2 * spread
    if np.any(diffs != 0):
        assert stats.ttest_rel(finals_pop, finals_single).pvalue > 0.01


def test_each_member_logs_its_own_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(num_epochs=2, shift_points=[])
    dirs = train_population(cfg, tmp_path, [0, 1])
    for d in dirs:
        events = EventAccumulator(str(d / "tb"))
        events.Reload()
        logged = [e.value for e in events.Scalars("train_r")]
        assert logged == pytest.approx([float(r["train_r"]) for r in rows(d)], rel=1e-5)
        assert any(tag.endswith("/effective_rank") for tag in events.Tags()["scalars"])  # the probes' too


def test_a_single_network_computes_only_the_needed_rows():
    """A population of one computes only the rows still in their episode (the others are 0);
    the needed rows equal a full forward's."""
    from plasticity_lab.nets import build_model
    from plasticity_lab.nets.population import PopulationNetwork

    cfg = config()
    torch.manual_seed(0)
    net = PopulationNetwork([build_model(cfg.model, 4, (5, 5, 3))])
    obs = torch.randint(0, 256, (1, 6, 5, 5, 3), dtype=torch.uint8)
    needed = torch.tensor([[True, False, True, False, False, True]])
    calls = []
    net.members[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        full, part = net(obs), net(obs, needed)
    assert calls == [6, 3]
    for a, b in zip(full, part):
        torch.testing.assert_close(b[needed], a[needed])
        assert not b[~needed].any()
