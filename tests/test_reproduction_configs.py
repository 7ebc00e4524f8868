"""The two reproduction configs hold the reference code's protocol (awjuliani/deep-rl-plasticity
hyperparams.yaml and the constants of its trainer), and the study report's stated values."""

from __future__ import annotations

from plasticity_lab.config import load_study

REFERENCE_CONDITIONS = [
    "baseline", "reset-final", "inject", "reset-all", "crelu", "l2-norm", "layernorm", "sp-5-5", "ssp-6",
    "ent-0.1", "l2-init", "w2-init", "ssp-6-ln", "l2-init-ln", "redo-reset-10",
]


def reference_protocol(cfg) -> None:
    p, env = cfg.ppo_trainer, cfg.environment
    assert (env.name, env.task, env.shift_type, env.env_copies, env.time_limit) == ("procgen", "coinrun_100", "permute", 11, "terminal")
    assert (p.rollout, p.buffer_size, p.batch_size, p.num_passes) == ("episodes", 1024, 64, 3)
    assert (p.gamma, p.gae_lambda, p.clip_param, p.ent_coef, p.value_coef, p.max_grad_norm) == (0.99, 0.95, 0.2, 0.02, 0.5, 0.5)
    assert (p.test_interval, p.test_episodes, p.weight_decay, p.reset_optimizer_at_shift, p.precision) == (100, 50, 0.0, True, "fp32")
    assert (cfg.experiment.save_freq, cfg.experiment.num_sessions) == (1000, 1)
    assert (cfg.model.enc_type, cfg.model.activation, cfg.model.norm, cfg.model.spectral_norm) == ("conv64", "relu", "none", "none")


def test_reference_config_is_the_reference_protocol():
    study = load_study("hyperparams.yaml")
    assert study.errors == {} and study.conditions == REFERENCE_CONDITIONS
    base = study.condition("baseline")
    reference_protocol(base)
    assert base.ppo_trainer.num_epochs == 50000
    assert base.ppo_trainer.shift_points == list(range(5000, 50000, 5000))  # ten rounds
    assert (base.model.h_size, base.ppo_trainer.lr) == (256, 0.0005)


def test_reference_conditions_carry_the_reference_values():
    study = load_study("hyperparams.yaml")
    iv = {name: study.condition(name).interventions for name in study.conditions}
    assert iv["baseline"] == {} and iv["crelu"] == {} and iv["layernorm"] == {} and iv["ent-0.1"] == {}
    assert iv["reset-final"]["reset"]["parts"] == ["policy", "value"]
    assert iv["reset-all"]["reset"]["parts"] == ["encoder", "policy", "value"]
    assert set(iv["inject"]) == {"inject"}
    assert iv["l2-norm"]["l2"]["coef"] == 0.001  # AdamW weight decay
    sp = iv["sp-5-5"]["shrink_perturb"]
    assert (sp["shrink"], sp["perturb"], sp["parts"]) == (0.5, 0.5, ["encoder", "policy", "value"])
    for name in ("ssp-6", "ssp-6-ln"):
        ssp = iv[name]["soft_shrink_perturb"]
        assert (ssp["shrink"], ssp["perturb"], ssp["target"]) == (0.999999, 1e-6, "fresh")
    for name in ("l2-init", "l2-init-ln"):
        assert iv[name]["l2_init"] == {"coef": 0.01, "squared": False}
    assert iv["w2-init"]["w2_init"]["coef"] == 0.01
    redo = iv["redo-reset-10"]["redo"]
    assert (redo["tau"], redo["every"], redo["batch"]) == (0.025, 10, 64)
    assert study.condition("crelu").model.activation == "crelu"
    assert study.condition("ent-0.1").ppo_trainer.ent_coef == 0.1
    for name in ("layernorm", "ssp-6-ln", "l2-init-ln"):
        assert study.condition(name).model.norm == "layernorm"
    others = set(REFERENCE_CONDITIONS) - {"layernorm", "ssp-6-ln", "l2-init-ln"}
    assert all(study.condition(name).model.norm == "none" for name in others)


def test_quick_config_is_the_study_report_on_the_reference_protocol():
    study = load_study("hyperparams_quick.yaml")
    assert study.errors == {}
    base = study.condition("baseline")
    reference_protocol(base)
    p = base.ppo_trainer
    assert (p.num_epochs, p.shift_points, base.model.h_size, p.lr) == (3000, [1000, 2000], 256, 0.0005)
