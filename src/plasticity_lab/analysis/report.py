"""``plab report``: figures, ``summary.md`` and one self-contained ``report.html`` for a study.

Both documents are rendered from the same sections (paragraphs, bullet lists, tables, figures),
so the Markdown and the HTML never disagree. The HTML embeds its figures as base64 PNG data URIs
and has no script or external stylesheet: it opens offline, attached to a mail or an issue.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

from plasticity_lab.analysis.aggregate import (
    Comparison,
    Estimate,
    Study,
    compare,
    epoch_range,
    load_study,
    relative_to_first_round,
)
from plasticity_lab.analysis.figures import BAND_REPS, label, write_figures
from plasticity_lab.config import ConfigError


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Code:
    text: str


@dataclass
class Images:
    figures: dict[str, Path]
    grid: bool = False
    """Small multiples side by side in the HTML (one per row otherwise)."""


Block = str | list[str] | Table | Code | Images


def report(
    results_dir: str | Path,
    *,
    final_window: int | None = None,
    baseline: str | None = None,
    reps: int = 2000,
    smooth: int | None = None,
) -> Path:
    """Write comparison_figures/, summary.md and report.html into ``results_dir``; returns report.html.

    ``final_window``: last test evaluations averaged for final values (default: the last 10%).
    ``baseline``: condition compared against (default: config.yaml's experiment.baseline).
    ``reps``: bootstrap resamples of every CI. ``smooth``: curve smoothing window in epochs
    (default: 1% of the planned epochs). Notes on incomplete or mismatched runs are printed too.
    """
    for flag, value in (("--final-window", final_window), ("--reps", reps), ("--smooth", smooth)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be a whole number >= 1")
    root = Path(results_dir)
    study = load_study(root, baseline)
    comparison = compare(study, final_window=final_window, reps=reps)
    smooth_epochs = smooth if smooth is not None else max(1, study.num_epochs // 100)
    figures = write_figures(study, comparison, root / "comparison_figures", smooth_epochs=smooth_epochs, reps=reps)
    sections = _sections(study, comparison, figures, reps)
    title = f"Study report: {root.resolve().name}"
    (root / "summary.md").write_text(_markdown(title, sections, root))
    commands = ("Commands that produced the runs", [_commands_table(study)])
    config = ("Resolved config (config.yaml)", [Code(study.config_text)])
    html_path = root / "report.html"
    html_path.write_text(_html(title, [*sections, commands, config]))
    for note in comparison.notes:
        print(f"note: {note}")
    return html_path


# ------------------------------------------------------------------------------------- sections
def _num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _with_ci(estimate: Estimate | None, spec: str = ".2f") -> str:
    if estimate is None:
        return "n/a"
    if not math.isfinite(estimate.lo):
        return f"{_num(estimate.value, spec)} (no CI: 1 seed)"
    return f"{_num(estimate.value, spec)} [{_num(estimate.lo, spec)}, {_num(estimate.hi, spec)}]"


def _window_text(study: Study, comparison: Comparison) -> str:
    start, end = comparison.window
    if end <= start:
        return "No final values yet: no run has a test evaluation to compare."
    planned = "" if end == study.num_epochs else f" (the planned length is {study.num_epochs} epochs)"
    return (
        f"Final values are means over {epoch_range(start, end)}{planned}: test return over the test evaluations "
        "in that range, every other metric over the same epochs, then averaged over seeds."
    )


def _sections(study: Study, comparison: Comparison, figures: dict[str, Path], reps: int) -> list[tuple[str, list[Block]]]:
    intro = [
        f"Results directory: {study.root.resolve()}. Baseline: {study.baseline}. Shift points: "
        f"{', '.join(map(str, study.shift_points)) or 'none'}. Planned epochs: {study.num_epochs}.",
        _window_text(study, comparison),
        f"Confidence intervals are 95% bootstrap intervals over seeds ({reps} resamples; curve bands "
        f"{min(reps, BAND_REPS)}); IQM and P(improvement) use rliable's stratified bootstrap.",
    ]
    sections: list[tuple[str, list[Block]]] = [("Overview", intro)]
    if comparison.notes:
        sections.append(("Notes: incomplete, mismatched or excluded runs", [comparison.notes]))

    def pick(*names: str) -> dict[str, Path]:
        return {caption: path for caption, path in figures.items() if path.name in names}

    study_figures = ("test_reward_comparison.png", "dead_units_comparison.png", "summary_comparison.png")
    sections += [
        ("Results", [_results_table(study, comparison), Images(pick(*study_figures))]),
        ("Return at the end of each round",
         [_rounds_table(comparison) if comparison.rounds and comparison.round_ends else "No round has ended within the compared epochs yet."]),
        ("Plasticity metrics vs. final test return", [_correlation_table(comparison), Images(pick("correlations.png"))]),
        ("Every logged metric", [Images(pick(*(p.name for p in figures.values() if p.name.startswith("metric_"))), grid=True)]),
        ("Runs", [_runs_table(study, comparison)]),
    ]
    feature_dir = study.root / "feature_analysis"
    if feature_dir.is_dir():
        blocks: list[Block] = ["Probe-set analysis of the saved networks, as written by plab analyze."]
        if (feature_dir / "summary.csv").exists():
            blocks.append(_csv_table(feature_dir / "summary.csv"))
        blocks.append(Images({p.stem.replace("_", " "): p for p in sorted(feature_dir.glob("*.png"))}))
        sections.insert(-1, ("Feature analysis", blocks))
    return sections


def _results_table(study: Study, comparison: Comparison) -> Table:
    rows = []
    for condition, result in comparison.results.items():
        runs = sum(r.condition == condition for r in study.runs)
        seeds = f"{len(result.finals)}" if len(result.finals) == runs else f"{len(result.finals)} of {runs}"
        vs = "-" if condition == study.baseline else _num(result.vs_baseline_pct, "+.1f") + ("%" if math.isfinite(result.vs_baseline_pct) else "")
        rows.append([
            condition,
            _num(result.test.value if result.test else None),
            _num(result.dead.value, ".1f") + "%" if result.dead else "n/a",
            vs,
            _with_ci(result.iqm),
            "-" if condition == study.baseline else _with_ci(result.improvement),
            seeds,
            ", ".join(result.incomplete) or "-",
        ])
    return Table(
        ["Condition", "Test Reward", "Dead Units", "vs Baseline", "IQM [95% CI]", f"P(> {study.baseline}) [95% CI]",
         "Seeds", "Incomplete runs (epochs)"],
        rows,
        "Test Reward and Dead Units: mean over seeds of the final values; vs Baseline: change of the mean test reward "
        "relative to the baseline's; IQM: interquartile mean of the seeds' final test reward; P(> baseline): probability "
        "that a run of the condition ends with a higher test reward than a baseline run. Seeds: runs with final values.",
    )


def _rounds_table(comparison: Comparison) -> Table:
    header = ["Condition"] + [f"round {k + 1} ({epoch_range(a, b)})" for k, (a, b) in enumerate(comparison.rounds)]
    rows = []
    for condition, ends in comparison.round_ends.items():
        relative = relative_to_first_round(ends)
        rows.append([condition] + [f"{_num(e)} ({_num(r)}x)" for e, r in zip(ends, relative)])
    return Table(
        header, rows,
        "Test return at the end of each round (task), mean over seeds; in brackets relative to the end of round 1 "
        "(n/a when round 1's return is not positive). A round's end is its last 10% of test evaluations "
        "(or the last --final-window evaluations).",
    )


def _correlation_table(comparison: Comparison) -> Table:
    rows = [
        [label(c.name), _num(c.r), _num(c.p, ".3g"), str(c.n)] if math.isfinite(c.r) else [label(c.name), f"n/a ({c.why_none})", "", str(c.n)]
        for c in comparison.correlations
    ]
    return Table(
        ["Metric (final value)", "Pearson r with final test return", "p", "Runs"], rows,
        "One point per run (all conditions pooled), final values as in the results table.",
    )


def _runs_table(study: Study, comparison: Comparison) -> Table:
    rows = []
    for run in study.runs:
        left_out = comparison.results[run.condition].left_out.get(run.label)
        status = "done" if run.done else "incomplete (no DONE)"
        rows.append([run.label, f"{run.length}/{study.num_epochs}", status, "yes" if left_out is None else f"no: {left_out}"])
    return Table(["Run", "Epochs logged", "Status", "In final values"], rows)


def _csv_table(path: Path) -> Table:
    """A CSV file as a table, numbers to 4 significant digits."""
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle)) or [[]]

    def cell(text: str) -> str:
        try:
            return format(float(text), ".4g")
        except ValueError:
            return text

    return Table(header, [[cell(c) for c in row] for row in rows], f"From {path.parent.name}/{path.name}.")


def _commands_table(study: Study) -> Table:
    rows = [
        [run.label, str(inv.get("started", "")), str(inv.get("device", "")), str(inv.get("command", ""))]
        for run in study.runs
        for inv in run.invocations
    ]
    return Table(["Run", "Started", "Device", "Command"], rows, "From each run's run.json; a resumed run lists every invocation.")


# ------------------------------------------------------------------------------------- rendering
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sections: list[tuple[str, list[Block]]], root: Path) -> str:
    out = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `plab report`.", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif isinstance(block, list):
                out += [f"- {item}" for item in block] + [""]
            elif isinstance(block, Table):
                out += [
                    "| " + " | ".join(map(_md_cell, block.header)) + " |",
                    "|" + "|".join(":---" if i == 0 else ":---:" for i in range(len(block.header))) + "|",
                    *("| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows),
                    "",
                ]
                if block.caption:
                    out += [f"*{block.caption}*", ""]
            elif isinstance(block, Code):
                out += ["```", block.text.rstrip("\n"), "```", ""]
            else:
                out += [f"![{caption}]({path.relative_to(root).as_posix()})" for caption, path in block.figures.items()] + [""]
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: center; }
td:first-child, th:first-child { text-align: left; }
th { background: #f0f3f7; } tr:nth-child(even) td { background: #fafafa; }
.caption { color: #555; font-size: .85em; max-width: 1100px; }
.notes { background: #fff8e1; border: 1px solid #f0d58a; padding: .5em 1em .5em 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: .5em 1em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def _html_block(block: Block, notes: bool) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, list):
        items = "".join(f"<li>{html.escape(item)}</li>" for item in block)
        return f'<ul class="notes">{items}</ul>' if notes else f"<ul>{items}</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        caption = f'<p class="caption">{html.escape(block.caption)}</p>' if block.caption else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{html.escape(caption)} '
        f"({html.escape(path.name)})</figcaption></figure>"
        for caption, path in block.figures.items()
    )
    return f'<div class="grid">{figures}</div>' if block.grid else figures


def _html(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    body = []
    for heading, blocks in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body += [_html_block(block, heading.startswith("Notes")) for block in blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{STYLE}</style></head>\n'
        f"<body><h1>{html.escape(title)}</h1>\n<p class=\"caption\">Generated {time.strftime('%Y-%m-%d %H:%M:%S')} "
        "by plab report.</p>\n" + "\n".join(body) + "\n</body></html>\n"
    )
