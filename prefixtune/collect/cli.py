"""The ``prefixtune-collect`` command: read the runs, write results.md, runs.csv and figures.

Outputs never overwrite anything: ``--out`` must be new (or empty), and the default
``<root>/collected/`` becomes ``collected-2``, ``collected-3``, ... when taken.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefixtune.collect import costs as c
from prefixtune.collect import pareto as p
from prefixtune.collect.compare import compare
from prefixtune.collect.findings import findings
from prefixtune.collect.plots import panel_metrics, plot_figures, plot_pareto
from prefixtune.collect.report import report, write_csv
from prefixtune.collect.runs import CollectError, find_runs
from prefixtune.collect.tables import REPLICATE_KEYS, Table, build_tables, main_metric


def choose_out(root: Path, out: str | os.PathLike | None) -> Path:
    """``--out`` must not hold anything; the default picks a fresh ``collected[-N]`` folder."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CollectError(
                f"{path} already exists; refusing to overwrite it (pick another --out)"
            )
        return path
    path, n = root / "collected", 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        n += 1
        path = root / f"collected-{n}"
    return path


def collect(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    metrics: Sequence[str] = (),
    replicate_keys: Sequence[str] = REPLICATE_KEYS,
    pareto_cost: str | None = None,
) -> dict[str, Any]:
    """Write results.md, runs.csv and the figures; returns what was written and counted.

    ``metrics`` choose the figures' panels (and the Pareto plot's score: the first of them);
    ``pareto_cost`` the Pareto plot's x axis (a costs.COSTS key; default: pareto.plan's)."""
    root = Path(root)
    runs, skipped = find_runs(root)
    if not runs:
        raise CollectError(
            f"no finished runs under {root} ({len(skipped)} unfinished: no metrics.json)"
        )
    tables = build_tables(runs, replicate_keys)
    _check_cost(pareto_cost, tables)
    dest = choose_out(root, out)
    prefixes = {t.task: "" if len(tables) == 1 else f"{t.task}_" for t in tables}
    fronts = {t.task: _pareto(t, metrics, pareto_cost) for t in tables}
    comparisons = {t.task: compare(t) for t in tables}
    dest.mkdir(parents=True, exist_ok=True)
    text = report(tables, root, skipped, fronts, prefixes, comparisons)
    (dest / "results.md").write_text(text, encoding="utf-8")
    write_csv(dest / "runs.csv", tables)
    written = [dest / "results.md", dest / "runs.csv"]
    claims = findings(tables, comparisons)
    if claims is not None:
        (dest / "findings.md").write_text(claims, encoding="utf-8")
        written.append(dest / "findings.md")
    figures: list[Path] = []
    for t in tables:
        figures += plot_figures(t, dest, prefixes[t.task], metrics, comparisons[t.task])
        if (front := fronts[t.task]) is not None:
            figures.append(plot_pareto(t, front, dest, prefixes[t.task]))
    return {
        "out": dest,
        "runs": len(runs),
        "skipped": skipped,
        "tables": tables,
        "pareto": fronts,
        "prefixes": prefixes,
        "comparisons": comparisons,
        "files": [*written, *figures],
    }


def _check_cost(cost: str | None, tables: Sequence[Table]) -> None:
    if cost is None:
        return
    if cost not in c.COSTS:
        raise CollectError(f"unknown cost {cost!r}; choose one of {', '.join(c.COSTS)}")
    # the runs' own costs, not the tables' columns: a GPU table still records the CPU peak RSS
    had = {k for t in tables for row in t.rows for run in row.runs for k in run.costs}
    recorded = [k for k in c.COSTS if k in had]
    if cost not in recorded:
        raise CollectError(
            f"no run records {cost} in its run.json (recorded: {', '.join(recorded) or 'none'})"
        )


def _pareto(table: Table, metrics: Sequence[str], cost: str | None) -> p.Pareto | None:
    metric = next(iter(panel_metrics(table, metrics)), None) if metrics else main_metric(table)
    return p.plan(table, cost, metric) if metric is not None else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="prefixtune-collect",
        description="Tables (Markdown, mean ± std, n) and figures (PNG) from a multirun folder "
        "or any tree of run folders; reads config.yaml / overrides.json / metrics.json / "
        "run.json only.",
    )
    parser.add_argument("root", help="a multirun folder, or any folder holding run folders")
    parser.add_argument(
        "--out", help="output folder, must be new (default: <root>/collected, or collected-N)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        help="metric to plot (e.g. bleu, 'ROUGE-L', test/unseen/bleu); repeatable; "
        "default: the task's scores (at most 5 panels); the first is the Pareto plot's score "
        "(default there: the task's main metric, BLEU or ROUGE-L)",
    )
    parser.add_argument(
        "--replicate-keys",
        default=",".join(REPLICATE_KEYS),
        help="comma-separated keys averaged over rather than shown as settings "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--pareto-cost",
        choices=list(c.COSTS),
        metavar="COST",
        help=f"x axis of the quality-vs-cost plot pareto_<metric>.png: one of {', '.join(c.COSTS)} "
        f"(default: the first of {', '.join(p.DEFAULT_COSTS)} that differs between settings)",
    )
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.replicate_keys.split(",") if k.strip()]
    try:
        result = collect(args.root, args.out, args.metric, keys, args.pareto_cost)
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    settings = sum(len(t.rows) for t in result["tables"])
    print(f"collected {result['runs']} finished runs ({settings} settings) from {args.root}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unfinished runs (no metrics.json)")
    for path in result["files"]:
        print(f"wrote {path}")
    print()
    text = report(
        result["tables"],
        Path(args.root),
        [],
        result["pareto"],
        result["prefixes"],
        result["comparisons"],
    )
    print(text.split("\n", 2)[2].rstrip())
