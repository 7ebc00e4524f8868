"""The committed demo (results/demo) is what `plab demo` makes today: its runs are the conditions,
seeds and settings of configs/demo_gridworld.yaml, trained as populations, and the current code
computes the same per-epoch numbers as the committed CSVs (the first round and the first epoch
after the first permutation of one baseline and one specnorm seed, trained alone, bit for bit as
written to metrics.csv and diagnostics.csv). When either fails, the committed demo no longer shows what the code does:
regenerate it (REFERENCE.md: the commands) and docs/demo.md with `plab claims docs/demo_claims.yaml`."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import yaml

from plasticity_lab.config import RunConfig, load_study
from plasticity_lab.experiment.checkpoint import config_mismatch
from plasticity_lab.experiment.runner import Run
from tests.conftest import interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")  # as the sweep's children ran (--threads 1 with 2 workers)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "results" / "demo"
CONFIG = REPO / "configs" / "demo_gridworld.yaml"
EPOCHS = 26
"""Round 1 (epochs 0-24: six test evaluations, the probes of epochs 0 and 24) and epoch 25, the
first on the second permutation: training, evaluation, diagnostics and the shift, ~15 s on one core."""
TIMING = {"wall_time", "steps_per_s", "probe_seconds"}
"""Columns that measure the machine, not the run."""


def seeds_of(condition: str) -> list[int]:
    return sorted(int(d.name.removeprefix("seed_")) for d in (DEMO / condition).glob("seed_*"))


def committed_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def written_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_committed_demo_runs_are_the_configs_protocol():
    """Every condition of the config with num_sessions seeds, each condition's seeds one population,
    each run with the settings that decide its results as the config resolves them now."""
    study = load_study(CONFIG)
    experiment = study.base.experiment
    assert sorted(d.name for d in DEMO.iterdir() if any(d.glob("seed_*"))) == sorted(study.conditions)
    defaults = RunConfig().to_yaml_dict()
    for condition in study.conditions:
        assert seeds_of(condition) == list(range(experiment.num_sessions)), condition
        current = study.condition(condition).to_yaml_dict()
        for seed in seeds_of(condition):
            run = DEMO / condition / f"seed_{seed}"
            assert (run / "DONE").is_file(), run
            saved = yaml.safe_load((run / "config.yaml").read_text())
            assert config_mismatch(saved, current, defaults, where=str(run / "config.yaml")) is None
            assert saved["diagnostics"] == current["diagnostics"], run  # the probes' CSV is compared below
            (invocation,) = json.loads((run / "run.json").read_text())["invocations"]
            assert invocation["population"] == experiment.num_sessions, run
    declared = yaml.safe_load((DEMO / "config.yaml").read_text())
    declared.pop("source")  # where the config file was read from
    assert declared == study.base.to_yaml_dict()  # conditions, num_sessions, population, analysis plan, ...


@pytest.mark.parametrize(("condition", "seed"), [("baseline", 0), ("specnorm", 11)])
def test_current_code_reproduces_the_committed_demos_first_epochs(tmp_path, condition, seed):
    """One committed seed trained alone (a member of a population is its single run, bit for
    bit: DESIGN.md section 8) for the first EPOCHS epochs of the config's real schedule, stopped
    there, against its committed CSVs' first rows: every column but the timings equal as written."""
    run = Run(load_study(CONFIG).condition(condition), tmp_path, seed, device="cpu")
    interrupt_at(run, EPOCHS)
    for name in ("metrics.csv", "diagnostics.csv"):
        new = written_rows(tmp_path / name)
        old = [r for r in committed_rows(DEMO / condition / f"seed_{seed}" / f"{name}.gz") if int(r["epoch"]) < EPOCHS]
        assert [r["epoch"] for r in new] == [r["epoch"] for r in old], name
        assert set(new[0]) == set(old[0]), name
        for a, b in zip(new, old):
            differ = {k: (a[k], b[k]) for k in a if k not in TIMING and a[k] != b[k]}
            assert not differ, f"{condition} seed {seed}, {name}, epoch {a['epoch']}: now vs committed {differ}"


def test_committed_comparisons_are_the_report_of_the_committed_runs():
    """results/demo/comparisons.csv (which `plab demo` prints from and docs/demo.md is generated
    from) is what plab report makes of the committed runs with the declared analysis plan."""
    from plasticity_lab.analysis.aggregate import compare, open_study
    from plasticity_lab.analysis.report import analysis_plan, comparisons_frame

    study = open_study(DEMO, None, None, False)
    plan, _ = analysis_plan(study)
    made = comparisons_frame(study, compare(study, plan)).to_csv(index=False, float_format="%.6g")
    assert made == (DEMO / "comparisons.csv").read_text(), "run: plab report results/demo --in-place"
