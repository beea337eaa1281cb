"""Quality vs cost: which settings no other setting beats on both (the Pareto front).

A setting is a point (mean cost, mean score) over its replicates; it is on the front when no
other setting costs at most as much and scores at least as well, one of the two strictly. The
front is computed on the means (the figure shows the spread as error bars).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prefixtune.collect import costs as c
from prefixtune.collect.tables import (
    Row,
    Table,
    higher_is_better,
    main_metric,
    mean_std,
    metric_label,
    metric_parts,
)

# Default x axes, most telling first: the share of the model a method trains is the paper's
# cost axis and fixed by the setting; when every setting trains the same (an initialisation
# ablation), time is what differs, the training loop alone before the whole run.
DEFAULT_COSTS = (c.TRAINABLE_PCT, c.FIT_TIME, c.WALL_TIME)


@dataclass
class Point:
    row: Row
    cost: float
    cost_std: float
    score: float
    score_std: float


@dataclass
class Pareto:
    """The plan of one table's figure: its axes, one point per setting, and the front."""

    cost: str  # a costs.COSTS key
    metric: str  # a metric column of the table
    points: list[Point]
    front: list[int]  # indices into points, by increasing cost

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def filename(self, prefix: str = "") -> str:
        metric, subset = metric_parts(self.metric)
        name = f"{metric}_{subset}" if subset else metric
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        return f"{prefix}pareto_{slug}.png"

    def title(self) -> str:
        return f"{metric_label(self.metric)} vs {c.COSTS[self.cost]}"


def pareto_front(
    costs: Sequence[float], scores: Sequence[float], higher_is_better: bool = True
) -> list[int]:
    """Indices of the points nothing dominates, by increasing cost.

    A point is dominated when another one costs no more and scores no worse, and is strictly
    better in one of the two; two identical points are both on the front."""
    if len(costs) != len(scores):
        raise ValueError(f"{len(costs)} costs but {len(scores)} scores")
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -sign * scores[i]))
    front: list[int] = []
    for i in order:
        if not front or sign * scores[i] > sign * scores[front[-1]]:
            front.append(i)
        elif scores[i] == scores[front[-1]] and costs[i] == costs[front[-1]]:
            front.append(i)  # the same cost and score as a front point: neither dominates
    return front


def points(table: Table, cost: str, metric: str) -> list[Point]:
    """A point per setting that has both the cost and the metric, in table order."""
    out = []
    for row in table.rows:
        xs, ys = row.cost_values(cost), row.values(metric)
        if xs and ys:
            out.append(Point(row, *mean_std(xs), *mean_std(ys)))
    return out


def plan(table: Table, cost: str | None = None, metric: str | None = None) -> Pareto | None:
    """The Pareto figure of a table, or None when fewer than 2 settings have cost and metric.

    Without ``cost`` the first of DEFAULT_COSTS (then the table's other costs) whose value
    differs between settings; without ``metric`` the task's main metric."""
    metric = metric or main_metric(table)
    if metric is None:
        return None
    if cost is None:
        usable = {
            k: pts
            for k in dict.fromkeys([*DEFAULT_COSTS, *table.costs])
            if k in table.costs and len(pts := points(table, k, metric)) >= 2
        }
        varying = [k for k, pts in usable.items() if len({p.cost for p in pts}) > 1]
        cost = next(iter(varying or usable), None)
        if cost is None:
            return None
    pts = points(table, cost, metric)
    if len(pts) < 2:
        return None
    front = pareto_front([p.cost for p in pts], [p.score for p in pts], higher_is_better(metric))
    return Pareto(cost, metric, pts, front)
