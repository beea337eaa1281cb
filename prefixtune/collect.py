"""Results collector: a multirun folder (or any tree of run folders) -> tables and figures.

Like PEFT's ``method_comparison``, every result is one self-describing folder and the tables are
built from those files alone (``config.yaml``, ``overrides.json``, ``metrics.json``), never from
wandb. A *setting* is the set of overrides that differ between runs (the swept ones) minus the
replicate keys (``seed``, ``train.low_data_seed``): each table row is one setting with the mean
± sample standard deviation over its replicates and their count n, as the paper reports its
low-data and initialisation results. Unfinished runs (no ``metrics.json``) are skipped and
counted. Outputs never overwrite anything: ``--out`` must be new (or empty), and the default
``<root>/collected/`` becomes ``collected-2``, ``collected-3``, ... when taken.

    prefixtune-collect outputs/multirun/2026-01-01_12-00-00_prefix_length
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG, OVERRIDES, METRICS = "config.yaml", "overrides.json", "metrics.json"
REPLICATE_KEYS = ("seed", "train.low_data_seed")
# Overrides that never change what a run computes, or that every job of a sweep shares by design.
IGNORED_KEYS = ("hydra.", "hydra/", "output_dir", "resume", "data.root", "logger", "cpu")
IGNORED_KEYS += ("eval.batch_size",)
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
DEV_LOSS = "dev_loss"
# Which sweep key makes which figure of the paper.
FIGURES = {
    "prefix_length": ("prefix.length",),  # figure 4: score vs prefix length
    "init": ("prefix_init", "prefix.init_text", "prefix.init"),  # figure 5: bars per init
    "low_data": ("train.low_data",),  # figure 3: score vs training-set size
}
MAX_PANELS = 5


class CollectError(Exception):
    """A problem the user can fix (no runs, an output folder that exists); one line."""


@dataclass
class Run:
    path: Path
    task: str
    overrides: dict[str, str]  # key -> value, as given on the command line / by the sweeper
    config: dict[str, str]  # the resolved config, flattened to dotted keys
    scores: dict[str, float]  # flattened metric key (e.g. "test/bleu") -> value
    has_overrides: bool = True


@dataclass
class Row:
    setting: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.scores[metric] for r in self.runs if metric in r.scores]


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


# ---- reading run folders ----------------------------------------------------------------------


def find_runs(root: str | os.PathLike) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished run folders) under ``root``, in natural path order."""
    root = Path(root)
    if not root.is_dir():
        raise CollectError(f"{root} is not a folder")
    finished, unfinished = [], []
    for folder in _run_folders(root):
        metrics_file = folder / METRICS
        if not metrics_file.is_file():
            unfinished.append(folder)
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
            config = yaml.safe_load((folder / CONFIG).read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError):
            unfinished.append(folder)  # a file cut by a killed job
            continue
        overrides, has_overrides = _read_overrides(folder)
        flat_config = {k: _str(v) for k, v in _flatten(config).items()}
        finished.append(
            Run(
                path=folder,
                task=str(flat_config.get("task.name", "unknown")),
                overrides=overrides,
                config=flat_config,
                scores=scores_of(metrics),
                has_overrides=has_overrides,
            )
        )
    return finished, unfinished


def _run_folders(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if CONFIG in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's own subfolders (prefix/, wandb/) hold no runs
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=lambda p: _natural(str(p.relative_to(root))))


def _natural(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _read_overrides(folder: Path) -> tuple[dict[str, str], bool]:
    try:
        data = json.loads((folder / OVERRIDES).read_text())
    except (OSError, ValueError):
        return {}, False
    out: dict[str, str] = {}
    for item in data.get("overrides", []):
        key, _, value = str(item).lstrip("+~").partition("=")
        out[key] = value
    return out, True


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def scores_of(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> {"dev_loss": .., "test/bleu": .., "test/seen/bleu": .., ...}.

    The scores of a split are nested under its name (``{"test": {"bleu": ...}}``); any nesting
    below that (WebNLG's seen/unseen/all) is flattened with "/". Counters such as ``steps`` and
    ``best_step`` are not scores.
    """
    out: dict[str, float] = {}
    loss = metrics.get(DEV_LOSS)
    if _is_number(loss):
        out[DEV_LOSS] = float(loss)
    for split in ("test", "dev"):
        if isinstance(metrics.get(split), dict):
            for key, value in _flatten(metrics[split]).items():
                if _is_number(value):
                    out[f"{split}/{key.replace('.', '/')}"] = float(value)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---- grouping ---------------------------------------------------------------------------------


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
            )
        )
    return tables


def _labels(run: Run, use_overrides: bool) -> dict[str, str]:
    source = run.overrides if use_overrides else run.config
    return {k: v for k, v in source.items() if not k.startswith(IGNORED_KEYS)}


def _row_order(keys: list[str], settings: list[tuple[str, ...]]):
    """Numeric keys sort by number; other keys keep the order in which the sweep ran them."""
    numeric = [all(_is_float(s[i]) for s in settings) for i in range(len(keys))]
    first_seen = [
        {v: j for j, v in reversed(list(enumerate(s[i] for s in settings)))}
        for i in range(len(keys))
    ]

    def key(row: Row) -> tuple:
        return tuple(
            float(v) if numeric[i] else first_seen[i][v] for i, v in enumerate(row.setting)
        )

    return key


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _metric_columns(runs: Sequence[Run]) -> tuple[str, list[str]]:
    """The scores of the test split if any run has them, else the dev split's; then dev loss."""
    keys = list(dict.fromkeys(k for r in runs for k in r.scores))
    for split in ("test", "dev"):
        chosen = [k for k in keys if k.startswith(split + "/")]
        if chosen:
            chosen.sort(key=_metric_rank)
            return split, chosen + ([DEV_LOSS] if DEV_LOSS in keys else [])
    return "", [DEV_LOSS] if DEV_LOSS in keys else []


def _metric_parts(key: str) -> tuple[str, str]:
    """("bleu", "unseen") for test/unseen/bleu, test/bleu/unseen or test/bleu_unseen."""
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
    metric, subset = _metric_parts(key)
    names = list(METRIC_NAMES)
    rank = names.index(metric.lower()) if metric.lower() in names else len(names)
    return rank, metric, SUBSETS.index(subset) if subset in SUBSETS else -1


def metric_label(key: str) -> str:
    if key == DEV_LOSS:
        return "dev loss"
    metric, subset = _metric_parts(key)
    name = METRIC_NAMES.get(metric.lower(), metric)
    return f"{name} {subset}" if subset else name


# ---- statistics and formatting ----------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


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


def markdown(table: Table) -> str:
    head = [*table.keys, "n", *(metric_label(m) for m in table.metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [*row.setting, str(len(row.runs))]
        cells += [cell(row.values(m)) for m in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(tables: Sequence[Table], root: Path, skipped: Sequence[Path]) -> str:
    out = [f"# Results under `{root}`", ""]
    for t in tables:
        n_runs = sum(len(r.runs) for r in t.rows)
        where = f"scores on {t.split}" if t.split else "no scores (eval.score=false)"
        out += [f"## {t.task}: {where}, {n_runs} runs, {len(t.rows)} settings", "", markdown(t), ""]
        over = ", ".join(t.replicates) if t.replicates else "none varied"
        out.append(f"Mean ± sample std over replicates ({over}); n = runs per setting.")
        if t.fixed:
            out.append(
                "Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in t.fixed.items())
            )
        out.append("")
    if skipped:
        out.append(f"Skipped {len(skipped)} unfinished runs (no metrics.json):")
        out += [f"- `{p}`" for p in skipped]
        out.append("")
    return "\n".join(out)


def write_csv(path: Path, tables: Sequence[Table]) -> None:
    """One line per finished run: its folder, setting, replicate keys and every score."""
    fields = ["task", "run"]
    rows = []
    for t in tables:
        for row in t.rows:
            for run in row.runs:
                line = {"task": t.task, "run": str(run.path)}
                line.update(zip(t.keys, row.setting, strict=True))
                line.update({k: run.overrides.get(k, run.config.get(k, "")) for k in t.replicates})
                line.update(run.scores)
                rows.append(line)
                fields += [k for k in line if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ---- figures ----------------------------------------------------------------------------------


def _figure_key(table: Table, candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in table.keys), None)


def _panel_metrics(table: Table, wanted: Sequence[str]) -> list[str]:
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


def plot_figures(table: Table, out: Path, prefix: str, wanted: Sequence[str] = ()) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _panel_metrics(table, wanted)
    written: list[Path] = []
    if not metrics:
        return written
    for name, candidates in FIGURES.items():
        x_key = _figure_key(table, candidates)
        if x_key is None:
            continue
        i = table.keys.index(x_key)
        if name != "init" and not any(_is_float(r.setting[i]) for r in table.rows):
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            if name == "init":
                _bars(ax, table, metric)
            else:
                _lines(ax, table, x_key, metric, band=name == "low_data")
                ax.set_xlabel(
                    {"prefix_length": "prefix length", "low_data": "training examples"}[name]
                )
            ax.set_title(metric_label(metric))
            ax.grid(alpha=0.3)
        where = f" ({table.split})" if table.split else ""
        title = {"prefix_length": "Prefix length", "init": "Initialisation", "low_data": "Low data"}
        fig.suptitle(f"{title[name]}: {table.task}{where}, mean ± std")
        fig.tight_layout()
        path = out / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _lines(ax, table: Table, x_key: str, metric: str, band: bool) -> None:
    i = table.keys.index(x_key)
    xs_all = []
    for label, rows in _series(table, x_key).items():
        pts = [
            (float(r.setting[i]), *mean_std(r.values(metric)))
            for r in rows
            if r.values(metric) and _is_float(r.setting[i])  # "-": a run without this key
        ]
        if not pts:
            continue
        pts.sort()
        xs, ys, sd = zip(*pts, strict=True)
        xs_all += xs
        if band:
            ax.plot(xs, ys, marker="o", label=label)
            low = [y - s for y, s in zip(ys, sd, strict=True)]
            high = [y + s for y, s in zip(ys, sd, strict=True)]
            ax.fill_between(xs, low, high, alpha=0.2)
        else:
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=label)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 20:
        ax.set_xscale("log")
    if len(_series(table, x_key)) > 1:
        ax.legend(fontsize=7)


def _bars(ax, table: Table, metric: str) -> None:
    rows = [r for r in table.rows if r.values(metric)]
    labels = [", ".join(r.setting) for r in rows]
    stats = [mean_std(r.values(metric)) for r in rows]
    ax.bar(range(len(rows)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)


# ---- the command ------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Write results.md, runs.csv and the figures; returns what was written and counted."""
    root = Path(root)
    runs, skipped = find_runs(root)
    if not runs:
        raise CollectError(
            f"no finished runs under {root} ({len(skipped)} unfinished: no metrics.json)"
        )
    tables = build_tables(runs, replicate_keys)
    dest = choose_out(root, out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.md").write_text(report(tables, root, skipped), encoding="utf-8")
    write_csv(dest / "runs.csv", tables)
    figures: list[Path] = []
    for t in tables:
        figures += plot_figures(t, dest, "" if len(tables) == 1 else f"{t.task}_", metrics)
    return {
        "out": dest,
        "runs": len(runs),
        "skipped": skipped,
        "tables": tables,
        "files": [dest / "results.md", dest / "runs.csv", *figures],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="prefixtune-collect",
        description="Tables (Markdown, mean ± std, n) and figures (PNG) from a multirun folder "
        "or any tree of run folders; reads config.yaml / overrides.json / metrics.json only.",
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
        "default: the task's scores (at most 5 panels)",
    )
    parser.add_argument(
        "--replicate-keys",
        default=",".join(REPLICATE_KEYS),
        help="comma-separated keys averaged over rather than shown as settings "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.replicate_keys.split(",") if k.strip()]
    try:
        result = collect(args.root, args.out, args.metric, keys)
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
    print(report(result["tables"], Path(args.root), []).split("\n", 2)[2].rstrip())


if __name__ == "__main__":
    main()
