"""Grouping runs into tables: one per task, a row per setting, replicates pooled.

A *setting* is the set of overrides that differ between runs (the swept ones) minus the
replicate keys (``seed``, ``train.low_data_seed``) and minus the keys that do not change what a
run computes (prefixtune.runfolder's non-semantic keys: ``data.root``, ``eval.batch_size``,
``logger``, ...). The metric columns come in the scorers' order; the cost columns after them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefixtune import runfolder as rf
from prefixtune.collect.costs import table_costs
from prefixtune.collect.runs import DEV_LOSS, Run

REPLICATE_KEYS = ("seed", "train.low_data_seed")
# Display order and names of the scorers' keys (E2E, WebNLG / DART, XSum) and of WebNLG subsets.
METRIC_NAMES = {
    "bleu": "BLEU",
    "nist": "NIST",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
    "ter": "TER",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougel": "ROUGE-L",
    "rougelsum": "ROUGE-Lsum",
}
SUBSETS = ("seen", "unseen", "all")
# The headline metric of a task: BLEU for E2E, WebNLG and DART; ROUGE-L for XSum.
MAIN_METRICS = ("bleu", "rougel")
LOWER_IS_BETTER = ("ter", DEV_LOSS)


@dataclass
class Row:
    setting: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.scores[metric] for r in self.runs if metric in r.scores]

    def cost_values(self, cost: str) -> list[float]:
        return [r.costs[cost] for r in self.runs if cost in r.costs]


@dataclass
class Table:
    """The runs of one task, grouped by setting."""

    task: str
    keys: list[str]  # setting keys (table columns before n)
    fixed: dict[str, str]  # keys every run shares (shown under the table)
    replicates: list[str]  # replicate keys that actually vary
    metrics: list[str]  # metric columns, in display order
    split: str  # "test", "dev" or "" (only the dev loss)
    rows: list[Row]
    costs: list[str] = field(default_factory=list)  # cost columns (after the metrics)

    def label(self, row: Row) -> str:
        """``key=value, ...`` of a row's setting (the task's name when nothing varies)."""
        pairs = zip(self.keys, row.setting, strict=True)
        return ", ".join(f"{k}={v}" for k, v in pairs) or self.task


def build_tables(
    runs: Sequence[Run], replicate_keys: Sequence[str] = REPLICATE_KEYS
) -> list[Table]:
    """One table per task; rows = settings (the varying non-replicate keys), in sweep order."""
    tables = []
    for task in dict.fromkeys(r.task for r in runs):
        task_runs = [r for r in runs if r.task == task]
        use_overrides = all(r.has_overrides for r in task_runs)
        labels = [_labels(r, use_overrides) for r in task_runs]
        all_keys = list(dict.fromkeys(k for lab in labels for k in lab))
        varying = [k for k in all_keys if len({lab.get(k, "-") for lab in labels}) > 1]
        keys = [k for k in varying if k not in replicate_keys]
        fixed = {k: labels[0][k] for k in all_keys if k not in varying and k in labels[0]}
        rows: dict[tuple[str, ...], Row] = {}
        for run, lab in zip(task_runs, labels, strict=True):
            setting = tuple(lab.get(k, "-") for k in keys)
            rows.setdefault(setting, Row(setting)).runs.append(run)
        ordered = sorted(rows.values(), key=_row_order(keys, list(rows)))
        split, metrics = _metric_columns(task_runs)
        tables.append(
            Table(
                task=task,
                keys=keys,
                fixed=fixed if use_overrides else {},
                replicates=[k for k in varying if k in replicate_keys],
                metrics=metrics,
                split=split,
                rows=ordered,
                costs=table_costs(r.costs for r in task_runs),
            )
        )
    return tables


def _labels(run: Run, use_overrides: bool) -> dict[str, str]:
    source = run.overrides if use_overrides else run.config
    return {k: v for k, v in source.items() if rf.is_semantic(k)}


def _row_order(keys: list[str], settings: list[tuple[str, ...]]):
    """Numeric keys sort by number; other keys keep the order in which the sweep ran them."""
    numeric = [all(is_float(s[i]) for s in settings) for i in range(len(keys))]
    first_seen = [
        {v: j for j, v in reversed(list(enumerate(s[i] for s in settings)))}
        for i in range(len(keys))
    ]

    def key(row: Row) -> tuple:
        return tuple(
            float(v) if numeric[i] else first_seen[i][v] for i, v in enumerate(row.setting)
        )

    return key


def is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


# ---- metric columns ---------------------------------------------------------------------------


def _metric_columns(runs: Sequence[Run]) -> tuple[str, list[str]]:
    """The scores of the test split if any run has them, else the dev split's; then dev loss."""
    keys = list(dict.fromkeys(k for r in runs for k in r.scores))
    for split in ("test", "dev"):
        chosen = [k for k in keys if k.startswith(split + "/")]
        if chosen:
            chosen.sort(key=_metric_rank)
            return split, chosen + ([DEV_LOSS] if DEV_LOSS in keys else [])
    return "", [DEV_LOSS] if DEV_LOSS in keys else []


def metric_parts(key: str) -> tuple[str, str]:
    """("bleu", "unseen") for test/unseen/bleu, test/bleu/unseen or test/bleu_unseen."""
    if key == DEV_LOSS:
        return DEV_LOSS, ""
    metric, subset = "", ""
    for part in key.split("/")[1:]:
        low = part.lower()
        if low in SUBSETS:
            subset = low
        elif "_" in low and low.rsplit("_", 1)[1] in SUBSETS and low not in METRIC_NAMES:
            metric, subset = low.rsplit("_", 1)
        else:
            metric = f"{metric}/{part}" if metric else part
    return metric, subset


def _metric_rank(key: str) -> tuple[int, str, int]:
    metric, subset = metric_parts(key)
    names = list(METRIC_NAMES)
    rank = names.index(metric.lower()) if metric.lower() in names else len(names)
    return rank, metric, SUBSETS.index(subset) if subset in SUBSETS else -1


def metric_label(key: str) -> str:
    if key == DEV_LOSS:
        return "dev loss"
    metric, subset = metric_parts(key)
    name = METRIC_NAMES.get(metric.lower(), metric)
    return f"{name} {subset}" if subset else name


def higher_is_better(key: str) -> bool:
    return metric_parts(key)[0].lower() not in LOWER_IS_BETTER


def main_metric(table: Table) -> str | None:
    """The task's headline score (WebNLG: over all its subsets); the dev loss without scores."""
    scores = [m for m in table.metrics if m != DEV_LOSS]
    for name in MAIN_METRICS:
        named = [m for m in scores if metric_parts(m)[0].lower() == name]
        if named:
            return min(named, key=_whole_first)
    if scores:
        return scores[0]
    return DEV_LOSS if DEV_LOSS in table.metrics else None


def _whole_first(key: str) -> int:
    """WebNLG's "all" (the whole test set) before no subset before "seen" / "unseen"."""
    subset = metric_parts(key)[1]
    return ("all", "").index(subset) if subset in ("all", "") else 2
