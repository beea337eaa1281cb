"""Writing the tables: results.md (mean ± std and n per setting) and runs.csv (one line a run).

Metric columns come first and cost columns after them, in both files; a run that did not record
a cost leaves its cell empty ("-" in Markdown, nothing in the CSV).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from prefixtune.collect import costs as c
from prefixtune.collect.compare import Comparison, better
from prefixtune.collect.pareto import Pareto
from prefixtune.collect.runs import DEV_LOSS
from prefixtune.collect.tables import Table, main_metric, mean_std, metric_label
from prefixtune.metrics.significance import Difference


def _decimals(x: float) -> int:
    return 2 if abs(x) >= 10 else 3 if abs(x) >= 1 else 4


def _fmt(x: float) -> str:
    return f"{x:.{_decimals(x)}f}"


def cell(values: Sequence[float]) -> str:
    """mean ± std, the std to the mean's decimals (68.06 ± 0.77, 0.4104 ± 0.0060)."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{_fmt(mean)} ± {std:.{_decimals(mean)}f}" if len(values) > 1 else _fmt(mean)


def cost_cell(cost: str, values: Sequence[float]) -> str:
    """Like `cell`; parameter counts as integers (163,840), and "± 0" left out for what the
    setting fixes (parameters), since replicates only differ there when something is wrong."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    if cost not in c.EXACT:
        return cell(values)
    if cost in c.COUNTS:
        return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std else "")
    return _fmt(mean) + (f" ± {std:.{_decimals(mean)}f}" if std else "")


def markdown(table: Table, comparison: Comparison | None = None) -> str:
    """The table; with a comparison, the main metric's 95% bootstrap interval after it."""
    main = main_metric(table)
    ci = comparison is not None and any(k[1] == main for k in comparison.estimates)
    head = [*table.keys, "n"]
    for m in table.metrics:
        head.append(metric_label(m))
        if ci and m == main:
            head.append(f"{metric_label(m)} 95% CI")
    head += [c.COSTS[k] for k in table.costs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(table.rows):
        cells = [*row.setting, str(len(row.runs))]
        for m in table.metrics:
            cells.append(cell(row.values(m)))
            if ci and m == main:
                est = comparison.estimates.get((i, m))
                d = _decimals(est.score) if est else 0
                cells.append(f"[{est.low:.{d}f}, {est.high:.{d}f}]" if est else "-")
        cells += [cost_cell(k, row.cost_values(k)) for k in table.costs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff_cell(metric: str, diff: Difference) -> str:
    """``+1.23 [+0.40, +2.05] p=0.003*``: the difference A - B, its 95% interval and p; ``*``
    marks p < 0.05, in bold when A is the better one."""
    d = _decimals(max(abs(diff.a), abs(diff.b)))
    text = f"{diff.delta:+.{d}f} [{diff.low:+.{d}f}, {diff.high:+.{d}f}] p={diff.p:.3f}"
    if diff.significant:
        text = f"**{text}**\\*" if better(metric, diff) else f"{text}\\*"
    return text


def pairs_markdown(table: Table, comparison: Comparison) -> str:
    """One line per pair of settings one key apart: A - B in every metric."""
    metrics = [m for m in table.metrics if m != DEV_LOSS]
    head = ["differs in", "A", "B", "other keys", *(f"Δ {metric_label(m)}" for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pair in comparison.pairs:
        i = table.keys.index(pair.key)
        pairs = enumerate(zip(table.keys, pair.a.setting, strict=True))
        rest = [f"{k}={v}" for j, (k, v) in pairs if j != i]
        cells = [f"`{pair.key}`", pair.a.setting[i], pair.b.setting[i], ", ".join(rest) or "-"]
        cells += [diff_cell(m, pair.diffs[m]) if m in pair.diffs else "-" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    tables: Sequence[Table],
    root: Path,
    skipped: Sequence[Path],
    pareto: Mapping[str, Pareto | None] | None = None,
    prefix: Mapping[str, str] | None = None,
    comparisons: Mapping[str, Comparison] | None = None,
) -> str:
    """results.md; ``pareto`` (by task) adds a line naming each table's front, ``prefix`` (by
    task) the prefix of its figure's file name, ``comparisons`` (by task) the bootstrap
    intervals and the paired differences."""
    out = [f"# Results under `{root}`", ""]
    for t in tables:
        n_runs = sum(len(r.runs) for r in t.rows)
        where = f"scores on {t.split}" if t.split else "no scores (eval.score=false)"
        comparison = (comparisons or {}).get(t.task)
        out += [f"## {t.task}: {where}, {n_runs} runs, {len(t.rows)} settings", ""]
        out += [markdown(t, comparison), ""]
        over = ", ".join(t.replicates) if t.replicates else "none varied"
        out.append(f"Mean ± sample std over replicates ({over}); n = runs per setting.")
        if t.costs:
            out.append(c.notes(t.costs))
        if t.fixed:
            out.append(
                "Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in t.fixed.items())
            )
        front = (pareto or {}).get(t.task)
        if front is not None:
            name = front.filename((prefix or {}).get(t.task, ""))
            best = ", ".join(f"`{t.label(front.points[i].row)}`" for i in front.front)
            out.append(f"Pareto front of {front.title()} (`{name}`): {best}.")
        if comparison is not None and comparison.estimates:
            out.append(_comparison_note(comparison))
        out.append("")
        if comparison is not None and comparison.pairs:
            out += [
                f"### {t.task}: settings one key apart (A − B)",
                "",
                pairs_markdown(t, comparison),
                "",
                "Each cell: the difference A − B of the setting means, its 95% paired bootstrap "
                f"interval over the {comparison.n_inputs} test inputs and the paired bootstrap "
                "p-value (sacrebleu's --paired-bs procedure: 1000 resamples, seed 12345, both "
                "settings on the same resamples, a multi-run setting scored as the mean of its "
                "runs); \\* p < 0.05, bold when A is the better one.",
                "",
            ]
    if skipped:
        out.append(f"Skipped {len(skipped)} unfinished runs (no metrics.json):")
        out += [f"- `{p}`" for p in skipped]
        out.append("")
    return "\n".join(out)


def _comparison_note(comparison: Comparison) -> str:
    note = (
        f"95% CI: the percentile interval of the setting's score over 1000 bootstrap resamples "
        f"of the {comparison.n_inputs} test inputs (prefixtune.metrics.significance)."
    )
    if comparison.missing:
        note += (
            f" {comparison.missing} runs have no per-input statistics (stats_<split>.json; "
            "`prefixtune-score --stats` writes them from a run's generations): their settings "
            "have no interval."
        )
    return note


def write_csv(path: Path, tables: Sequence[Table]) -> None:
    """One line per finished run: its folder, setting, replicate keys, every score, its costs."""
    fields = ["task", "run"]
    costs = [k for k in c.COSTS if any(_any_run(t, k) for t in tables)]  # both memory peaks
    rows = []
    for t in tables:
        for row in t.rows:
            for run in row.runs:
                line = {"task": t.task, "run": str(run.path)}
                line.update(zip(t.keys, row.setting, strict=True))
                line.update({k: run.overrides.get(k, run.config.get(k, "")) for k in t.replicates})
                line.update(run.scores)
                fields += [k for k in line if k not in fields]
                line.update({k: run.costs[k] for k in costs if k in run.costs})
                rows.append(line)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields + costs)
        writer.writeheader()
        writer.writerows(rows)


def _any_run(table: Table, cost: str) -> bool:
    return any(cost in run.costs for row in table.rows for run in row.runs)
