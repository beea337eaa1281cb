"""Results collector: a multirun folder (or any tree of run folders) -> tables and figures.

Like PEFT's ``method_comparison``, every result is one self-describing folder and the tables are
built from its files alone (``config.yaml``, ``overrides.json``, ``metrics.json``, ``run.json``),
never from wandb. Each table row is one setting with the mean ± sample standard deviation over
its replicates and their count n, as the paper reports its low-data and initialisation results,
then what the setting cost (time, peak memory, parameters); a Pareto plot shows which settings
no other one beats on both score and cost. Unfinished runs (no ``metrics.json``) are skipped
and counted.

    prefixtune-collect outputs/multirun/2026-01-01_12-00-00_prefix_length

The modules, in the order the data flows: ``runs`` (reading folders), ``costs`` (the cost
columns), ``tables`` (grouping into settings), ``pareto`` (the front), ``report`` (results.md,
runs.csv), ``plots`` (PNGs), ``cli`` (the command).
"""

from prefixtune.collect.cli import choose_out, collect, main
from prefixtune.collect.costs import COSTS
from prefixtune.collect.pareto import Pareto, pareto_front
from prefixtune.collect.plots import FIGURES, plot_figures, plot_pareto
from prefixtune.collect.report import cell, markdown, report, write_csv
from prefixtune.collect.runs import DEV_LOSS, CollectError, Run, costs_of, find_runs, scores_of
from prefixtune.collect.tables import (
    METRIC_NAMES,
    REPLICATE_KEYS,
    Row,
    Table,
    build_tables,
    main_metric,
    mean_std,
    metric_label,
)

__all__ = [
    "COSTS",
    "DEV_LOSS",
    "FIGURES",
    "METRIC_NAMES",
    "REPLICATE_KEYS",
    "CollectError",
    "Pareto",
    "Row",
    "Run",
    "Table",
    "build_tables",
    "cell",
    "choose_out",
    "collect",
    "costs_of",
    "find_runs",
    "main",
    "main_metric",
    "markdown",
    "mean_std",
    "metric_label",
    "pareto_front",
    "plot_figures",
    "plot_pareto",
    "report",
    "scores_of",
    "write_csv",
]
