"""The diagnostics budget: plans checked against hand-computed sums of item costs, the budget held
for runs of any length, the priorities (task ends first), the plain line when nothing fits, the
cost model's arithmetic against hand-computed network shapes and environment costs, and the plan
as a pure function of the config."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from plasticity_lab.config import load_study
from plasticity_lab.envs.registry import FAMILIES
from plasticity_lab.experiment import cost_model as cm
from plasticity_lab.experiment.cost_model import (
    ENV_COSTS, ItemCosts, NetworkShape, collection_steps, evaluation_seconds, task_matrix_evaluations,
)
from plasticity_lab.experiment.probes import DiagnosticsLogger, PlasticityProbe, plan_diagnostics, run_item_costs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HAND = ItemCosts(epoch=1000.0, probe=220.0, collect=80.0, churn=100.0, fit=160.0, reference=260.0,
                 matrix_evaluation=100.0)


def plan(budget, trainability_every=0, costs=HAND, **kw):
    args = dict(num_epochs=10, shift_points=[5], interval=1, trainability_every=trainability_every)
    return plan_diagnostics(**{**args, **kw}, costs=costs, budget=budget)


def test_probes_within_budget_by_hand():
    # probe 220; a task's first probe + 80 (frames) and, after a shift, + 100 (churn)
    tight = plan(0.09)  # limit 900: ends 4 (300) and 9 (400) = 700; epoch 0 would make 920
    assert (tight.probes, tight.skipped_probes) == ((4, 9), (0, 1, 2, 3, 5, 6, 7, 8))
    assert tight.cost == pytest.approx(700 / 10_000)
    wider = plan(0.2)  # limit 2000: 700 + epoch 0 (220) + 4 evenly spaced periodic ones (880)
    assert wider.probes == (0, 1, 3, 4, 6, 8, 9) and wider.cost == pytest.approx(1800 / 10_000)
    assert plan(None).probes == tuple(range(10)) and plan(None).cost == pytest.approx(2460 / 10_000)
    assert plan(0.09).cheapest == pytest.approx(300 / 10_000)  # task 0's end: probe + frames


def test_fits_within_budget_by_hand():
    # fit 160; a task's first fit + 260 (fresh network's fit and the targets)
    full = plan(None, trainability_every=5)
    assert full.fits == (0, 4, 9) and full.cost == pytest.approx((2460 + 3 * 160 + 2 * 260) / 10_000)
    assert plan(0.26, trainability_every=5).fits == ()  # 2460 of probes leave 140: no first fit (420)
    some = plan(0.31, trainability_every=5)  # 2460 + task-0 end 420 + epoch 0 160 = 3040; task 1's 420 would exceed
    assert (some.fits, some.skipped_fits) == ((0, 4), (9,))
    assert some.cost == pytest.approx(3040 / 10_000)
    assert "skipped fits after epochs 9" in some.describe() and "2 of 3 trainability fits" in some.describe()


def test_nothing_fits_is_one_plain_line():
    none = plan(0.02)  # limit 200: the cheapest probe (task 0's end) costs 300
    assert none.probes == () and none.fits == () and none.cheapest == pytest.approx(0.03)
    assert none.describe() == (
        "diagnostics: none fit the budget of 2% of the training time (one probe would cost an estimated 3.0%); "
        "raise diagnostics.budget, or set it to null, to probe anyway"
    )


def test_task_matrix_is_spent_first_by_hand():
    """The matrix was asked for: it always runs, and the probes get what it leaves."""
    two = plan(0.09, matrix_evaluations=2)  # limit 900: matrix 200 + ends 4 (300) and 9 (400) = 900
    assert two.probes == (4, 9) and two.cost == pytest.approx(0.09) and two.matrix == pytest.approx(0.02)
    assert "(estimated 9.0%, the task matrix an estimated 2.0%)" in two.describe()
    # 300 + end 4 (300) = 600; task 1's end (400) would make 1000; epoch 0 (same task: 220) makes 820
    three = plan(0.09, matrix_evaluations=3)
    assert three.probes == (0, 4) and three.cost == pytest.approx(0.082)
    over = plan(0.02, matrix_evaluations=3)  # the matrix alone (3%) is over the 2% budget: no probe, matrix kept
    assert over.probes == () and over.cost == pytest.approx(0.03) and over.matrix == pytest.approx(0.03)
    assert "the task matrix an estimated 3.0%" in over.describe()
    unbudgeted = plan(None, matrix_evaluations=3)
    assert unbudgeted.cost == pytest.approx((2460 + 300) / 10_000) and plan(None).matrix == 0


def test_task_matrix_evaluations_and_their_cost_by_hand():
    cfg = load_study("gridworld_study.yaml").condition("baseline")  # 10 tasks, 64 test episodes of <= 30 steps
    assert cfg.evaluation.task_matrix and task_matrix_evaluations(cfg) == 45  # 55 cells less the 10 diagonal
    fewer = cfg.model_copy(deep=True)
    fewer.evaluation.task_matrix_episodes = 16  # the diagonal is no longer the ordinary evaluation
    assert task_matrix_evaluations(fewer) == 55
    fewer.evaluation.task_matrix = False
    assert task_matrix_evaluations(fewer) == 0
    shape = NetworkShape.of(cfg)
    env = ENV_COSTS["gridworld"]
    macs = 147 * 128 + 128 * 128 + 128 * 5
    # 64 copies made, stepped 30 times (the episode cap), one batched forward per step
    hand = 64 * env.make + 30 * (cm.ROLLOUT_STEP_S + 64 * env.step) + 64 * 30 * macs * cm.MAC_S + 30 * cm.FORWARD_CALL_S
    assert evaluation_seconds(cfg, 64, shape) == pytest.approx(hand)
    assert cm.item_costs(cfg, 64, 8, 4, 128, shape).matrix_evaluation == pytest.approx(hand)
    minatar = load_study("minatar_permuted.yaml").condition("baseline")  # no length in the config: the family's
    capped = minatar.model_copy(deep=True)
    capped.environment.minatar.max_episode_steps = 50  # a configured cap bounds it
    shape = NetworkShape.of(minatar)
    assert evaluation_seconds(capped, 8, shape) < evaluation_seconds(minatar, 8, shape)
    atari = load_study("atari_continual_cpu.yaml").condition("baseline")  # episodes capped at 2000 frames
    steps = math.ceil(atari.environment.ale.max_episode_frames / atari.environment.ale.frame_skip)
    assert steps < cm.EVAL_EPISODE_STEPS["ale"]
    ale, atari_shape = ENV_COSTS["ale"], NetworkShape.of(atari)
    assert evaluation_seconds(atari, 4, atari_shape) == pytest.approx(
        4 * ale.make + steps * (cm.ROLLOUT_STEP_S + 4 * ale.step) + atari_shape.forward(4 * steps, steps))
    assert evaluation_seconds(capped, 8, shape) == pytest.approx(
        8 * ENV_COSTS["minatar"].make + 50 * (cm.ROLLOUT_STEP_S + 8 * ENV_COSTS["minatar"].step)
        + shape.forward(8 * 50, 50))


def test_cost_line_without_probes(tmp_path):
    logger = DiagnosticsLogger(tmp_path, 0, ["dense"])
    assert logger.cost_line(12.0) == "diagnostics: no probes ran"
    logger.close()


def test_a_budget_needs_costs_and_no_costs_leaves_the_cost_unknown():
    with pytest.raises(ValueError, match="needs the item costs"):
        plan(0.1, costs=None)
    assert plan(None, costs=None).cost is None and "no budget)" in plan(None, costs=None).describe()


@pytest.mark.parametrize("epochs", [1, 2, 5, 30, 61, 300, 3000])
@pytest.mark.parametrize("budget", [0.01, 0.1, 0.5])
def test_budget_holds_and_task_ends_come_first(epochs, budget):
    shifts = [epochs // 3, 2 * epochs // 3] if epochs >= 3 else []
    costs = run_item_costs(load_study("hyperparams_quick.yaml").condition("baseline"))
    kw = dict(num_epochs=epochs, shift_points=shifts, interval=max(1, epochs // 30), trainability_every=5, costs=costs)
    got = plan_diagnostics(budget=budget, **kw)
    full = plan_diagnostics(budget=None, **kw)
    assert got.cost <= budget + 1e-12
    assert set(got.probes) | set(got.skipped_probes) == set(full.probes) and set(got.fits) <= set(got.probes)
    ends = [p - 1 for p in shifts] + [epochs - 1]
    if got.probes:  # a periodic probe is only kept once every affordable task end is
        assert set(ends) & set(got.probes) == {e for e in ends if e in got.probes} and any(e in got.probes for e in ends)
    else:
        assert got.cheapest > budget


def test_network_shape_by_hand():
    cfg = load_study("gridworld_study.yaml").condition("baseline")  # 7x7x3 frames, 4 actions
    cfg.model.enc_type = "conv11"
    shape = NetworkShape.of(cfg)
    # conv 32 3x3/1 pad 1: 7x7 -> 7x7; conv 64 3x3/2 pad 1: -> 4x4; dense 1024 -> 128; heads 128 -> 4 + 1
    assert shape.macs == 32 * 49 * 27 + 64 * 16 * 288 + 128 * 1024 + 128 * 5
    assert shape.activations == 32 * 49 + 64 * 16 + 128
    assert shape.svd_work == 32**2 + 64**2 + 128**2  # one decomposition per layer (ranks and spectrum)
    assert shape.weight_svd_work == 32 * 27**2 + 288 * 64**2 + 1024 * 128**2 + 128 * 4**2 + 128 * 1**2
    cfg.model.enc_type, cfg.model.activation = "mlp", "crelu"  # widths halved, features concatenated
    crelu = NetworkShape.of(cfg)
    assert crelu.macs == 64 * 147 + 64 * 128 + 128 * 5 and crelu.activations == 2 * 128


def test_item_costs_by_hand():
    cfg = load_study("gridworld_study.yaml").condition("baseline")  # mlp h128, 32 copies, 1024 x 4 passes of 256
    shape = NetworkShape.of(cfg)
    macs = 147 * 128 + 128 * 128 + 128 * 5
    costs = cm.item_costs(cfg, collect_envs=64, warmup=8, stride=4, fit_batch=128)
    env = ENV_COSTS["gridworld"]
    rollout = 32 * (cm.ROLLOUT_STEP_S + 32 * env.step) + 1024 * macs * cm.MAC_S + 32 * cm.FORWARD_CALL_S
    update = 4 * 4 * (256 * macs * 3 * cm.MAC_S + cm.UPDATE_STEP_S)
    assert costs.epoch == pytest.approx(rollout + update)
    n = 1280  # probe_size; 64 copies keep a frame every 4th step after 8 warm-up steps: 8 + 4 x 19 + 1 steps
    assert collection_steps(n, 64, 8, 4) == 85
    assert costs.collect == pytest.approx(64 * env.make + 85 * 64 * env.step)
    forward = n * macs * cm.MAC_S + 5 * cm.FORWARD_CALL_S
    assert costs.churn == pytest.approx(forward)
    assert costs.probe == pytest.approx(forward + n * 256 * cm.ACTIVATION_S + cm.PROBE_FIXED_S
                                        + (n * shape.svd_work + shape.weight_svd_work) * cm.SVD_S)
    fit = 200 * (128 * macs * 3 * cm.MAC_S + cm.FIT_STEP_S) + n * macs * cm.MAC_S + 10 * cm.FORWARD_CALL_S
    assert costs.fit == pytest.approx(fit) and costs.reference == pytest.approx(fit + n * macs * cm.MAC_S + 10 * cm.FORWARD_CALL_S)
    episodes = cfg.model_copy(deep=True)
    episodes.ppo_trainer.rollout = "episodes"  # 1.5 x buffer_size transitions on average
    assert cm.item_costs(episodes, 64, 8, 4, 128).epoch == pytest.approx(
        48 * (cm.ROLLOUT_STEP_S + 32 * env.step) + 1536 * macs * cm.MAC_S + 48 * cm.FORWARD_CALL_S + 4 * 6 * update / 16
    )


def test_environment_family_sets_the_relative_costs(monkeypatch):
    """Same network and protocol, only the family's per-copy costs differ: the frame collection
    (creating and stepping 64 copies) is a small part of an epoch on the vectorised gridworld and
    many epochs where each copy is an emulator (ALE: ROM load, frame skip) or a physics simulation."""
    cfg = load_study("gridworld_study.yaml").condition("baseline")
    shape = NetworkShape.of(cfg)
    families = dict(ENV_COSTS)
    relative = {}
    for family in ("gridworld", "procgen", "mujoco", "ale"):
        monkeypatch.setitem(ENV_COSTS, "gridworld", families[family])  # price cfg's environment as `family`
        costs = cm.item_costs(cfg, 64, 8, 4, 128, shape)
        relative[family] = costs.collect / costs.epoch
    assert relative["gridworld"] < relative["procgen"] < relative["mujoco"] < relative["ale"]
    assert relative["gridworld"] < 0.5 and relative["ale"] > 10


def test_plan_is_a_pure_function_of_the_config(monkeypatch):
    cfg = load_study("coinrun_short.yaml").condition("baseline")
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    first = PlasticityProbe.from_config(cfg, seed=0).plan
    assert torch.equal(torch.get_rng_state(), rng)  # pricing the network leaves the run's RNG alone
    for clock in ("monotonic", "perf_counter", "time"):
        monkeypatch.setattr(time, clock, lambda: 1e9)  # another "now": the plan must not see it
    assert PlasticityProbe.from_config(cfg.model_copy(deep=True), seed=1).plan == first


def test_every_environment_family_has_a_cost_entry():
    """A new family in the registry needs its measured costs here (``plab bench --config``)."""
    assert set(ENV_COSTS) == set(FAMILIES)


def test_shipped_configs_keep_their_budget():
    plans = {}
    for path in sorted(CONFIGS.glob("*.yaml")):  # every shipped config, also one added later
        study = load_study(path.name)
        plans[path.stem] = plan = PlasticityProbe.from_config(study.condition(study.conditions[0]), seed=0).plan
        assert plan.cost <= study.base.diagnostics.budget
    assert len(plans) >= 12
    # the few-minute CPU versions of ALE and MuJoCo cannot afford a single probe set (creating and
    # stepping 64 emulators / simulations); the long protocols keep their full schedules
    assert plans["atari_continual_cpu"].probes == () and plans["slippery_ant_cpu"].probes == ()
    for name in ("hyperparams_quick", "hyperparams", "atari_continual", "slippery_ant", "minatar_continual",
                 "minatar_permuted"):
        assert plans[name].skipped_probes == () and plans[name].skipped_fits == ()
    assert plans["hyperparams_quick"].fits == (0, 499, 999, 1499, 1999, 2499, 2999)
    # the task matrix is on where it fits beside every probe (README, "Its cost"), off elsewhere
    on = {name for name, p in plans.items() if p.matrix > 0}
    assert on == {"gridworld_study", "hyperparams", "hyperparams_quick", "atari_continual", "minatar_continual",
                  "slippery_ant"}
    assert all(plans[name].skipped_probes == () for name in on)
