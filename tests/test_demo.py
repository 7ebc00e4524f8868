"""`plab demo` end to end with one seed: the sweep (each condition's seeds as a population), the
report, and the lines it ends with (what it found, read from comparisons.csv, and where the report
is), in a new study directory."""

import re

from plasticity_lab.cli import main


def test_demo_runs_every_condition_and_ends_with_its_findings(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    (study,) = (tmp_path / "results").iterdir()  # a new demo-<date>-<time>, never the committed results/demo
    assert re.fullmatch(r"demo-\d{8}-\d{6}", study.name), study.name
    for cond in ("baseline", "reset-all", "specnorm", "l2-init"):
        assert (study / cond / "seed_0" / "DONE").exists()
    assert "4 populations 2 at a time" in (study / "sweep.log").read_text()
    tail = out[out.index("What the demo found"):].splitlines()
    assert tail[0].startswith("What the demo found (4 conditions x 1 seeds, ")
    assert tail[1].startswith("  plasticity loss  reset-all - baseline  ") and "(n = 1, " in tail[1]
    assert [line.split()[:4] for line in tail[2:4]] == [["mitigation", "specnorm", "-", "baseline"],
                                                       ["mitigation", "l2-init", "-", "baseline"]]
    assert tail[4:] == [f"Full report: {study / 'summary.md'} and {study / 'report.html'}"]
    assert "## Results" not in out and "| baseline |" not in out  # the report's tables stay in the report
    assert (study / "report.html").exists() and (study / "summary.md").exists()
