"""plab claims: a document's claim and per-round tables are generated from comparisons.csv, with
claim verdicts that follow from its verdict column and intervals, and docs/findings.md is kept in
sync with the committed gridworld study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from plasticity_lab.analysis.claims import findings, render
from plasticity_lab.cli import main

REPO = Path(__file__).resolve().parents[1]


def row(condition, baseline, metric, role, verdict, diff, rel, p_holm=0.01, n=10):
    """A comparisons.csv row; intervals of +-0.1 (difference) and +-10 (percent) around the values."""
    return {"condition": condition, "baseline": baseline, "metric": metric, "role": role, "verdict": verdict,
            "n_pairs": n, "diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1, "p_holm": p_holm,
            "rel_diff_pct": rel, "rel_ci_low": rel - 10, "rel_ci_high": rel + 10}


ROWS = [
    row("a", "base", "test_r", "primary", "better", 0.5, 50.0),
    row("b", "base", "test_r", "primary", "inconclusive", 0.05, 5.0, p_holm=0.4),
    row("a", "base", "dead_units", "secondary", "better", -20.0, -40.0),
    row("base", "a", "test_r", "all pairs", "worse", -0.5, -33.3),
    row("base", "b", "test_r", "all pairs", "inconclusive", -0.05, -4.8, p_holm=0.4),
    row("a", "b", "test_r", "all pairs", "better", 0.45, 43.0),
    row("base", "ref", "test_r_round_1", "per round", "equivalent", 0.0, 0.0, p_holm=1.0),
    row("base", "ref", "test_r_round_2", "per round", "worse", -0.244845, -20.0),
]
CLAIMS = {
    "study": "study",
    "document": "doc.md",
    "tables": {
        "verdicts": {"kind": "claims", "note_header": "Elsewhere", "claims": [
            {"claim": "a +50%", "condition": "a", "expect": "better", "change": 50, "note": "not run"},
            {"claim": "a +100%", "condition": "a", "expect": "better", "change": 100},
            {"claim": "a hurts", "condition": "a", "expect": "worse"},
            {"claim": "b: no effect", "condition": "b", "expect": "equivalent"},
            {"claim": "a: -52% dead units", "condition": "a", "metric": "dead_units", "expect": "better", "change": -52},
            {"claim": "b beats a", "condition": "b", "against": "a", "expect": "better"},
            {"claim": "a is best", "condition": "a", "expect": "best"},
            {"claim": "b is best", "condition": "b", "expect": "best"},
        ]},
        "rounds": {"kind": "rounds", "metrics": ["test_r"]},
    },
}
DOC = """# Findings

Prose before, kept.

<!-- plab claims verdicts: generated, do not edit -->
stale table
<!-- end plab claims verdicts -->

Between, kept.

<!-- plab claims rounds -->
<!-- end plab claims rounds -->
"""


@pytest.fixture
def claims(tmp_path) -> Path:
    (tmp_path / "study").mkdir()
    pd.DataFrame(ROWS).to_csv(tmp_path / "study" / "comparisons.csv", index=False)
    (tmp_path / "doc.md").write_text(DOC)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(CLAIMS, sort_keys=False))
    return path


def table_rows(text: str, name: str) -> list[list[str]]:
    block = text.split(f"<!-- plab claims {name}")[1].split("-->\n", 1)[1].split(f"<!-- end plab claims {name}")[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in block.strip().splitlines()[2:]]


def test_claim_verdicts_follow_from_the_verdict_column_and_the_interval(claims):
    _, text = render(claims)
    rows = {r[0]: r for r in table_rows(text, "verdicts")}
    assert rows["a +50%"][-2:] == ["**holds**", "not run"]
    assert rows["a +50%"][2:6] == ["+0.50 [+0.40, +0.60]", "+50.0% [+40.0, +60.0]", "0.01", "better"]
    assert rows["a +100%"][-2] == "**direction holds, size differs**"  # +100 is outside [+40, +60]
    assert rows["a hurts"][-2] == "**contradicted**"
    assert rows["b: no effect"][-2] == "**inconclusive**"  # not significant is not "no effect"
    assert rows["a: -52% dead units"][-2] == "**direction holds, size differs**"
    assert rows["a: -52% dead units"][1] == "a vs base, dead_units (n = 10; secondary, Holm k=1)"


def test_pairs_are_read_from_either_side_and_best_needs_every_pair(claims):
    _, text = render(claims)
    rows = {r[0]: r for r in table_rows(text, "verdicts")}
    assert rows["b beats a"][1].startswith("b vs a, test_r") and rows["b beats a"][5] == "worse"
    assert rows["b beats a"][2] == "-0.45 [-0.55, -0.35]" and rows["b beats a"][-2] == "**contradicted**"
    assert rows["a is best"][-2] == "**holds**" and "better than base, b" in rows["a is best"][2]
    assert rows["b is best"][-2] == "**contradicted**"  # worse than a


def test_rounds_table_is_rounded_from_the_csv_not_by_hand(claims):
    _, text = render(claims)
    rows = table_rows(text, "rounds")
    assert rows[1] == ["2", "-0.24 [-0.34, -0.14]; p 0.01; worse"]  # -0.344845 rounds to -0.34, never -0.35
    assert rows[0][1].endswith("p 1; equivalent")


def test_check_reports_a_stale_document_and_update_keeps_the_prose(claims, capsys):
    assert main(["claims", str(claims), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert "stale table" in (claims.parent / "doc.md").read_text()
    assert main(["claims", str(claims)]) == 0
    text = (claims.parent / "doc.md").read_text()
    assert "stale table" not in text and "Prose before, kept." in text and "Between, kept." in text
    assert main(["claims", str(claims), "--check"]) == 0


def test_a_second_study_is_read_claim_by_claim_in_its_own_column(claims):
    """``also``: each claim read in another testbed's comparisons.csv, with its own verdict (rows
    read from the other side flipped); what that study declares but has not run is "not run yet",
    and the header says it is interim."""
    other = claims.parent / "other"
    other.mkdir()
    pd.DataFrame([row("a", "base", "test_r", "primary", "inconclusive", 0.1, 8.0, p_holm=0.3, n=20),
                  row("b", "base", "test_r", "primary", "better", 0.6, 60.0, p_holm=0.002, n=20),
                  row("base", "a", "test_r", "all pairs", "inconclusive", -0.1, -7.4, p_holm=0.3, n=20),
                  row("a", "b", "test_r", "all pairs", "better", 0.45, 43.0, p_holm=0.004, n=20),
                  row("base", "b", "test_r", "all pairs", "worse", -0.6, -37.5, p_holm=0.002, n=20)]
                 ).to_csv(other / "comparisons.csv", index=False)
    declared = {"experiment": {"baseline": "base", "conditions": {"base": {}, "a": {}, "b": {}, "d": {}}}}
    (other / "config.yaml").write_text(yaml.safe_dump(declared))
    spec = yaml.safe_load(claims.read_text())
    spec["tables"]["verdicts"]["also"] = {"study": "other", "header": "Testbed 3"}
    spec["tables"]["verdicts"]["claims"] += [
        {"claim": "c helps", "condition": "c", "expect": "better"},
        {"claim": "a: fewer dormant", "condition": "a", "metric": "dormant_units", "expect": "better"},
        {"claim": "d helps", "condition": "c", "against": "a", "expect": "better"}]
    spec["tables"]["verdicts"]["claims"][-1]["condition"] = "d"
    claims.write_text(yaml.safe_dump(spec))
    (claims.parent / "study" / "comparisons.csv").write_text(
        pd.concat([pd.read_csv(claims.parent / "study" / "comparisons.csv"),
                   pd.DataFrame([row("c", "base", "test_r", "primary", "better", 0.2, 20.0),
                                 row("d", "a", "test_r", "all pairs", "better", 0.2, 20.0),
                                 row("a", "base", "dormant_units", "secondary", "better", -5.0, -30.0)])]).to_csv(index=False))
    _, text = render(claims)
    header = text.split("<!-- plab claims verdicts")[1].split("-->\n", 1)[1].splitlines()[0]
    assert header.endswith("| Testbed 3 (interim: 3 of 4 declared conditions run; Holm over those) |")
    rows = {r[0]: r for r in table_rows(text, "verdicts")}
    assert rows["a +50%"][-2:] == ["not run", "+0.10 [+0.00, +0.20], +8.0% [-2.0, +18.0] (n = 20, p (Holm, k=2) 0.3): inconclusive; **inconclusive**"]
    assert rows["a +50%"][-3] == "**holds**"  # the first study's verdict is unchanged beside it
    # b vs a exists only as the all-pairs row a vs b: read from the other side, negated and reversed
    assert rows["b beats a"][-1].startswith("-0.45 [-0.55, -0.35]") and rows["b beats a"][-1].endswith("worse; **contradicted**")
    assert rows["b: no effect"][-1].endswith("better; **contradicted**")
    assert rows["c helps"][-1] == "not in this study"
    assert rows["d helps"][-1] == "not run yet"
    assert rows["a is best"][-1] == "not run yet (needs every condition)"
    assert rows["a: fewer dormant"][-1] == "dormant_units not measured"
    # once every declared condition has run, the header drops the interim note and "best" is read
    declared["experiment"]["conditions"].pop("d")
    (other / "config.yaml").write_text(yaml.safe_dump(declared))
    _, text = render(claims)
    rows = {r[0]: r for r in table_rows(text, "verdicts")}
    assert rows["a is best"][-1] == "better than b; inconclusive vs base (all pairs, Holm k=3); **inconclusive**"
    assert rows["b is best"][-1].endswith("**contradicted**")
    assert "interim" not in text


def test_a_missing_second_study_is_a_one_line_error(claims, capsys):
    spec = yaml.safe_load(claims.read_text())
    spec["tables"]["verdicts"]["also"] = {"study": "nowhere", "header": "Testbed 3"}
    claims.write_text(yaml.safe_dump(spec))
    assert main(["claims", str(claims)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tables.verdicts: also.study:" in err and "nowhere" in err, err


@pytest.mark.parametrize("change,needle", [
    ({"condition": "zzz"}, "tables.verdicts.claims[0]: comparisons.csv has no row of zzz vs the baseline on test_r"),
    ({"expect": "helps"}, "tables.verdicts.claims.0.expect"),
    ({"chnage": 5}, "tables.verdicts.claims.0.chnage"),
])
def test_a_bad_claim_is_a_one_line_error_naming_it(claims, capsys, change, needle):
    spec = yaml.safe_load(claims.read_text())
    spec["tables"]["verdicts"]["claims"][0].update(change)
    claims.write_text(yaml.safe_dump(spec))
    assert main(["claims", str(claims)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(claims) in err, err


def test_missing_markers_are_an_error(claims, capsys):
    (claims.parent / "doc.md").write_text("# no markers\n")
    assert main(["claims", str(claims)]) == 2
    assert "has no '<!-- plab claims verdicts ... -->'" in capsys.readouterr().err


@pytest.mark.parametrize("claims_file", sorted((REPO / "docs").glob("*claims.yaml")), ids=lambda p: p.name)
def test_documents_match_their_committed_studies(claims_file):
    """Every document table generated by `plab claims docs/<name>claims.yaml` (docs/findings.md's
    gridworld and MinAtar tables) is what the command makes from its committed study's
    comparisons.csv: no number or verdict there is typed by hand."""
    document, text = render(claims_file)
    assert document.read_text() == text, f"run: plab claims docs/{claims_file.name}"


def test_findings_are_lines_read_from_comparisons_csv(claims):
    """plab demo's last lines: the reference vs the baseline (the plasticity loss) first, then every
    other condition vs the baseline, each comparisons.csv row as it is (difference, change, n, p
    (Holm, k) and verdict)."""
    lines = findings(claims.parent / "study", "base", "b")
    assert lines == [
        "plasticity loss  b - base  +0.05 [-0.05, +0.15], +5.0% [-5.0, +15.0] (n = 10, p (Holm, k=2) 0.4): inconclusive"
        " -> not decided",
        "mitigation       a - base  +0.50 [+0.40, +0.60], +50.0% [+40.0, +60.0] (n = 10, p (Holm, k=2) 0.01): better",
    ]
    assert findings(claims.parent / "study", "base", "a")[0].endswith("better -> plasticity loss shown")


def test_a_findings_block_is_what_plab_demo_prints(claims):
    """kind findings: findings() against the baseline and reference the study's config.yaml declares,
    as a text block in the document."""
    (claims.parent / "study" / "config.yaml").write_text(yaml.safe_dump(
        {"experiment": {"baseline": "base", "reference": "a"}, "analysis": {"primary": "test_r"}}))
    spec = yaml.safe_load(claims.read_text())
    spec["tables"]["demo"] = {"kind": "findings"}
    claims.write_text(yaml.safe_dump(spec))
    (claims.parent / "doc.md").write_text(DOC + "\n<!-- plab claims demo -->\n<!-- end plab claims demo -->\n")
    _, text = render(claims)
    block = text.split("<!-- plab claims demo -->\n")[1].split("<!-- end plab claims demo -->")[0]
    assert block == "```text\n" + "\n".join(findings(claims.parent / "study")) + "\n```\n"
    assert findings(claims.parent / "study") == findings(claims.parent / "study", "base", "a", "test_r")
    assert block.splitlines()[1].startswith("plasticity loss  a - base  +0.50 [+0.40, +0.60]")
