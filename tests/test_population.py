"""Populations: member k of a population is the single run of seed k, bit for bit (CPU).

Identity is checked on the metrics and diagnostics files the runs write and on their final
checkpoints, for every intervention and the model variants of the findings study, for fixed and
episode collection, fp32 and bf16; the per-member pieces (gradient clip, advantage
normalisation, AdamW steps, hooks, random streams) each against a single-member reference; and
a killed population resumes to the uninterrupted result.
"""

from __future__ import annotations

import copy
import importlib.util
import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from plasticity_lab.agents.population_optim import PopulationAdamW, clip_member_grad_norms
from plasticity_lab.agents.ppo import ppo_loss
from plasticity_lab.config import RunConfig, StudyConfig
from plasticity_lab.distributions import Categorical
from plasticity_lab.experiment.identity import run_differences
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import REGISTRY, validate_interventions
from tests.conftest import interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = {
    "environment": {"name": "gridworld", "task": "gather_4", "grid_size": 5, "episode_steps": 12, "env_copies": 4},
    "model": {"enc_type": "mlp", "h_size": 16},
    "ppo_trainer": {"num_epochs": 3, "shift_points": [1], "buffer_size": 64, "batch_size": 16, "num_passes": 2,
                    "test_interval": 1, "test_episodes": 3},
    "diagnostics": {"probe_interval": 1, "probe_size": 32, "trainability_every": 2, "trainability_steps": 2, "budget": None},
}

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


def assert_same_run(a: Path, b: Path) -> None:
    """Run directories ``a`` and ``b`` hold the same run bit for bit (timings aside)."""
    assert run_differences(a, b) == []


def assert_member_is_its_single_run(cfg: RunConfig, tmp_path: Path, member: int = 1) -> None:
    """A 3-epoch run with a shift (every hook): member ``member`` of a population of seeds 0, 1, 2
    is the single run of its seed, bit for bit."""
    population = train_population(cfg, tmp_path, [0, 1, 2])
    assert_same_run(population[member], train_single(cfg, tmp_path, member))


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
    population = train_population(cfg, tmp_path, [0, 1, 2])
    steps = [[int(r["env_steps"]) for r in rows(d)] for d in population]
    assert len({tuple(s) for s in steps}) > 1  # the members really gathered different amounts
    for seed in (0, 2):
        assert_same_run(population[seed], train_single(cfg, tmp_path, seed))


def test_bf16_member_equals_single_run(tmp_path):
    assert_member_is_its_single_run(config(precision="bf16"), tmp_path)


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
    assert run_differences(dirs[0], dirs[2]) == [] and run_differences(dirs[0], dirs[1]) != []


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
    interrupt_at(stopped, 3)
    resumed = Run(cfg, dirs, [0, 1, 2], device="cpu")
    states = resumed.load_resume_state()
    assert [s["next_epoch"] for s in states] == [3, 3, 3]
    assert resumed.train(states) == "done"
    for a, b in zip(full, dirs):
        assert_same_run(a, b)


def test_runs_resuming_at_different_epochs_form_separate_populations(tmp_path):
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
    rng = torch.get_rng_state()
    estimate = population_memory(cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # its network's initialisation draws nothing a run would see
    assert estimate.total(10) - estimate.total(9) == estimate.per_member > 0
    assert population_memory(config(model={"spectral_norm": "encoder"})).per_member == estimate.per_member
    cfg.experiment.population_memory_gib = (estimate.total(4) + estimate.total(5)) / 2 / 1024**3
    check_population_fits(cfg, 4, torch.device("cpu"), "s/baseline")
    with pytest.raises(ConfigError, match=r"population of 5 members needs about .* at most 4 members fit") as err:
        check_population_fits(cfg, 5, torch.device("cpu"), "s/baseline")
    assert "\n" not in str(err.value)


def test_the_memory_estimate_does_not_import_the_compiler_stack():
    """The estimate every population's process makes before training: on the meta device the
    network's layers ran torch's Python decompositions, whose first use imports torch._dynamo
    (~1.5 s of each process's start on the project's machine)."""
    code = ("import sys; from plasticity_lab.config import load_study; "
            "from plasticity_lab.experiment.population import population_memory; "
            "population_memory(load_study('configs/gridworld_study.yaml').base); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------- a whole short study


def test_a_short_study_is_its_single_runs(tmp_path):
    """Six seeds of a 12-epoch protocol with two shifts, as one population and as six single
    runs: every member is its single run, bit for bit."""
    cfg = config(num_epochs=12, shift_points=[4, 8], test_interval=4)
    cfg.diagnostics.enabled = False
    seeds = list(range(6))
    for seed, member in zip(seeds, train_population(cfg, tmp_path, seeds)):
        assert_same_run(member, train_single(cfg, tmp_path, seed))


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


def test_member_by_member_compute_runs_only_the_needed_rows():
    """Members computed one by one (here: modules with forward hooks) run only their rows still
    in an episode, and a member without any needed row not at all; the needed rows are a full
    forward's up to rounding (a matrix product of 3 rows need not round as one of 6; a single
    run subsets its rows the same way, so members still equal their single runs), the others 0."""
    from plasticity_lab.nets import build_model
    from plasticity_lab.nets.population import PopulationNetwork

    cfg = config()
    torch.manual_seed(0)
    members = [build_model(cfg.model, 4, (5, 5, 3)) for _ in range(2)]
    calls = []
    for k, m in enumerate(members):
        m.register_forward_pre_hook(lambda module, args, k=k: calls.append((k, args[0].shape[0])))
    net = PopulationNetwork(members)
    obs = torch.randint(0, 256, (2, 6, 5, 5, 3), dtype=torch.uint8)
    needed = torch.tensor([[True, False, True, False, False, True], [False] * 6])
    with torch.no_grad():
        full, part = net(obs), net(obs, needed)
    assert calls == [(0, 6), (1, 6), (0, 3)]
    for a, b in zip(full, part):
        torch.testing.assert_close(b[needed], a[needed])
        assert not b[~needed].any()


def test_a_member_without_needed_rows_has_no_forward_side_effects():
    """The batched call leaves a member that needs no row untouched: spectral norm's power
    iteration (a training-mode forward's side effect) advances for the computed members only,
    and they compute bit for bit what a call of all members computes."""
    from plasticity_lab.nets import build_model
    from plasticity_lab.nets.population import PopulationNetwork

    cfg = config(model={"spectral_norm": "encoder"})
    torch.manual_seed(0)
    net = PopulationNetwork([build_model(cfg.model, 4, (5, 5, 3)) for _ in range(3)])
    twin = PopulationNetwork([copy.deepcopy(m) for m in net.members])
    assert not net.looped
    obs = torch.randint(0, 256, (3, 6, 5, 5, 3), dtype=torch.uint8)
    needed = torch.zeros(3, 6, dtype=torch.bool)
    needed[0, :2] = needed[2, 4] = True
    before = {name: b.clone() for name, b in net.buffers.items() if name.endswith("_u")}
    with torch.no_grad():
        part, full = net(obs, needed), twin(obs)
    for name, u in before.items():
        assert torch.equal(net.buffers[name][1], u[1])  # member 1: not computed, not advanced
        assert not torch.equal(net.buffers[name][0], u[0]) and not torch.equal(net.buffers[name][2], u[2])
        assert torch.equal(net.buffers[name][[0, 2]], twin.buffers[name][[0, 2]])
    for a, b in zip(full, part):
        assert torch.equal(b[[0, 2]], a[[0, 2]])
        assert not b[1].any()


# ----------------------------------------------------------------- isolation


def poison_at(run: Run, seed: int, epoch: int) -> None:
    """Set the weights of member ``seed`` of ``run`` to NaN just before ``epoch``."""
    run_epoch = run.run_epoch

    def poisoned(e):
        if e == epoch:
            (member,) = [m for m in run.members if m.seed == seed]
            with torch.no_grad():
                for param in member.model.parameters():
                    param.fill_(float("nan"))
        return run_epoch(e)

    run.run_epoch = poisoned


def test_a_diverging_member_fails_alone(tmp_path):
    """NaN weights in one member of three at epoch 3: that member stops as FAILED (its run
    directory says the epoch and the cause, its metrics end at epoch 2) and the two others finish
    bit-identical to a population without it."""
    cfg = config(num_epochs=6, shift_points=[2, 4])
    dirs = [tmp_path / "three" / f"seed_{s}" for s in (0, 1, 2)]
    for d in dirs:
        d.mkdir(parents=True)
    run = Run(cfg, dirs, [0, 1, 2], device="cpu")
    poison_at(run, seed=1, epoch=3)
    assert run.train() == "done"
    assert [(m.seed, epoch, cause) for m, epoch, cause in run.failed] == [(1, 3, "non-finite loss")]
    assert (dirs[1] / "FAILED").read_text() == "diverged at epoch 3: non-finite loss\n"
    assert not (dirs[1] / "DONE").exists() and [r["epoch"] for r in rows(dirs[1])] == ["0", "1", "2"]
    without = train_population(cfg, tmp_path / "two", [0, 2])
    for member, alone in zip((dirs[0], dirs[2]), without):
        assert (member / "DONE").exists()
        assert_same_run(member, alone)


def test_a_sweep_retries_a_diverged_member_once_and_reports_it_failed(tmp_path, monkeypatch):
    """A seed that diverges deterministically (poisoned at epoch 3 in every process the sweep
    starts, through a sitecustomize on the children's path): the sweep retries it once from its
    checkpoint, then gives it up as failed with its reason, the two other seeds finish, and the
    report counts one failed run."""
    from plasticity_lab.analysis.aggregate import compare, open_study
    from plasticity_lab.experiment.sweep import sweep

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import torch\n"
        "from plasticity_lab.experiment import runner\n"
        "run_epoch = runner.Run.run_epoch\n"
        "def poisoned(self, epoch):\n"
        "    for m in self.members:\n"
        "        if m.seed == 1 and epoch == 3:\n"
        "            with torch.no_grad():\n"
        "                for p in m.model.parameters():\n"
        "                    p.fill_(float('nan'))\n"
        "    return run_epoch(self, epoch)\n"
        "runner.Run.run_epoch = poisoned\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    raw = {**GRID, "ppo_trainer": {**GRID["ppo_trainer"], "num_epochs": 6, "shift_points": [2, 4]},
           "experiment": {"save_freq": 2, "conditions": {"baseline": {}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    StudyConfig(raw, str(path))  # a valid study
    states = sweep(path, name="s", seeds=[0, 1, 2], workers=1, out_dir=tmp_path, population=True)
    by_seed = {s.spec.seed: s for s in states}
    assert [by_seed[k].status for k in (0, 1, 2)] == ["done", "failed", "done"]
    assert by_seed[1].attempts == 2
    failed = (tmp_path / "results" / "s" / "baseline" / "seed_1" / "FAILED").read_text()
    assert failed.startswith("diverged at epoch 3: non-finite loss") and "attempts: 2" in failed
    failures = compare(open_study(tmp_path / "results" / "s"), reps=999).results["baseline"].failed
    assert list(failures) == ["baseline/seed_1"]
    assert "FAILED (diverged at epoch 3: non-finite loss;" in failures["baseline/seed_1"]


# ----------------------------------------------------------------- kills and resumes


def study_file(tmp_path: Path, matrix: bool = False, **ppo) -> Path:
    raw = {**GRID, "ppo_trainer": {**GRID["ppo_trainer"], **ppo}, "experiment": {"save_freq": 1, "conditions": {"baseline": {}}},
           "evaluation": {"task_matrix": matrix}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def plab_train(config: Path, out: Path, seeds: str, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "plasticity_lab.cli", "train", "-n", "s", "-p", str(config), "-s", seeds,
           "-o", str(out), "--population", "--threads", "1", "--device", "cpu"] + (["-r"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_at_five_random_moments_then_resume_is_bit_identical(tmp_path):
    """A population of four killed with SIGKILL at five random moments (startup, an epoch, a
    checkpoint commit...) and resumed each time ends bit-identical to an uninterrupted run, its
    task-return matrix included (issue 26)."""
    config = study_file(tmp_path, matrix=True, num_epochs=12, shift_points=[4, 8])
    assert plab_train(config, tmp_path / "full", "0,1,2,3").wait() == 0
    metrics = tmp_path / "cut" / "results" / "s" / "baseline" / "seed_0" / "metrics.csv"

    def epochs_written() -> int:
        return max(0, len(metrics.read_text().splitlines()) - 1) if metrics.exists() else 0

    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        # the moment is drawn in the run's progress, not in seconds (the machine's speed varies):
        # once a random epoch not yet written appears, plus a random fraction of a second
        # (a try that was not cut short can leave all 12 epochs written: then it is cut at startup)
        target, delay = rng.randint(min(epochs_written(), 11), 11), rng.uniform(0.0, 0.3)
        proc = plab_train(config, tmp_path / "cut", "0,1,2,3", resume=True)
        while proc.poll() is None and epochs_written() < target:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3  # most tries really cut a run short
    assert plab_train(config, tmp_path / "cut", "0,1,2,3", resume=True).wait() == 0
    for seed in range(4):
        run = Path("results") / "s" / "baseline" / f"seed_{seed}"
        assert (tmp_path / "cut" / run / "DONE").exists() and (tmp_path / "cut" / run / "task_matrix.csv").exists()
        assert_same_run(tmp_path / "cut" / run, tmp_path / "full" / run)


def test_a_lone_member_resumed_after_its_peers_finished_is_its_single_run(tmp_path):
    """A member that failed transiently (NaN at epoch 3 in its first process only) while its two
    peers finished, resumed alone from its last checkpoint: bit-identical to its single run."""
    cfg = config(num_epochs=6, shift_points=[2, 4])
    cfg.experiment.save_freq = 1
    dirs = [tmp_path / "three" / f"seed_{s}" for s in (0, 1, 2)]
    for d in dirs:
        d.mkdir(parents=True)
    run = Run(cfg, dirs, [0, 1, 2], device="cpu")
    poison_at(run, seed=1, epoch=3)
    run.train()
    assert (dirs[0] / "DONE").exists() and (dirs[2] / "DONE").exists() and not (dirs[1] / "DONE").exists()
    lone = Run(cfg, dirs[1], 1, device="cpu")
    states = lone.load_resume_state()
    assert states[0]["next_epoch"] == 3
    assert lone.train(states) == "done"
    assert_same_run(dirs[1], train_single(cfg, tmp_path, 1))


def test_population_checkpoints_are_one_unit(tmp_path):
    """A kill while a population commits its checkpoints (some members moved on, some not) still
    leaves one epoch every member has, and the population resumes from it together."""
    from plasticity_lab.experiment.checkpoint import LATEST, NEXT, PREVIOUS
    from plasticity_lab.experiment.population import population_groups
    from plasticity_lab.experiment.study import plan_runs

    cfg = config(num_epochs=4, shift_points=[2])
    dirs = [tmp_path / "s" / "baseline" / f"seed_{s}" for s in (0, 1, 2)]
    for d in dirs:
        d.mkdir(parents=True)
    run = Run(cfg, dirs, [0, 1, 2], device="cpu")
    run.run_epoch(0)
    run.save(1, 0.0)
    run.run_epoch(1)
    states = [run.checkpoint_state(m, 2, 0.0) for m in run.members]
    # killed during the commit of epoch 2: member 0 committed, member 1 half way, member 2 not yet
    for member, state in zip(run.members, states):
        torch.save(state, member.ckpt_dir / NEXT)
    os.replace(dirs[0] / "checkpoints" / LATEST, dirs[0] / "checkpoints" / PREVIOUS)
    os.replace(dirs[0] / "checkpoints" / NEXT, dirs[0] / "checkpoints" / LATEST)
    os.replace(dirs[1] / "checkpoints" / LATEST, dirs[1] / "checkpoints" / PREVIOUS)
    assert [s["next_epoch"] for s in Run(cfg, dirs, [0, 1, 2], device="cpu").load_resume_state()] == [2, 2, 2]
    (dirs[2] / "checkpoints" / NEXT).unlink()  # killed before member 2's new checkpoint was written
    assert [s["next_epoch"] for s in Run(cfg, dirs, [0, 1, 2], device="cpu").load_resume_state()] == [1, 1, 1]
    study = StudyConfig({**GRID, "experiment": {"conditions": {"baseline": {}}}}, "x.yaml")
    specs = plan_runs(study, "s", None, [0, 1, 2], tmp_path, resume=True)
    assert [[s.seed for s in g] for g in population_groups(specs, size=None, resume=True)] == [[0, 1, 2]]


def test_the_findings_protocol_identity_check_in_short(tmp_path):
    """CI's short version of bench/population_identity.py (whose full output, 250 epochs, K = 8,
    seven conditions, is recorded in BENCHMARKS.md): 30 epochs of the findings protocol (one
    shift), K = 3, a batched condition and CBP (member by member): every member is
    ``plab train -s k``."""
    spec = importlib.util.spec_from_file_location("population_identity", Path(__file__).parents[1] / "bench" / "population_identity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.check(["baseline", "cbp"], seeds=3, epochs=30, out=tmp_path)
    assert results == {"baseline": [[], [], []], "cbp": [[], [], []]}


# ----------------------------------------------------------------- hand-over to an idle worker


def asking_at(run: Run, handover, epoch: int, count: int) -> None:
    """``run`` is asked for ``count`` members while it trains epoch ``epoch``."""
    step = run.run_epoch

    def run_epoch(e):
        if e == epoch:
            handover.ask(count)
        return step(e)

    run.run_epoch = run_epoch


def test_members_handed_over_mid_run_and_resumed_elsewhere_are_their_single_runs(tmp_path):
    """A population of three asked (experiment/handover.py) for two members checkpoints every
    member at the next epoch boundary, stops its last two (their locks released first, then the
    answer), and finishes seed 0; the two resumed as a population of their own end bit-identical
    to their single runs, as does seed 0."""
    from plasticity_lab.experiment.handover import Handover

    cfg = config(num_epochs=6, shift_points=[2, 4])
    dirs = [tmp_path / "three" / f"seed_{s}" for s in (0, 1, 2)]
    for d in dirs:
        d.mkdir(parents=True)
    handover = Handover(tmp_path / "three" / "population_seed_0")
    run = Run(cfg, dirs, [0, 1, 2], device="cpu")
    asking_at(run, handover, epoch=2, count=2)
    released = []
    run.train(handover=handover, released=lambda seeds: released.append((seeds, handover.answered())))
    assert released == [([1, 2], None)]  # unlocked before the answer
    assert handover.answered() == ([1, 2], 3) and handover.asked() is None
    assert [m.seed for m in run.handed_over] == [1, 2] and not run.failed
    assert (dirs[0] / "DONE").exists() and not (dirs[1] / "DONE").exists() and not (dirs[2] / "DONE").exists()
    rest = Run(cfg, dirs[1:], [1, 2], device="cpu")
    states = rest.load_resume_state()
    assert [s["next_epoch"] for s in states] == [3, 3]
    assert rest.train(states) == "done"
    for seed in (0, 1, 2):
        assert_same_run(dirs[seed], train_single(cfg, tmp_path, seed))


@pytest.mark.parametrize("asked_at, moves", [(17, True), (18, False)])
def test_members_move_only_while_a_tenth_of_the_epochs_remains(tmp_path, asked_at, moves):
    """20 epochs: asked while epoch 17 trains, 2 epochs (10%) remain after it and a member moves;
    asked while epoch 18 trains, 1 remains and the population answers with no seeds, finishing
    every member itself."""
    from plasticity_lab.experiment.handover import Handover

    cfg = config(num_epochs=20, shift_points=[10], test_interval=10)
    dirs = [tmp_path / f"seed_{s}" for s in (0, 1)]
    for d in dirs:
        d.mkdir(parents=True)
    handover = Handover(tmp_path / "population_seed_0")
    run = Run(cfg, dirs, [0, 1], device="cpu")
    asking_at(run, handover, epoch=asked_at, count=1)
    assert run.train(handover=handover) == "done"
    assert handover.answered() == (([1], 18) if moves else ([], 19))
    assert (dirs[1] / "DONE").exists() != moves and (dirs[0] / "DONE").exists()


def test_a_population_whose_environments_restart_episodes_on_resume_keeps_its_members(tmp_path):
    """Where a resume restarts the episodes in progress (ALE, Gymnasium, MuJoCo), a moved member
    would not be its uninterrupted run: the population declines."""
    import dataclasses

    from plasticity_lab.experiment.handover import Handover

    cfg = config(num_epochs=12, shift_points=[6])
    dirs = [tmp_path / f"seed_{s}" for s in (0, 1)]
    for d in dirs:
        d.mkdir(parents=True)
    handover = Handover(tmp_path / "population_seed_0")
    run = Run(cfg, dirs, [0, 1], device="cpu")
    run.spec = dataclasses.replace(run.spec, resumes_mid_episode=False)
    asking_at(run, handover, epoch=1, count=1)
    assert run.train(handover=handover) == "done"
    assert handover.answered() == ([], 2) and all((d / "DONE").exists() for d in dirs)


def share_study(tmp_path: Path, save_freq: int = 12) -> Path:
    raw = {**GRID, "ppo_trainer": {**GRID["ppo_trainer"], "num_epochs": 12, "shift_points": [6], "test_interval": 4},
           "diagnostics": {"probe_interval": 6, "probe_size": 32, "trainability_every": 0, "budget": None},
           "experiment": {"conditions": {"baseline": {}}, "save_freq": save_freq}}
    path = tmp_path / "share.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_is_single_run(path: Path, study: Path, seed: int, tmp_path: Path) -> None:
    """Run ``seed`` of study ``share`` in ``study`` equals ``plab train -s seed`` bit for bit."""
    single = tmp_path / f"single_{seed}"
    code = subprocess.run([sys.executable, "-m", "plasticity_lab.cli", "train", "-n", "share", "-p", str(path),
                           "-s", str(seed), "-o", str(single), "--threads", "1", "--device", "cpu"], capture_output=True).returncode
    assert code == 0
    assert_same_run(study / "baseline" / f"seed_{seed}", single / "results" / "share" / "baseline" / f"seed_{seed}")


def test_an_idle_sweep_worker_takes_over_half_of_a_running_population(tmp_path):
    """One population of eight on two workers: the worker left without a task asks it for
    members, it hands its last four over at its next epoch boundary and the worker resumes them;
    every run finishes on its first attempt, the sweep's log says so, no moved member's
    train.log is its first population's, and a moved member is its seed's single run bit for bit."""
    from plasticity_lab.experiment.sweep import sweep

    path = share_study(tmp_path)
    out = tmp_path / "out"
    states = sweep(path, seeds=list(range(8)), workers=2, out_dir=out, population=True)
    assert [s.status for s in states] == ["done"] * 8
    assert [s.attempts for s in states] == [1] * 8  # moving is not a retry: the retry budget stays whole
    study = out / "results" / "share"
    log = (study / "sweep.log").read_text()
    assert "baseline: seeds 4,5,6,7 handed over at epoch" in log, log
    assert all((study / "baseline" / f"seed_{k}" / "DONE").exists() for k in range(8))
    # (how often members move on depends on timing: the last population may be split again)
    assert all((study / "baseline" / f"seed_{k}" / "train.log").resolve().name != "population_seed_0.log" for k in (4, 5, 6, 7))
    assert_is_single_run(path, study, 6, tmp_path)


def test_a_sweep_resumes_runs_stopped_at_different_epochs_as_separate_populations(tmp_path):
    """Runs of one condition whose checkpoints are at different epochs (a hand-over or a failure
    before the sweep stopped) resume as separate populations, each handing over or not, and
    every run finishes as its single run."""
    from plasticity_lab.config import load_study
    from plasticity_lab.experiment.sweep import sweep

    path = share_study(tmp_path, save_freq=1)  # checkpoints at every epoch
    cfg = load_study(path).condition("baseline")
    study = tmp_path / "out" / "results" / "share"
    dirs = [study / "baseline" / f"seed_{s}" for s in range(4)]
    for d in dirs:
        d.mkdir(parents=True)
    interrupt_at(Run(cfg, dirs[:2], [0, 1], device="cpu"), 2)
    interrupt_at(Run(cfg, dirs[2:], [2, 3], device="cpu"), 5)
    states = sweep(path, seeds=[0, 1, 2, 3], workers=2, out_dir=tmp_path / "out", population=True)
    assert [s.status for s in states] == ["done"] * 4
    assert_is_single_run(path, study, 3, tmp_path)


def test_envlist_stacks_its_members_steps_and_gives_each_its_own_back():
    """A family without a native population steps member after member (EnvList): the step is
    one PopulationStep whose member j is exactly member j's own result, a member without a
    truncation keeping final_obs None while another's cut-off frames are stacked."""
    from plasticity_lab.envs.base import StepResult
    from plasticity_lab.envs.population import EnvList

    class Scripted:
        num_envs, obs_shape, num_actions, num_tiles = 2, (3,), 2, 3

        def __init__(self, k: int) -> None:
            self.k = k

        def step(self, actions: np.ndarray) -> StepResult:
            cut = np.array([self.k == 1, False])
            obs = np.full((2, 3), 10 * self.k, dtype=np.uint8) + actions[:, None].astype(np.uint8)
            return StepResult(obs=obs, reward=np.array([self.k, -self.k], dtype=np.float32), terminated=np.array([False, self.k == 0]),
                              truncated=cut, final_obs=obs + 1 if cut.any() else None,
                              episode_return=np.array([0.5 * self.k, 0.0], dtype=np.float32), episode_length=np.array([self.k, 0]))

    actions = np.array([[0, 1], [1, 0], [1, 1]])
    step = EnvList([Scripted(k) for k in range(3)]).step(actions)
    assert step.obs.shape == (3, 2, 3) and step.final_obs.shape == (3, 2, 3) and len(step) == 3
    for k, got in enumerate(step):
        want = Scripted(k).step(actions[k])
        for field in ("obs", "reward", "terminated", "truncated", "episode_return", "episode_length"):
            assert np.array_equal(getattr(got, field), getattr(want, field)) and getattr(got, field).dtype == getattr(want, field).dtype
        assert (got.final_obs is None) == (want.final_obs is None)
        assert want.final_obs is None or np.array_equal(got.final_obs, want.final_obs)
    subset = EnvList([Scripted(k) for k in range(3)]).step(actions[[0, 2]], [0, 2])
    assert subset.final_obs is None and np.array_equal(subset[1].obs, step[2].obs)
