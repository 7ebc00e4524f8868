"""``plab claims``: a document's tables of claims and per-round numbers, generated from a study's
comparisons.csv and written between markers in the document, so that no number or verdict in it
is typed by hand (issue 19).

A claims file (YAML) names the study, the document and its tables; paths are relative to the
claims file. Each table ``NAME`` replaces the lines between ``<!-- plab claims NAME ... -->`` and
``<!-- end plab claims NAME -->`` in the document:

```yaml
study: ../results/gridworld_study
document: findings.md
tables:
  verdicts:
    kind: claims
    note_header: "Testbed 2"          # optional column, free text per claim
    also: {study: ../results/minatar_study, header: "MinAtar"}  # optional: the same claims read in a second study
    claims:
      - {claim: "Spectral norm +20% test reward", condition: specnorm, expect: better, change: 20}
      - {claim: "Fewer dead units", condition: specnorm, metric: dead_units, expect: better, change: -52}
      - {claim: "S&P + LN is best", condition: ssp-ln, expect: best}
      - {claim: "Plasticity loss", condition: baseline, against: reset-all, metric: test_r_round_10, expect: worse}
  rounds:
    kind: rounds
    metrics: [train_r, test_r]
  demo:
    kind: findings                    # the lines plab demo ends with (findings()), as a text block
```

A claim's verdict follows from the CSV's verdict column alone (analysis.verdicts.claim_verdict):
the claimed direction must be the comparison's verdict, and a claimed size (``change``, percent)
must lie in its 95% interval. ``also`` adds a last column with each claim read the same way in a
second study (another testbed), so two testbeds' verdicts stand side by side; a condition that
study declares but has not run yet is marked so, and the header says how many it has run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, ValidationError, model_validator

from plasticity_lab.analysis import verdicts
from plasticity_lab.config import ConfigError, Strict, load_yaml

COMPARISONS = "comparisons.csv"
STUDY_CONFIG = "config.yaml"
"""The study's config as plab report reads it (its declared conditions and baseline)."""
ROLE_ORDER = ("primary", "secondary", "per round", "all pairs")
"""The row a claim reads when a comparison appears in several roles: against the baseline first."""


class ClaimSpec(Strict):
    claim: str
    """The claim as stated (its source's words and numbers)."""
    condition: str
    metric: str = "test_r"
    """A comparisons.csv metric, e.g. test_r, dead_units, test_r_round_10."""
    against: str | None = None
    """Condition compared against (default: the study's baseline, or the reference for round rows)."""
    expect: Literal["better", "worse", "higher", "lower", "equivalent", "best"]
    change: float | None = None
    """Claimed change in percent of the compared-against condition's mean, checked against the interval."""
    note: str = ""
    """Free text for the table's last column (``note_header``)."""


class OtherStudy(Strict):
    study: str
    """Study directory holding comparisons.csv (its config.yaml names the declared conditions)."""
    header: str


class TableSpec(Strict):
    kind: Literal["claims", "rounds", "findings"]
    """claims: a table of claims; rounds: the per-round rows; findings: the lines plab demo ends with
    (:func:`findings`, against the study's baseline and reference on its primary metric), as a text block."""
    claims: list[ClaimSpec] = Field(default_factory=list)
    note_header: str = ""
    also: OtherStudy | None = None
    """kind claims: a last column with every claim read in this second study."""
    metrics: list[str] = Field(default_factory=lambda: ["train_r", "test_r"])
    """kind rounds: the per-round rows (``<metric>_round_K``) to tabulate, one column group each."""

    @model_validator(mode="after")
    def _also_only_for_claims(self) -> "TableSpec":
        if self.also is not None and self.kind != "claims":
            raise ValueError("also: only a claims table reads a second study")
        return self


@dataclass(frozen=True)
class Other:
    """The ``also`` study: its comparisons, declared conditions and baseline, and the conditions run."""
    table: pd.DataFrame
    declared: list[str]
    baseline: str
    ran: frozenset[str]


class ClaimsFile(Strict):
    study: str
    """Study directory holding comparisons.csv."""
    document: str
    tables: dict[str, TableSpec]


def load_claims(path: str | Path) -> tuple[ClaimsFile, Path]:
    """The validated claims file and its directory (paths in it are relative to that)."""
    raw = load_yaml(path)
    try:
        return ClaimsFile.model_validate(raw), Path(path).parent
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


# ------------------------------------------------------------------------------------- numbers as text
def _spec(metric: str) -> str:
    """Decimals that keep a metric's differences readable: returns 2, percentages 1, else 3 digits."""
    if metric.startswith(("test_r", "train_r")):
        return "+.2f"
    return "+.1f" if metric in ("dead_units", "dormant_units") else "+.3g"


def _interval(value: float, lo: float, hi: float, spec: str, unit: str = "") -> str:
    if not math.isfinite(value):
        return "n/a"
    inside = f"{format(lo, spec)}, {format(hi, spec)}" if math.isfinite(lo) and math.isfinite(hi) else "unbounded"
    return f"{format(value, spec)}{unit} [{inside}]"


def _sizes(row: pd.Series, metric: str) -> tuple[str, str]:
    """A comparison's difference and its change in percent, each with its 95% interval."""
    return (_interval(row["diff"], row["ci_low"], row["ci_high"], _spec(metric)),
            _interval(row["rel_diff_pct"], row["rel_ci_low"], row["rel_ci_high"], "+.1f", "%"))


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else format(value, ".2g")


# ------------------------------------------------------------------------------------- rows
def _row(table: pd.DataFrame, condition: str, against: str | None, metric: str, where: str) -> tuple[pd.Series, bool]:
    """The comparisons.csv row of ``condition`` vs ``against`` on ``metric`` and whether it is
    read from the other side (an all-pairs row of ``against`` vs ``condition``)."""
    rows = table[table["metric"] == metric]
    direct = rows[(rows["condition"] == condition) & ((rows["baseline"] == against) if against else rows["role"] != "all pairs")]
    if len(direct):
        return min((r for _, r in direct.iterrows()), key=lambda r: ROLE_ORDER.index(r["role"])), False
    reverse = rows[(rows["condition"] == against) & (rows["baseline"] == condition)] if against else rows.iloc[:0]
    if len(reverse):
        return reverse.iloc[0], True
    raise ConfigError(f"{where}: comparisons.csv has no row of {condition} vs {against or 'the baseline'} on {metric}")


def _flipped(row: pd.Series) -> pd.Series:
    """An all-pairs row read from the other side: differences negated, the ratio inverted, the
    verdict reversed."""
    out = row.copy()
    out["condition"], out["baseline"] = row["baseline"], row["condition"]
    out["diff"], out["ci_low"], out["ci_high"] = -row["diff"], -row["ci_high"], -row["ci_low"]
    ratio = [1 + row[k] / 100 for k in ("rel_diff_pct", "rel_ci_high", "rel_ci_low")]
    out["rel_diff_pct"], out["rel_ci_low"], out["rel_ci_high"] = ((1 / r - 1) * 100 if r > 0 else math.nan for r in ratio)
    out["verdict"] = verdicts.OPPOSITE.get(row["verdict"], row["verdict"])
    return out


def _compared(table: pd.DataFrame, claim: ClaimSpec, where: str) -> tuple[pd.Series, str]:
    """The comparisons.csv row a (non-best) claim reads, oriented as the claim, and its verdict."""
    row, flip = _row(table, claim.condition, claim.against, claim.metric, where)
    if flip:
        row = _flipped(row)
    return row, verdicts.claim_verdict(claim.expect, row["verdict"], claim.change, row["rel_ci_low"], row["rel_ci_high"])


def _claim_row(table: pd.DataFrame, claim: ClaimSpec, where: str) -> list[str]:
    if claim.expect == "best":
        summary, found, k = _best(table, claim, where)
        return [claim.claim, f"{claim.condition} vs every other condition, {claim.metric} (all pairs, Holm k={k})",
                summary, "", "", "", f"**{found}**"]
    row, found = _compared(table, claim, where)
    role = f"{row['role']}, Holm k={_family(table, row)}"
    return [
        claim.claim, f"{row['condition']} vs {row['baseline']}, {row['metric']} (n = {row['n_pairs']}; {role})",
        *_sizes(row, claim.metric), _p(row["p_holm"]), row["verdict"], f"**{found}**",
    ]


def _other_cell(other: Other, claim: ClaimSpec, where: str) -> str:
    """One claim read in the second study, in one cell: the comparison, its verdict and the claim's."""
    table = other.table
    wanted = [claim.condition, claim.against or other.baseline]
    if any(c not in other.declared for c in wanted):
        return "not in this study"
    if claim.expect == "best":
        if set(other.declared) - other.ran:
            return "not run yet (needs every condition)"
        summary, found, k = _best(table, claim, where)
        return f"{summary} (all pairs, Holm k={k}); **{found}**"
    if any(c not in other.ran for c in wanted):
        return "not run yet"
    try:  # both conditions ran, so a comparison _row cannot find is one this study does not make
        row, found = _compared(table, claim, where)
    except ConfigError:
        return f"{claim.metric} not measured"
    return f"{comparison_text(table, row)}; **{found}**"


def comparison_text(table: pd.DataFrame, row: pd.Series) -> str:
    """One comparisons.csv row in one phrase: its difference and change with their 95% intervals,
    n, p (Holm, with the family it was adjusted over) and the verdict."""
    diff, change = _sizes(row, row["metric"])
    return (f"{diff}, {change} (n = {row['n_pairs']}, p (Holm, k={_family(table, row)}) {_p(row['p_holm'])}): "
            f"{row['verdict']}")


def _family(table: pd.DataFrame, row: pd.Series) -> int:
    """Rows the row's Holm adjustment ran over (its role and metric; a round row's rounds)."""
    same = table[table["role"] == row["role"]]
    if row["role"] == "per round":
        return int(same["metric"].str.startswith(re.sub(r"_round_\d+$", "_round_", row["metric"])).sum())
    return int((same["metric"] == row["metric"]).sum())


def _best(table: pd.DataFrame, claim: ClaimSpec, where: str) -> tuple[str, str, int]:
    """Whether ``claim.condition`` is best: a summary of its pairwise verdicts, the claim's verdict
    and the number of pairs the Holm adjustment ran over."""
    pairs = table[(table["role"] == "all pairs") & (table["metric"] == claim.metric)]
    found: dict[str, str] = {}
    for _, row in pairs.iterrows():
        if row["condition"] == claim.condition:
            found[row["baseline"]] = row["verdict"]
        elif row["baseline"] == claim.condition:
            found[row["condition"]] = verdicts.OPPOSITE.get(row["verdict"], row["verdict"])
    if not found:
        raise ConfigError(f"{where}: comparisons.csv has no all-pairs rows of {claim.condition} on {claim.metric}")
    groups: dict[str, list[str]] = {}
    for other, verdict in found.items():
        groups.setdefault(verdict, []).append(other)
    phrase = {"better": "better than", "worse": "worse than", "equivalent": "equivalent to", "inconclusive": "inconclusive vs"}
    summary = "; ".join(f"{phrase.get(v, v)} {', '.join(others)}" for v, others in sorted(groups.items()))
    return summary, verdicts.best(claim.condition, found), len(pairs)


def claims_table(table: pd.DataFrame, spec: TableSpec, where: str, other: Other | None = None) -> str:
    """``other``: the ``also`` study, read claim by claim into a last column."""
    header = ["Claim", "Comparison (n; role, Holm family)", "Difference [95% CI]", "Change [95% CI]", "p (Holm)",
              "Verdict (comparisons.csv)", "Claim"]
    rows = [_claim_row(table, claim, f"{where}.claims[{i}]") for i, claim in enumerate(spec.claims)]
    if spec.note_header:
        header.append(spec.note_header)
        rows = [row + [claim.note] for row, claim in zip(rows, spec.claims)]
    if spec.also is not None and other is not None:
        run = [c for c in other.declared if c in other.ran]
        header.append(spec.also.header + ("" if len(run) == len(other.declared) else
                                          f" (interim: {len(run)} of {len(other.declared)} declared conditions run; Holm over those)"))
        rows = [row + [_other_cell(other, claim, f"{where}.also, claims[{i}]")]
                for i, (row, claim) in enumerate(zip(rows, spec.claims))]
    return _markdown(header, rows)


def rounds_table(table: pd.DataFrame, spec: TableSpec, where: str) -> str:
    """One row per round: each metric's per-round difference [95% CI], p (Holm over the rounds) and verdict."""
    per = {}
    for metric in spec.metrics:
        rows = table[(table["role"] == "per round") & table["metric"].str.fullmatch(rf"{re.escape(metric)}_round_\d+")]
        if not len(rows):
            raise ConfigError(f"{where}: comparisons.csv has no per-round rows of {metric}")
        per[metric] = {int(m.rsplit("_", 1)[1]): r for m, (_, r) in zip(rows["metric"], rows.iterrows())}
    rounds = sorted(set().union(*per.values()))
    first = next(iter(per.values()))[rounds[0]]
    header = ["round"] + [f"{metric}: {first['condition']} - {first['baseline']} [95% CI]; p (Holm); verdict" for metric in spec.metrics]
    body = []
    for k in rounds:
        cells = []
        for metric in spec.metrics:
            r = per[metric].get(k)
            cells.append("-" if r is None else f"{_interval(r['diff'], r['ci_low'], r['ci_high'], _spec(metric))}; "
                                               f"p {_p(r['p_holm'])}; {r['verdict']}")
        body.append([str(k), *cells])
    return _markdown(header, body)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- findings in lines
PLASTICITY = {"holds": "plasticity loss shown", "inconclusive": "not decided", "contradicted": "no plasticity loss"}
"""The reference (a fresh network each task) vs the baseline, read as the plasticity-loss claim."""


def findings(study: str | Path, baseline: str | None = None, reference: str | None = None, metric: str | None = None) -> list[str]:
    """What a study found, in a few lines for the terminal (``plab demo``) and docs/demo.md: the
    reference (a fresh network, e.g. reset-all) vs the baseline, which measures the plasticity loss,
    then every other condition vs the baseline, each on ``metric`` (its final value) and read from
    the study's comparisons.csv as plab report wrote it (nothing recomputed). Baseline, reference and
    metric default to what the study's config.yaml declares (experiment.baseline, .reference,
    analysis.primary)."""
    study = Path(study)
    table = _comparisons(str(study), study)
    declared = _roles(study)
    baseline, reference, metric = baseline or declared[0], reference or declared[1], metric or declared[2]
    rows = table[(table["metric"] == metric) & (table["baseline"] == baseline) & (table["role"] != "all pairs")]
    conditions = sorted(dict.fromkeys(rows["condition"]), key=lambda c: c != reference)  # the report's order, reference first
    width = max((len(c) for c in conditions), default=0) + len(baseline) + 3
    lines = []
    for condition in conditions:
        row, _ = _row(table, condition, baseline, metric, str(study))
        text = f"{condition} - {baseline}".ljust(width) + f"  {comparison_text(table, row)}"
        if condition == reference:
            lines.append(f"plasticity loss  {text} -> {PLASTICITY[verdicts.claim_verdict(verdicts.BETTER, row['verdict'])]}")
        else:
            lines.append(f"mitigation       {text}")
    return lines


# ------------------------------------------------------------------------------------- document
def render(path: str | Path) -> tuple[Path, str]:
    """The document named by the claims file at ``path`` and its new text (every table regenerated)."""
    spec, base = load_claims(path)
    table = _comparisons(f"{path}: study", base / spec.study)
    others = {name: _other_study(f"{path}: tables.{name}", base, t.also) for name, t in spec.tables.items() if t.also is not None}
    document = base / spec.document
    if not document.exists():
        raise ConfigError(f"{path}: document: {document} not found")
    text = document.read_text()
    for name, table_spec in spec.tables.items():
        where = f"{path}: tables.{name}"
        if table_spec.kind == "claims":
            generated = claims_table(table, table_spec, where, others.get(name))
        elif table_spec.kind == "findings":
            generated = "```text\n" + "\n".join(findings(base / spec.study)) + "\n```"
        else:
            generated = rounds_table(table, table_spec, where)
        begin = re.compile(rf"^<!-- plab claims {re.escape(name)}\b.*?-->\n", re.M)
        end = f"<!-- end plab claims {name} -->"
        found = begin.search(text)
        if found is None or end not in text[found.end():]:
            raise ConfigError(f"{where}: {document} has no '<!-- plab claims {name} ... -->' ... '{end}' markers")
        stop = text.index(end, found.end())
        text = text[: found.end()] + generated + "\n" + text[stop:]
    return document, text


def _comparisons(where: str, study: Path) -> pd.DataFrame:
    csv = study / COMPARISONS
    if not csv.exists():
        raise ConfigError(f"{where}: {csv} not found (run plab report on {study} first)")
    return pd.read_csv(csv)


def _roles(study: Path) -> tuple[str, str | None, str]:
    """The baseline, reference and primary metric the study's config.yaml declares (defaults where
    it has none)."""
    config = study / STUDY_CONFIG
    raw = load_yaml(config) if config.exists() else {}
    experiment, analysis = raw.get("experiment") or {}, raw.get("analysis") or {}
    return experiment.get("baseline", "baseline"), experiment.get("reference"), analysis.get("primary", "test_r")


def _other_study(where: str, base: Path, also: OtherStudy) -> Other:
    """The ``also`` study: its comparisons, the conditions and baseline its config.yaml declares
    (those in the CSV where it has none) and the conditions with rows in the CSV."""
    study = base / also.study
    table = _comparisons(f"{where}: also.study", study)
    ran = frozenset(table["condition"]) | frozenset(table["baseline"])
    config = study / STUDY_CONFIG
    experiment = (load_yaml(config).get("experiment") or {}) if config.exists() else {}
    declared = list(experiment.get("conditions") or dict.fromkeys([*table["baseline"], *table["condition"]]))
    primary = table.loc[table["role"] == "primary", "baseline"]
    baseline = experiment.get("baseline") or (primary.iloc[0] if len(primary) else "baseline")
    return Other(table, declared, baseline, ran)


def update(path: str | Path, check: bool = False) -> tuple[Path, bool]:
    """Regenerate the document's tables; with ``check``, only report whether they are up to date.
    Returns the document and whether it was (or would be) changed."""
    document, text = render(path)
    changed = document.read_text() != text
    if changed and not check:
        document.write_text(text)
    return document, changed
