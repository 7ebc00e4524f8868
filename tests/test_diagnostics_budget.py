"""The diagnostics budget: plans checked against hand-computed cost-model sums, the budget held for
runs of any length, the priorities (task ends first), and the study-report defaults."""

from __future__ import annotations

import pytest

from plasticity_lab.config import load_study
from plasticity_lab.experiment.probes import COSTS, PlasticityProbe, plan_diagnostics


def plan(budget, trainability_every=0, **kw):
    args = dict(num_epochs=10, shift_points=[5], interval=1, trainability_every=trainability_every, probe_size=100,
                fit_steps=2, fit_batch=10, budget=budget, epoch_cost=1000.0)
    return plan_diagnostics(**{**args, **kw})


def test_probes_within_budget_by_hand():
    # probe 2.2 x 100 = 220; a task's first probe + 0.8 x 100 (frames) and, after a shift, + 100 (churn)
    assert (COSTS.probe, COSTS.collect, COSTS.train_step) == (2.2, 0.8, 3.0)
    tight = plan(0.09)  # limit 900: ends 4 (300) and 9 (400) = 700; epoch 0 would make 920
    assert (tight.probes, tight.skipped_probes) == ((4, 9), (0, 1, 2, 3, 5, 6, 7, 8))
    assert tight.cost == pytest.approx(700 / 10_000)
    wider = plan(0.2)  # limit 2000: 700 + epoch 0 (220) + 4 evenly spaced periodic ones (880)
    assert wider.probes == (0, 1, 3, 4, 6, 8, 9) and wider.cost == pytest.approx(1800 / 10_000)
    assert plan(None).probes == tuple(range(10)) and plan(None).cost == pytest.approx(2460 / 10_000)


def test_fits_within_budget_by_hand():
    # fit 2 x 10 x 3 + 100 = 160; a task's first fit + 160 (fresh network) + 100 (targets)
    full = plan(None, trainability_every=5)
    assert full.fits == (0, 4, 9) and full.cost == pytest.approx((2460 + 3 * 160 + 2 * 260) / 10_000)
    assert plan(0.26, trainability_every=5).fits == ()  # 2460 of probes leave 140: no first fit (420)
    some = plan(0.31, trainability_every=5)  # 2460 + task-0 end 420 + epoch 0 160 = 3040; task 1's 420 would exceed
    assert (some.fits, some.skipped_fits) == ((0, 4), (9,))
    assert some.cost == pytest.approx(3040 / 10_000)
    assert "skipped fits after epochs 9" in some.describe() and "2 of 3 trainability fits" in some.describe()


@pytest.mark.parametrize("epochs", [1, 2, 5, 30, 61, 300, 3000])
@pytest.mark.parametrize("budget", [0.01, 0.1, 0.5])
def test_budget_holds_and_task_ends_come_first(epochs, budget):
    shifts = [epochs // 3, 2 * epochs // 3] if epochs >= 3 else []
    kw = dict(num_epochs=epochs, shift_points=shifts, interval=max(1, epochs // 30), trainability_every=5,
              probe_size=2560, fit_steps=200, fit_batch=128, epoch_cost=COSTS.epoch(1024, 3))
    got = plan_diagnostics(budget=budget, **kw)
    full = plan_diagnostics(budget=None, **kw)
    assert got.cost <= budget + 1e-12
    assert set(got.probes) | set(got.skipped_probes) == set(full.probes) and set(got.fits) <= set(got.probes)
    ends = [p - 1 for p in shifts] + [epochs - 1]
    if got.probes:  # a periodic probe is only kept once every affordable task end is
        assert set(ends) & set(got.probes) == {e for e in ends if e in got.probes} and any(e in got.probes for e in ends)
    assert got == plan_diagnostics(budget=budget, **kw)  # a pure function of the config: resumes agree


def test_study_report_defaults_for_short_and_long_runs():
    base = load_study("hyperparams_quick.yaml").condition("baseline")
    plans = {}
    for epochs, shifts in ((2, [1]), (30, [10, 20]), (3000, [1000, 2000])):
        cfg = base.model_copy(deep=True)
        cfg.ppo_trainer.num_epochs, cfg.ppo_trainer.shift_points = epochs, shifts
        plans[epochs] = PlasticityProbe.from_config(cfg, seed=0).plan
        assert plans[epochs].cost <= 0.1
    assert plans[2].probes == () and plans[2].fits == ()  # one probe would cost more than 10% of 2 epochs
    assert plans[30].probes == (9, 19, 29) and plans[30].fits == ()  # every task's final network
    assert len(plans[3000].probes) == 31 and plans[3000].fits == (0, 499, 999, 1499, 1999, 2499, 2999)  # all of it
    assert plans[3000].skipped_probes == () and plans[3000].skipped_fits == ()
