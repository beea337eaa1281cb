"""Reading run folders: a tree of folders -> finished runs, each with its scores and costs.

What the files are called and which overrides define a setting is prefixtune.runfolder's
business; this module only turns one folder into a `Run`: the task, the overrides, the flattened
config, the scores (metrics.json) and the costs (run.json). A folder without a readable
metrics.json is unfinished; a missing or unreadable run.json only leaves the costs empty.  The
per-input statistics (``stats_<split>.json``) are only located here; compare.py reads them.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefixtune import runfolder as rf
from prefixtune.collect import costs as c
from prefixtune.errors import UsageError
from prefixtune.runfolder import flatten

DEV_LOSS = "dev_loss"


class CollectError(UsageError):
    """A problem the user can fix (no runs, an output folder that exists); one line."""


@dataclass
class Run:
    path: Path
    task: str
    overrides: dict[str, str]  # key -> value, as given on the command line / by the sweeper
    config: dict[str, str]  # the resolved config, flattened to dotted keys
    scores: dict[str, float]  # flattened metric key (e.g. "test/bleu") -> value
    has_overrides: bool = True
    costs: dict[str, float] = field(default_factory=dict)  # costs.COSTS key -> value
    stats: dict[str, Path] = field(default_factory=dict)  # split -> its stats_<split>.json


def find_runs(root: str | os.PathLike) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished run folders) under ``root``, in natural path order."""
    root = Path(root)
    if not root.is_dir():
        raise CollectError(f"{root} is not a folder")
    finished, unfinished = [], []
    for folder in _run_folders(root):
        metrics_file = folder / rf.METRICS
        if not metrics_file.is_file():
            unfinished.append(folder)
            continue
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            config = yaml.safe_load((folder / rf.CONFIG).read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            unfinished.append(folder)  # a file cut by a killed job
            continue
        overrides = rf.read_overrides(folder)
        flat_config = {k: _str(v) for k, v in flatten(config).items()}
        finished.append(
            Run(
                path=folder,
                task=str(flat_config.get("task.name", "unknown")),
                overrides=_parse_overrides(overrides or []),
                config=flat_config,
                scores=scores_of(metrics),
                has_overrides=overrides is not None,
                costs=costs_of(_read_json(folder / rf.RUN_INFO)),
                stats={
                    split: folder / rf.input_stats(split)
                    for split in ("test", "dev")
                    if (folder / rf.input_stats(split)).is_file()
                },
            )
        )
    return finished, unfinished


def _run_folders(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if rf.CONFIG in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's own subfolders (prefix/, wandb/) hold no runs
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=lambda p: _natural(str(p.relative_to(root))))


def _natural(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        out[key] = value
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _str(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scores_of(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> {"dev_loss": .., "test/bleu": .., "test/seen/bleu": .., ...}.

    The scores of a split are nested under its name (``{"test": {"bleu": ...}}``); any nesting
    below that (WebNLG's seen/unseen/all) is flattened with "/". Counters such as ``steps`` and
    ``best_step`` are not scores.
    """
    out: dict[str, float] = {}
    loss = metrics.get(DEV_LOSS)
    if is_number(loss):
        out[DEV_LOSS] = float(loss)
    for split in ("test", "dev"):
        if isinstance(metrics.get(split), dict):
            for key, value in flatten(metrics[split]).items():
                if is_number(value):
                    out[f"{split}/{key.replace('.', '/')}"] = float(value)
    return out


def costs_of(info: Any) -> dict[str, float]:
    """run.json -> {costs key: value} for what it records (see prefixtune.train.write_run_info).

    Only a run that was never resumed gets a fit time: ``phases_this_segment_s`` covers the last
    segment alone, so a resumed run's would undercount; ``wall_time_s`` is summed over segments.
    """
    if not isinstance(info, dict):
        return {}
    out: dict[str, float] = {}
    phases = _dict(info.get("phases_this_segment_s"))
    if info.get("resumed_from_step") is None:
        _put(out, c.FIT_TIME, phases.get("fit"))
    _put(out, c.WALL_TIME, info.get("wall_time_s"))
    memory = _dict(info.get("memory"))  # the keys of prefixtune.runinfo.peak_memory_mb
    _put(out, c.PEAK_GPU, memory.get("gpu_max_allocated_mb"))
    _put(out, c.PEAK_RSS, memory.get("cpu_max_rss_mb"))
    params = _dict(info.get("parameters"))
    _put(out, c.STORED, params.get("stored"))
    _put(out, c.STORED_PCT, params.get("stored_pct"))
    _put(out, c.TRAINABLE, params.get("trainable"))
    _put(out, c.TRAINABLE_PCT, params.get("trainable_pct"))
    return out


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _put(out: dict[str, float], key: str, value: Any) -> None:
    if is_number(value):
        out[key] = float(value)
