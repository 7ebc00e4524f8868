"""plasticity_lab.load_study (tidy frames), provenance (code version in run.json, refusal to pool
mixed runs), where plab report writes (--out, --in-place, reference studies) and plab power."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import plasticity_lab
from plasticity_lab.analysis.aggregate import compare, open_study
from plasticity_lab.analysis.frames import config_differences
from plasticity_lab.analysis.report import report
from plasticity_lab.cli import main
from plasticity_lab.config import ConfigError, StudyConfig
from plasticity_lab.experiment.study import REFERENCE_MARKER, RunSpec, prepare_run_dir
from tests.test_report import CODE, EPOCHS, constant, write_run, write_study

REPS = 200


def small_study(root: Path, seeds: int = 3) -> Path:
    write_study(root, ["baseline", "method"])
    for seed in range(seeds):
        write_run(root, "baseline", seed, constant(5.0 + 0.3 * seed), diagnostics=True)
        write_run(root, "method", seed, constant(6.0 + 0.2 * seed), diagnostics=True, dead=0.25)
    return root


def quiet_report(*args, **kwargs) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        return report(*args, reps=REPS, **kwargs)


# ------------------------------------------------------------------------------------- frames
def test_load_study_returns_tidy_frames(tmp_path):
    root = small_study(tmp_path / "s")
    data = plasticity_lab.load_study(root)
    assert data.conditions == ["baseline", "method"]
    metrics = data.metrics
    assert len(metrics) == 6 * EPOCHS and {"condition", "seed", "epoch", "task", "test_r", "dead_units"} <= set(metrics.columns)
    one = metrics[(metrics["condition"] == "method") & (metrics["seed"] == 1)]
    assert one["epoch"].tolist() == list(range(EPOCHS))
    assert one["dead_units"].unique().tolist() == [0.25]  # as logged (a fraction), not the report's percent
    assert one.loc[one["epoch"] == 0, "test_r"].item() == pytest.approx(6.2)
    assert one["test_r"].isna().sum() == EPOCHS - 9  # evaluated every 5 epochs, at round ends and the last epoch
    probes = data.diagnostics
    assert len(probes) == 6 * 3 and "dense/effective_rank" in probes.columns
    runs = data.runs.set_index(["condition", "seed"])
    assert runs.loc[("method", 2), "status"] == "done" and runs.loc[("method", 2), "epochs_logged"] == EPOCHS
    assert runs.loc[("method", 2), "code_version"] == "0123456789ab v0.1.0"
    assert runs.loc[("method", 2), "git_commit"] == CODE["git_commit"]
    assert runs.loc[("method", 2), "git_dirty"] == False  # noqa: E712 (a numpy bool; None would fail)
    assert runs.loc[("method", 2), "config_differences"] == []
    assert runs.loc[("method", 2), "commands"] == ["train.py -n s -p cfg.yaml -c method -s 2"]
    assert isinstance(runs.loc[("method", 2), "config"], dict)


def test_a_committed_study_may_store_its_per_epoch_csvs_gzipped(tmp_path):
    import gzip

    plain = plasticity_lab.load_study(small_study(tmp_path / "plain"))
    packed_root = small_study(tmp_path / "packed")
    for csv_path in list(packed_root.glob("*/seed_*/*.csv")):
        csv_path.with_name(csv_path.name + ".gz").write_bytes(gzip.compress(csv_path.read_bytes()))
        csv_path.unlink()
    packed = plasticity_lab.load_study(packed_root)
    pd.testing.assert_frame_equal(packed.metrics, plain.metrics)
    pd.testing.assert_frame_equal(packed.diagnostics, plain.diagnostics)


def test_report_and_notebook_share_one_loader(tmp_path):
    root = small_study(tmp_path / "s")
    data = plasticity_lab.load_study(root)
    study = open_study(data)
    finals = compare(study, reps=REPS).results["method"].final("test_r")
    by_hand = data.metrics[(data.metrics["condition"] == "method") & (data.metrics["epoch"] >= 25)].groupby("seed")["test_r"].mean()
    assert finals == pytest.approx(by_hand.to_dict())


# ------------------------------------------------------------------------------------- provenance
def test_prepare_run_dir_records_the_code_version(tmp_path):
    study = StudyConfig({"ppo_trainer": {"num_epochs": 4, "shift_points": [2]}})
    spec = RunSpec("s", "baseline", 0, study.condition("baseline"), tmp_path / "s" / "baseline" / "seed_0")
    prepare_run_dir(spec, [], "cpu")
    prepare_run_dir(spec, [], "cpu")  # a resume appends a second invocation
    invocations = json.loads((spec.run_dir / "run.json").read_text())["invocations"]
    assert len(invocations) == 2
    code = invocations[0]["code"]
    assert code["package_version"] == "0.1.0"
    assert re.fullmatch(r"[0-9a-f]{40}", code["git_commit"])  # the tests run from a git checkout
    assert isinstance(code["git_dirty"], bool)


def test_config_differences_beyond_the_condition_are_listed():
    study = {"experiment": {"conditions": {"baseline": {}, "wide": {"model.h_size": 512}}},
             "model": {"h_size": 256}, "ppo_trainer": {"num_epochs": 30, "shift_points": [10, 20], "lr": 0.001}}
    resolved = StudyConfig(json.loads(json.dumps(study))).condition("wide").to_yaml_dict()
    assert config_differences(study, "wide", resolved) == []
    resolved["ppo_trainer"]["lr"] = 0.002
    resolved["experiment"]["save_freq"] = 7  # checkpoint cadence changes no number
    resolved["run"] = {"seed": 3, "name": "x", "hooks": ["a"]}
    assert config_differences(study, "wide", resolved) == ["ppo_trainer.lr: 0.001 -> 0.002"]
    del resolved["ppo_trainer"]["lr"]
    assert config_differences(study, "wide", resolved) == ["ppo_trainer.lr: 0.001 in the study's config, absent from the run's"]


def test_runs_that_differ_are_not_pooled_without_allow_mixed(tmp_path):
    root = small_study(tmp_path / "s")
    write_run(root, "method", 3, constant(9.0), trainer={"lr": 0.01})
    with pytest.raises(ConfigError, match=r"method/seed_3: ppo_trainer.lr: .*-> 0.01.*--allow-mixed"):
        open_study(root)
    assert main(["report", str(root), "--reps", "50"]) == 2
    assert not (root / "summary.md").exists()  # refused before anything was written
    html = quiet_report(root, allow_mixed=True)
    summary = (html.parent / "summary.md").read_text()
    assert "Pooled despite these differences (--allow-mixed):" in summary and "- method/seed_3: ppo_trainer.lr" in summary


def test_runs_from_different_code_versions_are_not_pooled_without_allow_mixed(tmp_path):
    root = small_study(tmp_path / "s")
    write_run(root, "method", 3, constant(9.0), code={**CODE, "git_commit": "f" * 40})
    with pytest.raises(ConfigError, match="2 code versions"):
        open_study(root)
    study = open_study(root, allow_mixed=True)
    assert any(line.startswith("code version ffffffffffff v0.1.0: method/seed_3") for line in study.provenance)


def test_runs_without_a_code_version_are_reported_with_a_note(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    for seed in range(2):
        run = write_run(root, "baseline", seed, constant(1.0))
        (run / "run.json").write_text(json.dumps({"invocations": [{"command": "old", "device": "cpu"}]}))
    study = open_study(root)
    assert any("no run records its code version" in n for n in study.notes)
    write_run(root, "baseline", 2, constant(1.0))  # one run with a version among unknown ones: mixed
    with pytest.raises(ConfigError, match="code versions"):
        open_study(root)


# ------------------------------------------------------------------------------------- output
def test_report_of_a_reference_study_goes_elsewhere_unless_in_place(tmp_path, monkeypatch):
    root = small_study(tmp_path / "ref")
    (root / REFERENCE_MARKER).write_text("# Committed reference study\n")
    before = sorted(p.name for p in root.iterdir())
    monkeypatch.chdir(tmp_path)
    html = quiet_report(root)
    assert html.resolve() == (tmp_path / "reports" / "ref" / "report.html").resolve()
    assert (tmp_path / "reports" / "ref" / "comparisons.csv").exists()
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written into the reference study
    with pytest.raises(ConfigError, match="read-only"):
        quiet_report(tmp_path / "reports" / "ref", out=root)
    with pytest.raises(ConfigError, match="give one of them"):
        quiet_report(root, out=tmp_path / "x", in_place=True)
    assert quiet_report(root, in_place=True) == root / "report.html"
    assert (root / "summary.md").exists()


def test_report_out_writes_links_relative_to_the_output(tmp_path):
    root = small_study(tmp_path / "s")
    (root / "feature_analysis").mkdir()
    from PIL import Image

    Image.new("RGB", (60, 40), "steelblue").save(root / "feature_analysis" / "activation_distribution.png")
    html = quiet_report(root, out=tmp_path / "elsewhere")
    summary = (html.parent / "summary.md").read_text()
    assert "](comparison_figures/test_reward_comparison.png)" in summary
    assert "](../s/feature_analysis/activation_distribution.png)" in summary
    assert not (root / "summary.md").exists()


# ------------------------------------------------------------------------------------- power
def test_plab_power_prints_the_seeds_needed(tmp_path, capsys):
    root = small_study(tmp_path / "s", seeds=4)
    assert main(["power", str(root), "--effects", "10,50"]) == 0
    out = capsys.readouterr().out
    assert "| SD of per-seed differences from | Pairs | SD | seeds for 10% | 10%, Holm k=1 | seeds for 50% |" in out
    assert "| all conditions (pooled SD) | 4 |" in out
    assert main(["power", str(root), "--effects", "x"]) == 2
    assert main(["power", str(root), "--power", "1.5"]) == 2


def test_power_uses_the_spread_of_paired_differences(tmp_path):
    from plasticity_lab.analysis.aggregate import power_analysis
    from plasticity_lab.analysis.stats import seeds_needed

    root = small_study(tmp_path / "s", seeds=4)
    study = open_study(root)
    analysis = power_analysis(study, compare(study, reps=REPS), effects=(10.0,))
    d = pd.Series([6.0 + 0.2 * s - (5.0 + 0.3 * s) for s in range(4)])
    pooled = analysis.rows[0]
    assert pooled.sd == pytest.approx(d.std(ddof=1))
    base_mean = 5.0 + 0.3 * 1.5
    assert pooled.seeds[(10.0, False)] == seeds_needed(0.1 * base_mean, d.std(ddof=1)).seeds
    assert analysis.rows[1].sd > pooled.sd  # the planning value: an upper confidence bound


def test_experiment_reference_in_the_config_names_the_normalising_condition(tmp_path):
    root = small_study(tmp_path / "s")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["experiment"]["reference"] = "method"
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    study = open_study(root)
    assert study.reference == "method"
    assert compare(study, reps=REPS).results["baseline"].normalised.value == pytest.approx(5.3 / 6.2)
    assert StudyConfig(config).base.experiment.reference == "method"
