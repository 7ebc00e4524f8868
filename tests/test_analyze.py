"""`plab analyze`: feature analysis of a tiny finished study and of a run still in progress."""

from __future__ import annotations

import csv
import shutil

import pytest

from plasticity_lab.analysis.feature_analysis import SUMMARY_COLUMNS, analyze
from plasticity_lab.cli import train_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_analyze_finished_and_partial_runs(tmp_path, write_config, monkeypatch):
    cfg = write_config()
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 0
    study = tmp_path / "results" / "t"
    # a second condition whose run stopped during its second task: no DONE, no task_1.pt
    partial = study / "partial" / "seed_0"
    shutil.copytree(study / "baseline" / "seed_0", partial)
    (partial / "DONE").unlink()
    (partial / "checkpoints" / "task_1.pt").unlink()

    out = analyze(study, frames=64)

    assert out == study / "feature_analysis"
    for name in ("singular_value_spectrum_real.png", "activation_distribution.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == SUMMARY_COLUMNS
    keys = [(r["condition"], r["seed"], r["task"], r["checkpoint"]) for r in rows]
    assert keys == [
        ("baseline", "0", "0", "task_0"), ("baseline", "0", "1", "task_1"),
        ("partial", "0", "0", "task_0"), ("partial", "0", "1", "latest"),
    ]  # fmt: skip
    for row in rows:
        assert 0 <= float(row["dead_neurons_pct"]) <= 100
        assert 0 <= float(row["mean_activation_rate_pct"]) <= 100
        assert 1 <= float(row["effective_rank"]) <= 32 and 1 <= float(row["srank"]) <= 32
    # the partial run's latest checkpoint is the finished run's final network, on the same frames
    for column in SUMMARY_COLUMNS[4:]:
        assert rows[1][column] == rows[3][column]

    # a committed reference study is read-only: its analysis goes to reports/<name>/ instead
    (study / "REFERENCE.md").write_text("committed\n")
    shutil.rmtree(out)
    monkeypatch.chdir(tmp_path)
    assert analyze(study, frames=64).resolve() == tmp_path / "reports" / "t" / "feature_analysis"
    assert not (study / "feature_analysis").exists()
    with pytest.raises(ValueError, match="read-only"):
        analyze(study, frames=64, out=study / "mine")


def test_analyze_without_runs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no run directories"):
        analyze(tmp_path)
