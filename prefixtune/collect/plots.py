"""The figures: the paper's sweeps (figures 3-5) and a quality-vs-cost Pareto plot, as PNGs.

matplotlib with the Agg backend (files only, no display needed), imported when a figure is
drawn so that reading and tables do not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefixtune.collect import costs as c
from prefixtune.collect.compare import Comparison
from prefixtune.collect.pareto import Pareto
from prefixtune.collect.runs import DEV_LOSS
from prefixtune.collect.tables import Row, Table, is_float, mean_std, metric_label

# Which sweep key makes which figure of the paper.
FIGURES = {
    "prefix_length": ("prefix.length",),  # figure 4: score vs prefix length
    "init": ("prefix_init", "prefix.init_text", "prefix.init"),  # figure 5: bars per init
    "low_data": ("train.low_data",),  # figure 3: score vs training-set size
}
MAX_PANELS = 5


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_key(table: Table, candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in table.keys), None)


def panel_metrics(table: Table, wanted: Sequence[str]) -> list[str]:
    """The metrics to draw: those named in ``wanted`` (key or label), else the scores."""
    metrics = table.metrics
    if wanted:
        low = [w.lower() for w in wanted]
        metrics = [m for m in metrics if m.lower() in low or metric_label(m).lower() in low]
    scores = [m for m in metrics if m != DEV_LOSS]
    return (scores or metrics)[:MAX_PANELS]


def _series(table: Table, x_key: str) -> dict[str, list[Row]]:
    """Rows grouped by every setting key except x (e.g. one line per method or prefix mode)."""
    i = table.keys.index(x_key)
    out: dict[str, list[Row]] = {}
    for row in table.rows:
        pairs = zip(table.keys, row.setting, strict=True)
        rest = [f"{k}={v}" for j, (k, v) in enumerate(pairs) if j != i]
        out.setdefault(", ".join(rest) or table.task, []).append(row)
    return out


def _errors(
    table: Table, row: Row, metric: str, comparison: Comparison | None
) -> tuple[float, float, float]:
    """(y, below, above): the mean over runs with its 95% bootstrap interval when the runs kept
    their per-input statistics, else ± the sample std over runs."""
    mean, std = mean_std(row.values(metric))
    est = None
    if comparison is not None:
        est = comparison.estimates.get((table.rows.index(row), metric))
    if est is None:
        return mean, std, std
    return mean, max(mean - est.low, 0.0), max(est.high - mean, 0.0)


def _has_ci(table: Table, metrics: Sequence[str], comparison: Comparison | None) -> bool:
    return comparison is not None and any(k[1] in metrics for k in comparison.estimates)


def plot_figures(
    table: Table,
    out: Path,
    prefix: str,
    wanted: Sequence[str] = (),
    comparison: Comparison | None = None,
) -> list[Path]:
    """The paper's figures this table's sweep keys allow, one panel per metric; error bars are
    95% bootstrap intervals where the runs kept per-input statistics, else ± std."""
    plt = _pyplot()
    metrics = panel_metrics(table, wanted)
    written: list[Path] = []
    if not metrics:
        return written
    for name, candidates in FIGURES.items():
        x_key = _figure_key(table, candidates)
        if x_key is None:
            continue
        i = table.keys.index(x_key)
        if name != "init" and not any(is_float(r.setting[i]) for r in table.rows):
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            if name == "init":
                _bars(ax, table, metric, comparison)
            else:
                _lines(ax, table, x_key, metric, name == "low_data", comparison)
                ax.set_xlabel(
                    {"prefix_length": "prefix length", "low_data": "training examples"}[name]
                )
            ax.set_title(metric_label(metric))
            ax.grid(alpha=0.3)
        where = f" ({table.split})" if table.split else ""
        title = {"prefix_length": "Prefix length", "init": "Initialisation", "low_data": "Low data"}
        bars = "95% bootstrap CI" if _has_ci(table, metrics, comparison) else "± std"
        fig.suptitle(f"{title[name]}: {table.task}{where}, mean, {bars}")
        fig.tight_layout()
        path = out / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _lines(
    ax, table: Table, x_key: str, metric: str, band: bool, comparison: Comparison | None
) -> None:
    i = table.keys.index(x_key)
    xs_all = []
    for label, rows in _series(table, x_key).items():
        pts = [
            (float(r.setting[i]), *_errors(table, r, metric, comparison))
            for r in rows
            if r.values(metric) and is_float(r.setting[i])  # "-": a run without this key
        ]
        if not pts:
            continue
        pts.sort()
        xs, ys, below, above = zip(*pts, strict=True)
        xs_all += xs
        if band and len(xs) > 1:  # a band needs two points; a lone point gets an error bar
            ax.plot(xs, ys, marker="o", label=label)
            low = [y - s for y, s in zip(ys, below, strict=True)]
            high = [y + s for y, s in zip(ys, above, strict=True)]
            ax.fill_between(xs, low, high, alpha=0.2)
        else:
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=label)
    _log_if_wide(ax, xs_all)
    if len(_series(table, x_key)) > 1:
        ax.legend(fontsize=7)


def _log_if_wide(ax, xs: Sequence[float]) -> None:
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        # labels at 1, 2, 5 per decade as plain numbers; matplotlib's own minor-tick labels
        # ("3x10^0") overlap when the axis spans little more than a decade
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _bars(ax, table: Table, metric: str, comparison: Comparison | None) -> None:
    rows = [r for r in table.rows if r.values(metric)]
    if not rows:
        return
    labels = [", ".join(r.setting) for r in rows]
    ys, below, above = zip(*(_errors(table, r, metric, comparison) for r in rows), strict=True)
    ax.bar(range(len(rows)), ys, yerr=[below, above], capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)


def plot_pareto(table: Table, pareto: Pareto, out: Path, prefix: str = "") -> Path:
    """Score vs cost, a point per setting (± std both ways), the front as a step line."""
    plt = _pyplot()
    pts = pareto.points
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.errorbar(
        [p.cost for p in pts],
        [p.score for p in pts],
        xerr=[p.cost_std for p in pts],
        yerr=[p.score_std for p in pts],
        fmt="o",
        color="C0",
        ecolor="0.6",
        capsize=3,
        label="setting (mean ± std)",
    )
    front = [pts[i] for i in pareto.front]
    # "post": from a front point the score holds until the next, costlier one improves on it
    ax.step([p.cost for p in front], [p.score for p in front], where="post", color="C3")
    ax.scatter(
        [p.cost for p in front],
        [p.score for p in front],
        s=120,
        facecolors="none",
        edgecolors="C3",
        linewidths=1.5,
        zorder=3,
        label="Pareto front",
    )
    for p in pts:
        ax.annotate(
            ", ".join(p.row.setting),
            (p.cost, p.score),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    _log_if_wide(ax, [p.cost for p in pts])
    better = "higher" if pareto.higher_is_better else "lower"
    ax.set_xlabel(f"{c.COSTS[pareto.cost]} (lower is better)")
    ax.set_ylabel(f"{metric_label(pareto.metric)} ({better} is better)")
    ax.grid(alpha=0.3)
    # the corner the front leaves empty: it rises to the right (falls, when lower is better)
    ax.legend(fontsize=7, loc="lower right" if pareto.higher_is_better else "upper right")
    where = f" ({table.split})" if table.split else ""
    ax.set_title(f"Quality vs cost: {table.task}{where}", fontsize=10)
    fig.tight_layout()
    path = out / pareto.filename(prefix)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
