"""The benchmark configs hold the settings their comments attribute to a source: slippery ant's
conditions are loss-of-plasticity's (lop/rl/cfg/sant/*.yml run through lop/rl/run_ppo.py), the
continual-Atari numbers CleanRL's ppo_atari.py."""

from __future__ import annotations

import pytest

pytest.importorskip("mujoco")

from plasticity_lab.config import load_study  # noqa: E402
from plasticity_lab.interventions import TrainingPlan, build_interventions, resolve_optimizer  # noqa: E402
from plasticity_lab.nets import build_model  # noqa: E402

# condition -> (Adam betas, decoupled weight decay, coupled L2) of lop/rl/cfg/sant/<file>.yml:
# std.yml takes run_ppo.py's default betas (0.9, 0.999) and wd 0; torch Adam's weight_decay is L2
LOP_OPTIMISERS = {
    "baseline": ((0.9, 0.999), 0.0, 0.0),
    "ns": ((0.99, 0.99), 0.0, 0.0),
    "l2": ((0.99, 0.99), 0.0, 1e-3),
    "cbp": ((0.99, 0.99), 0.0, 1e-4),
}


@pytest.mark.parametrize("path", ["configs/slippery_ant.yaml", "configs/slippery_ant_cpu.yaml"])
def test_slippery_ant_conditions_are_loss_of_plasticitys(path):
    study = load_study(path)
    assert set(LOP_OPTIMISERS) <= set(study.conditions)
    for name, (betas, decoupled, coupled) in LOP_OPTIMISERS.items():
        cfg = study.condition(name)
        p = cfg.ppo_trainer
        assert (p.lr, p.value_coef, p.ent_coef, p.max_grad_norm) == (1e-4, 1.0, 0.0, 1e9)  # ppo.py: p_loss += v_loss
        model = build_model(cfg.model, 8, (105,), continuous=True)
        ivs = build_interventions(cfg.interventions, model, TrainingPlan.from_config(cfg))
        defaults = dict(lr=p.lr, betas=p.adam_betas, weight_decay=p.weight_decay)
        _, settings = resolve_optimizer(ivs, defaults)
        got = (tuple(settings["betas"]), settings["weight_decay"], settings.get("coupled_weight_decay", 0.0))
        assert got == (betas, decoupled, coupled), name
    cbp = study.condition("cbp").interventions["cbp"]  # cbp.yml: rr 1e-4, mt 10000; decay_rate 0.99; gnt.py adds 0
    assert (cbp["replacement_rate"], cbp["maturity_threshold"], cbp["decay"], cbp["bias_compensation"]) == (1e-4, 10000, 0.99, False)


@pytest.mark.parametrize("path", ["configs/atari_continual.yaml", "configs/atari_continual_cpu.yaml"])
def test_continual_atari_value_loss_weight_is_cleanrls(path):
    """ppo_atari.py: v_loss = 0.5 * mean squared error, times vf_coef 0.5: 0.25 x MSE."""
    pytest.importorskip("ale_py")
    p = load_study(path).condition("baseline").ppo_trainer
    assert p.value_coef == 0.5 * 0.5
    assert (p.lr, p.clip_param, p.ent_coef, p.max_grad_norm) == (2.5e-4, 0.1, 0.01, 0.5)
