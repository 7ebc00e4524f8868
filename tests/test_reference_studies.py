"""Committed reference studies (a REFERENCE.md marker) are read-only for train, sweep and demo,
and the demo's default output is a new directory that git ignores."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plasticity_lab.cli import main, train_main
from plasticity_lab.config import ConfigError, load_study
from plasticity_lab.experiment.study import REFERENCE_MARKER, new_study_name, plan_runs, study_dir

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones included) -> content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def reference_copy(tmp_path) -> Path:
    """A temp copy of the committed reference demo study (with its REFERENCE.md) as OUT/results/demo."""
    src = REPO / "results" / "demo"
    assert (src / REFERENCE_MARKER).is_file()
    dst = tmp_path / "out" / "results" / "demo"
    shutil.copytree(src, dst)
    return dst


def expect_refusal(code: int, capsys, study: Path, before: dict[str, str]) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(study) in err and REFERENCE_MARKER in err, err
    assert snapshot(study.parents[1]) == before  # nothing written, nothing changed


def test_train_sweep_and_demo_refuse_a_reference_study(reference_copy, write_config, capsys):
    out = reference_copy.parents[1]
    before = snapshot(out)
    cfg = write_config()
    expect_refusal(train_main(["-n", "demo", "-p", str(cfg), "-o", str(out)]), capsys, reference_copy, before)
    expect_refusal(train_main(["-n", "demo", "-p", str(cfg), "-o", str(out), "-r"]), capsys, reference_copy, before)
    expect_refusal(main(["train", "-n", "demo", "-p", str(cfg), "-o", str(out), "-c", "baseline"]), capsys, reference_copy, before)
    expect_refusal(main(["sweep", str(cfg), "--name", "demo", "-o", str(out), "--seeds", "1"]), capsys, reference_copy, before)
    expect_refusal(main(["demo", "--name", "demo", "-o", str(out), "--seeds", "1"]), capsys, reference_copy, before)


def test_a_study_without_the_marker_is_still_writable(reference_copy, write_config):
    """The refusal comes from the marker, not from the name or from existing files."""
    study = load_study(write_config())
    out = reference_copy.parents[1]
    new_seed = 99  # a seed the committed demo does not have (it has 0-11)
    assert not (reference_copy / "baseline" / f"seed_{new_seed}").exists()
    with pytest.raises(ConfigError, match=REFERENCE_MARKER):
        plan_runs(study, "demo", None, [new_seed], out, resume=False)
    (reference_copy / REFERENCE_MARKER).unlink()
    (spec,) = plan_runs(study, "demo", None, [new_seed], out, resume=False)
    assert spec.run_dir == reference_copy / "baseline" / f"seed_{new_seed}"


def test_default_study_names_are_new(tmp_path):
    first = new_study_name(tmp_path, "demo")
    assert re.fullmatch(r"demo-\d{8}-\d{6}", first)
    study_dir(tmp_path, first).mkdir(parents=True)
    second = new_study_name(tmp_path, "demo")
    assert second != first and not study_dir(tmp_path, second).exists()
    study_dir(tmp_path, second).mkdir(parents=True)
    assert new_study_name(tmp_path, "demo") not in (first, second)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def test_default_demo_directory_in_the_repository_is_git_ignored_and_untracked():
    if shutil.which("git") is None or git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    name = new_study_name(REPO, "demo")
    assert name != "demo" and not study_dir(REPO, name).exists()
    for rel in (f"results/{name}/baseline/seed_0/metrics.csv", f"results/{name}/report.html"):
        assert git("check-ignore", "-q", rel).returncode == 0, f"{rel} would not be ignored by git"
    assert git("ls-files", f"results/{name}").stdout == ""
    # while the committed demo is tracked: the reason it must never be written again
    assert "results/demo/REFERENCE.md" in git("ls-files", "results/demo").stdout.split()
