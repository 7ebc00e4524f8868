"""`plab demo` end to end with one seed: sweep, report, printed tables, in a new study directory."""

import re

from plasticity_lab.cli import main


def test_demo_runs_every_condition_and_prints_the_tables(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    (study,) = (tmp_path / "results").iterdir()  # a new demo-<date>-<time>, never the committed results/demo
    assert re.fullmatch(r"demo-\d{8}-\d{6}", study.name), study.name
    for cond in ("baseline", "reset-all", "specnorm", "l2-init"):
        assert (study / cond / "seed_0" / "DONE").exists()
        assert f"| {cond} |" in out
    assert "## Results" in out and "## Return at the end of each round" in out
    assert (study / "report.html").exists() and f"report: {study / 'report.html'}" in out
