"""`plab demo` end to end with one seed, on the demo's config cut to two rounds: the sweep (each
condition's seeds as a population), the report, and the lines it ends with (what it found, read
from comparisons.csv, and where the report is), in a new study directory. The demo's numbers at its
full length are tests/test_demo_reference.py's."""

import re

import yaml

from plasticity_lab import cli
from plasticity_lab.cli import main
from plasticity_lab.config import resolve_config_path


def test_demo_runs_every_condition_and_ends_with_its_findings(tmp_path, capsys, monkeypatch):
    raw = yaml.safe_load(resolve_config_path(cli.DEMO_CONFIG).read_text())
    raw["ppo_trainer"].update(num_epochs=50, shift_points=[25])
    short = tmp_path / "demo_gridworld.yaml"
    short.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(cli, "DEMO_CONFIG", str(short))
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
    assert sorted(line.split()[:4] for line in tail[2:4]) == [["mitigation", "l2-init", "-", "baseline"],
                                                             ["mitigation", "specnorm", "-", "baseline"]]
    assert tail[4:] == [f"Full report: {study / 'summary.md'} and {study / 'report.html'}"]
    assert "## Results" not in out and "| baseline |" not in out  # the report's tables stay in the report
    assert (study / "report.html").exists() and (study / "summary.md").exists()
