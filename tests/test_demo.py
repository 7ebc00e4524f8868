"""`plab demo` end to end with one seed: sweep, report, printed tables."""

from plasticity_lab.cli import main


def test_demo_runs_every_condition_and_prints_the_tables(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    study = tmp_path / "results" / "demo"
    for cond in ("baseline", "reset-all", "ssp-ln", "l2-init", "redo"):
        assert (study / cond / "seed_0" / "DONE").exists()
        assert f"| {cond} |" in out
    assert "## Results" in out and "## Return at the end of each round" in out
    assert (study / "report.html").exists() and f"report: {study / 'report.html'}" in out
