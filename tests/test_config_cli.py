"""Config validation and CLI behaviour on bad input: one line naming file and key, exit 2, no run dir."""

from __future__ import annotations

import pytest

from plasticity_lab.cli import main, train_main
from plasticity_lab.config import ConfigError, load_study


def run_train(args, capsys):
    code = train_main(args)
    err = capsys.readouterr().err.strip()
    return code, err


BAD = [
    ({"ppo_trainer": {"num_epochs": -5}}, "ppo_trainer.num_epochs"),
    ({"ppo_trainer": {"shift_points": [3, 50]}}, "shift point 50"),
    ({"ppo_trainer": {"batch_size": 512}}, "larger than buffer_size"),
    ({"ppo_trainer": {"batch_size": 1}}, "ppo_trainer.batch_size"),
    ({"ppo_trainer": {"batch_size": 48}}, "must be a multiple of batch_size"),
    ({"ppo_trainer": {"adam_betas": [1.0, 0.999]}}, "adam_betas"),
    ({"environment": {"name": "gridworld", "task": "gather_5", "grid_size": 3}, "model": {"enc_type": "mlp"}}, "environment.grid_size"),
    ({"ppo_trainer": {"lr": "fast"}}, "ppo_trainer.lr"),
    ({"ppo_trainer": {"nonsense": 1}}, "ppo_trainer.nonsense: unknown key"),
    ({"environment": {"task": "pong_10"}}, "environment.task"),
    ({"environment": {"shift_type": "rotate"}}, "environment.shift_type"),
    ({"model": {"activation": "swish"}}, "model.activation"),
    ({"experiment": {"conditions": {"x": {"model.activation": "swish"}}}}, "experiment.conditions.x -> model.activation"),
    ({"experiment": {"conditions": {"x": {"nosection.a": 1}}}}, "nosection.a: unknown section"),
    ({"experiment": {"conditions": {"x": {"interventions.magic": {}}}}}, "method 'magic' is not implemented"),
    ({"analysis": {"final_window": 0}}, "analysis.final_window: Input should be greater than or equal to 1"),
    ({"analysis": {"primary": "score"}}, "analysis.primary: allowed: 'test_r', 'train_r', 'dead_units' or 'dormant_units'"),
    ({"analysis": {"equivalence_margin": 1.5}}, "analysis.equivalence_margin: Input should be less than 1"),
    ({"analysis": {"equivalence_margin": "10%"}}, "analysis.equivalence_margin: Input should be a valid number"),
    ({"analysis": {"alpha": 0.5}}, "analysis.alpha"),
    ({"analysis": {"margin": 0.1}}, "analysis.margin: unknown key"),
    ({"experiment": {"conditions": {"x": {"analysis.final_window": 2}}}}, "analysis.final_window: holds for the whole study"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_values_exit_2_with_one_line_naming_file_and_key(extra, needle, write_config, tmp_path, capsys):
    cfg = write_config(extra)
    cond = list(extra.get("experiment", {}).get("conditions", {"baseline": 0}))[0]
    code, err = run_train(["-n", "x", "-p", str(cfg), "-c", cond, "-o", str(tmp_path / "out")], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and str(cfg) in err and needle in err, err
    assert not (tmp_path / "out").exists()


def test_missing_and_malformed_files(tmp_path, write_config, capsys):
    code, err = run_train(["-n", "x", "-p", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "file not found" in err
    cfg = write_config(text="experiment: [unclosed\n")
    code, err = run_train(["-n", "x", "-p", str(cfg), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "malformed YAML" in err and str(cfg) in err
    assert not (tmp_path / "out").exists()


def test_exponent_floats_without_a_dot_are_numbers(write_config):
    cfg = write_config(text=(write_config().read_text().replace("ppo_trainer:", "ppo_trainer:\n  lr: 5e-4", 1)), name="e.yaml")
    assert load_study(cfg).condition("baseline").ppo_trainer.lr == 0.0005


def test_unknown_condition_lists_allowed(write_config, tmp_path, capsys):
    code, err = run_train(["-n", "x", "-p", str(write_config()), "-c", "magic", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown condition 'magic'" in err and "baseline" in err
    assert not (tmp_path / "o").exists()


def test_conditions_resolve_from_a_fresh_copy():
    study = load_study("hyperparams_quick.yaml")
    assert study.condition("mish").model.activation == "mish"
    assert study.condition("specnorm").model.activation == "relu"  # no leak from mish
    assert study.condition("specnorm").model.spectral_norm == "encoder"
    assert study.condition("redo-reset").interventions["redo"]["tau"] == 0.025
    assert study.condition("baseline").interventions == {}
    cfg = study.condition("baseline")
    assert (cfg.ppo_trainer.num_epochs, cfg.ppo_trainer.shift_points, cfg.model.h_size, cfg.ppo_trainer.lr) == (
        3000, [1000, 2000], 256, 0.0005)


def test_quick_config_has_the_study_reports_seven_conditions():
    assert load_study("configs/hyperparams_quick.yaml").conditions == [
        "baseline", "leaky-relu", "mish", "layernorm", "rmsnorm", "redo-reset", "specnorm"]


def test_reference_config_resolves_every_condition():
    study = load_study("hyperparams.yaml")
    assert study.errors == {}
    assert study.condition("baseline").ppo_trainer.ent_coef == 0.02
    assert study.condition("ent-0.1").ppo_trainer.ent_coef == 0.1
    assert set(study.condition("ssp-6-ln").interventions) == {"soft_shrink_perturb"}
    assert study.condition("ssp-6-ln").model.norm == "layernorm"


def test_a_condition_naming_a_missing_method_fails_only_when_chosen(write_config, tmp_path, capsys):
    cfg = write_config({"experiment": {"conditions": {"baseline": {}, "future": {"interventions.not_yet": {}}}}})
    study = load_study(cfg)
    assert study.condition("baseline").interventions == {}
    with pytest.raises(ConfigError, match="method 'not_yet' is not implemented"):
        study.condition("future")
    code, err = run_train(["-n", "x", "-p", str(cfg), "-o", str(tmp_path / "o")], capsys)  # all conditions
    assert code == 2 and "not_yet" in err and not (tmp_path / "o").exists()


def test_two_optimiser_swaps_conflict(write_config, tmp_path, capsys):
    cfg = write_config({"experiment": {"conditions": {"x": {"interventions.trac": {}, "interventions.kron": {}}}}})
    code, err = run_train(["-n", "x", "-p", str(cfg), "-c", "x", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "x ->" in err and not (tmp_path / "o").exists()


def test_plab_train_is_the_same_command(write_config, tmp_path, capsys):
    code = main(["train", "-n", "x", "-p", str(write_config({"ppo_trainer": {"num_epochs": 0}})), "-o", str(tmp_path)])
    assert code == 2 and "num_epochs" in capsys.readouterr().err
