"""Loggers with one small interface: log(record) per step/evaluation, summary(dict), close().

JSONL is always written (losses.jsonl in the run folder); wandb is added with logger=wandb.
Only rank 0 creates loggers.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from omegaconf import DictConfig

from prefixtune import runfolder as rf
from prefixtune.config import LoggerName, MethodName, to_container
from prefixtune.runfolder import LOSSES, finite_or_none, write_text


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per line: {"step", "split": "train"|"dev", "loss", ...}."""

    def __init__(self, folder: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(folder) / LOSSES
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.file = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        """Drop records after the checkpoint: the resumed run writes them again, identically."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by kill -9
                continue
            if record.get("step", 0) <= step:
                kept.append(line + "\n")
        write_text(self.path, "".join(kept))

    def log(self, record: dict[str, Any]) -> None:
        # strict JSON: a NaN/inf loss is written as null (the run stops on it anyway)
        record = {k: finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class WandbNames(NamedTuple):
    """How a run appears in wandb: one panel (group) per ablation, its values as tags."""

    group: str  # task-model-method
    tags: list[str]  # task:, model:, method: and, for prefixes, length, mode and init
    name: str  # the group plus the prefix's settings and the seed


def wandb_names(cfg: DictConfig) -> WandbNames:
    """The wandb group, tags and run name of a run's config."""
    task, model, method = cfg.task.name, cfg.model.name, cfg.method.name
    group = f"{task}-{model}-{method}"
    tags = [f"task:{task}", f"model:{model}", f"method:{method}"]
    name = group
    if MethodName(method) is MethodName.prefix:
        p = cfg.prefix
        mode, init = p.mode, p.init
        tags += [f"prefix.length:{p.length}", f"prefix.mode:{mode}", f"prefix.init:{init}"]
        name += f"-L{p.length}-{mode}-{init}"
    return WandbNames(group, tags, f"{name}-seed{cfg.seed}")


class WandbLogger:
    """Every job its own wandb run; a resumed job continues the same wandb run id."""

    def __init__(self, cfg: DictConfig, folder: str | os.PathLike) -> None:
        import wandb

        opts = cfg.logger.wandb
        names = wandb_names(cfg)
        id_file = Path(folder) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        if not id_file.exists():
            write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=opts.project,
            entity=opts.entity,
            mode=str(opts.mode),
            group=opts.group or names.group,
            tags=names.tags + list(opts.tags),
            name=names.name,
            id=run_id,
            resume="allow",
            dir=str(folder),
            config=to_container(cfg),
            reinit="create_new",
        )

    def log(self, record: dict[str, Any]) -> None:
        split = record.get("split", "train")
        values = {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")}
        self.run.log(values, step=record["step"])

    def summary(self, metrics: dict[str, Any]) -> None:
        for key, value in rf.flatten(metrics, sep="/").items():
            self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log(self, record: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(record)

    def summary(self, metrics: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


class NullLogger:
    """For ranks other than 0."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(cfg: DictConfig, folder: str | os.PathLike, resume_step: int | None) -> Logger:
    loggers: list[Logger] = [JsonlLogger(folder, resume_step)]
    if LoggerName(cfg.logger.name) is LoggerName.wandb:
        loggers.append(WandbLogger(cfg, folder))
    return MultiLogger(loggers)
