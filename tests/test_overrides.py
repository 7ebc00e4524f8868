"""--set KEY=VALUE overrides and --grid expansion: parsing, validation errors naming the flag,
recording, application to every condition, and the resume check against changed values."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plasticity_lab.cli import main, train_main
from plasticity_lab.config import load_study, split_values

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = {"baseline": {}, "mish": {"model.activation": "mish"}, "redo": {"interventions.redo": {"every": 2, "tau": 0.5}}}


@pytest.fixture
def cfg(write_config) -> Path:
    return write_config({"experiment": {"conditions": CONDITIONS}})


def test_values_are_read_as_yaml_and_apply_to_every_condition(cfg):
    study = load_study(cfg, ["ppo_trainer.lr=1e-3", "diagnostics.enabled=false", "ppo_trainer.shift_points=[2, 4]",
                             "interventions.l2_init={coef: 0.5}", "model.h_size=48"])
    for name in CONDITIONS:
        c = study.condition(name)
        assert c.ppo_trainer.lr == 0.001 and c.diagnostics.enabled is False and c.ppo_trainer.shift_points == [2, 4]
        assert c.interventions["l2_init"]["coef"] == 0.5 and c.model.h_size == 48
    assert study.condition("mish").model.activation == "mish"  # the conditions still apply on top
    assert set(study.condition("redo").interventions) == {"l2_init", "redo"}
    assert study.base.experiment.overrides == ["ppo_trainer.lr=1e-3", "diagnostics.enabled=false",
                                               "ppo_trainer.shift_points=[2, 4]", "interventions.l2_init={coef: 0.5}",
                                               "model.h_size=48"]
    assert load_study(cfg).condition("baseline").ppo_trainer.lr == 0.0005  # the file itself is untouched


def test_a_condition_setting_the_same_key_wins_and_is_noted(cfg):
    study = load_study(cfg, ["model.activation=gelu"])
    assert study.condition("baseline").model.activation == "gelu"
    assert study.condition("mish").model.activation == "mish"
    assert study.shadowed() == ["note: condition mish sets model.activation itself, so --set model.activation does not apply to it"]


BAD_SETS = [
    (["ppo_trainer.lr=0"], "--set ppo_trainer.lr: Input should be greater than 0"),
    (["ppo_trainer.lr=fast"], "--set ppo_trainer.lr: Input should be a valid number"),
    (["ppo_trainer.num_epochs=2"], "--set ppo_trainer.num_epochs: shift point 3 must lie in (0, num_epochs=2)"),
    (["model.activation=swish"], "--set model.activation: allowed:"),
    (["ppo_trainer.nonsense=1"], "--set ppo_trainer.nonsense: unknown key"),
    (["nosection.a=1"], "--set nosection.a: unknown section"),
    (["ppo_trainer.lr"], "expected KEY=VALUE"),
    (["ppo_trainer.lr=[1"], "--set ppo_trainer.lr: malformed value"),
    (["experiment.conditions.x={}"], "--set experiment.conditions.x: cannot be set"),
    (["ppo_trainer.lr.x=1"], "--set ppo_trainer.lr.x:"),
    (["interventions.redo.tau=-1"], "--set interventions.redo.tau (condition baseline): Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize("sets,needle", BAD_SETS)
def test_bad_set_exits_2_with_one_line_naming_the_flag_and_key(sets, needle, cfg, tmp_path, capsys):
    code = train_main(["-n", "x", "-p", str(cfg), "-c", "baseline", "-o", str(tmp_path / "out"), "--set", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_grid_expands_conditions_with_readable_unique_names(cfg):
    study, made = load_study(cfg).with_grid(["interventions.redo.tau=0.0,0.1", "ppo_trainer.lr=1e-3,2e-3"], ["redo"])
    assert made == ["redo+tau=0.0+lr=1e-3", "redo+tau=0.0+lr=2e-3", "redo+tau=0.1+lr=1e-3", "redo+tau=0.1+lr=2e-3"]
    assert study.conditions == ["baseline", "mish", *made]  # the crossed condition is replaced
    c = study.condition("redo+tau=0.1+lr=2e-3")
    assert c.interventions["redo"] == {"every": 2, "tau": 0.1, "batch": 256} and c.ppo_trainer.lr == 0.002
    assert study.base.experiment.grid["redo+tau=0.1+lr=2e-3"].model_dump() == {
        "condition": "redo", "settings": {"interventions.redo.tau": 0.1, "ppo_trainer.lr": 0.002}}
    assert study.base.experiment.baseline == "baseline"  # not crossed: unchanged
    crossed, names = load_study(cfg).with_grid(["model.h_size=16,32"], ["baseline", "mish"])
    assert names == ["baseline+h_size=16", "baseline+h_size=32", "mish+h_size=16", "mish+h_size=32"]
    assert crossed.base.experiment.baseline == "baseline+h_size=16"  # the crossed baseline's first point
    same_tail, names = load_study(cfg).with_grid(["interventions.redo.tau=0.1", "interventions.cbp.tau=0.2"], ["mish"])
    assert names == ["mish+redo.tau=0.1+cbp.tau=0.2"]  # the shortest tails that tell the keys apart
    listed, names = load_study(cfg).with_grid(["ppo_trainer.shift_points=[2, 4],[3]"], ["baseline"])
    assert names == ["baseline+shift_points=2_4", "baseline+shift_points=3"]
    assert listed.condition(names[0]).ppo_trainer.shift_points == [2, 4]
    assert split_values("[1, 2],{a: 1, b: 2},'x,y'") == ["[1, 2]", "{a: 1, b: 2}", "'x,y'"]


@pytest.mark.parametrize("grid,needle", [
    (["interventions.redo.tau=-1,0.1"], "--grid interventions.redo.tau (condition redo+tau=-1): Input should be greater than or equal to 0"),
    (["model.h_size=16,16.0"], "--grid model.h_size: value 16.0 is listed twice"),
    (["model.h_size=16,"], "--grid model.h_size: empty value"),
    (["model.h_size=16", "model.h_size=32"], "--grid model.h_size: given twice"),
    (["experiment.save_freq=1,2"], "--grid experiment.save_freq: experiment settings cannot vary"),
    (["model.h_size=a b,a_b"], "both named 'redo+h_size=a_b'"),
])
def test_bad_grid_names_the_flag(grid, needle, cfg, tmp_path, capsys):
    code = main(["sweep", str(cfg), "--conditions", "redo", "--seeds", "1", "-o", str(tmp_path / "out"),
                 *(arg for g in grid for arg in ("--grid", g))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for metrics rows")


def read_rows(path: Path, drop: tuple[str, ...] = ("wall_time", "steps_per_s", "probe_seconds")) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(handle)]


def test_overrides_are_recorded_and_a_resume_with_other_values_is_refused(cfg, tmp_path, capsys):
    """Also: a budgeted diagnostics schedule (probes 0, 1, 2, 5 of 0, 1, 2, 3, 5; no fits) survives a
    SIGKILL and resume exactly (the plan depends on the config only, never on wall-clock time)."""
    values = ["ppo_trainer.lr=1e-3", "model.h_size=16", "diagnostics.budget=0.33"]
    args = ["-n", "t", "-p", str(cfg), "-c", "baseline", "-o", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--set", *values],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "results/t/baseline/seed_0"
    wait_rows(run / "metrics.csv", 3, proc)  # a checkpoint exists after epoch 1 (save_freq 2)
    proc.kill()
    proc.wait()
    plan_line = ("diagnostics: 4 of 5 probes and 0 of 4 trainability fits fit the budget of 33% of the training "
                 "time (estimated 31.3%); skipped probes after epochs 3; skipped fits after epochs 0, 2, 3, 5")
    assert plan_line in proc.stdout.read()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["ppo_trainer"]["lr"] == 0.001 and resolved["model"]["h_size"] == 16
    assert resolved["experiment"]["overrides"] == values
    assert json.loads((run / "run.json").read_text())["invocations"][0]["overrides"] == values
    before = (run / "metrics.csv").read_bytes()
    for other in (["--set", "ppo_trainer.lr=2e-3", *values[1:]], ["--set", *values[1:]]):
        assert train_main([*args, "-r", *other]) == 2
        err = capsys.readouterr().err
        assert "incompatible checkpoint: ppo_trainer.lr is" in err and "but 0.001 in the checkpoint" in err, err
        assert (run / "metrics.csv").read_bytes() == before
    assert train_main([*args, "-r", "--set", *values]) == 0  # the same values resume
    assert "[baseline/seed_0] diagnostics: 4 probes took" in capsys.readouterr().out
    assert [i["overrides"] for i in json.loads((run / "run.json").read_text())["invocations"]] == [values] * 2
    assert train_main([*args[:-1], str(tmp_path / "whole"), "--set", *values]) == 0
    whole = tmp_path / "whole/results/t/baseline/seed_0"
    assert read_rows(run / "metrics.csv") == read_rows(whole / "metrics.csv")
    assert [r["epoch"] for r in read_rows(run / "diagnostics.csv")] == ["0", "1", "2", "5"]
    assert read_rows(run / "diagnostics.csv") == read_rows(whole / "diagnostics.csv")


def test_sweep_freezes_overrides_and_grid_and_refuses_other_values_later(cfg, tmp_path, capsys):
    from plasticity_lab.experiment.sweep import sweep

    short = ["ppo_trainer.num_epochs=2", "ppo_trainer.shift_points=[1]", "diagnostics.enabled=false", "model.h_size=16"]
    states = sweep(cfg, conditions=["redo"], seeds=[0], workers=2, out_dir=tmp_path, overrides=short,
                   grid=["interventions.redo.tau=0.1,0.5"])
    assert [s.status for s in states] == ["done", "done"]
    root = tmp_path / "results" / cfg.stem
    frozen = load_study(root / "sweep_config.yaml")
    assert frozen.base.experiment.overrides == short and frozen.base.ppo_trainer.num_epochs == 2
    assert list(frozen.base.experiment.grid) == ["redo+tau=0.1", "redo+tau=0.5"]
    study_cfg = yaml.safe_load((root / "config.yaml").read_text())  # what plab report reads
    assert "redo+tau=0.5" in study_cfg["experiment"]["conditions"] and study_cfg["ppo_trainer"]["num_epochs"] == 2
    run_cfg = yaml.safe_load((root / "redo+tau=0.5/seed_0/config.yaml").read_text())
    assert run_cfg["interventions"]["redo"]["tau"] == 0.5 and run_cfg["model"]["h_size"] == 16
    assert run_cfg["experiment"]["grid"] == {"redo+tau=0.5": {"condition": "redo", "settings": {"interventions.redo.tau": 0.5}}}
    info = json.loads((root / "redo+tau=0.5/seed_0/run.json").read_text())
    assert info["invocations"][0]["overrides"] == short
    shutil.rmtree(root / "redo+tau=0.1/seed_0/checkpoints")
    capsys.readouterr()
    code = main(["sweep", str(cfg), "--conditions", "redo", "--seeds", "1", "-o", str(tmp_path),
                 "--grid", "interventions.redo.tau=0.1,0.5", "--set", *short[:-1], "model.h_size=8"])
    err = capsys.readouterr().err
    assert code == 2 and "was run with other settings: model.h_size is 8 now but 16 in its config.yaml" in err, err
    assert load_study(root / "sweep_config.yaml").base.model.h_size == 16  # nothing was rewritten
