"""The resumable training state and the run folder's rules: atomic writes, never clobber.

A checkpoint is one self-contained dict (as in nanoGPT): the trainable parameters, optimizer,
scheduler, step, the best dev state so far and every process's RNG states. The data order is a
pure function of (seed, epoch), so the step number alone says where in the data to continue.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefixtune.errors import UsageError

CHECKPOINT = "checkpoint.pt"
OVERRIDES = "overrides.json"
METRICS = "metrics.json"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, fsync, then os.replace into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write(Path(folder) / CHECKPOINT, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Works for every method: the prefix, the top layers, or the whole model."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint does not match the model: {missing[:3]} ...")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def choose_run_dir(output_dir: str | os.PathLike, resume: bool, overrides: list[str]) -> Path:
    """The folder this run writes to.

    Without resume the folder must be empty: a second run never writes into a used folder.
    With resume: the folder itself if it holds a checkpoint, else the newest unfinished sibling
    run started with the same overrides (Hydra gives every launch a fresh timestamped folder, so
    "the same command plus resume=true" lands next to the run it should continue).
    """
    out = Path(output_dir)
    used = out.is_dir() and any(out.iterdir())
    if resume:
        if (out / CHECKPOINT).is_file():
            return out
        found = _find_resumable(out, overrides)
        if found is not None:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            return found
        if not used:
            return out
        raise UsageError(f"resume=true but {out} holds no checkpoint to resume from")
    if used:
        raise UsageError(
            f"run folder {out} is not empty; refusing to overwrite it "
            "(add resume=true to continue that run, or choose another hydra.run.dir)"
        )
    return out


def _find_resumable(out: Path, overrides: list[str]) -> Path | None:
    parent = out.parent
    if not parent.is_dir():
        return None
    candidates = []
    for run in parent.iterdir():
        if run == out or not (run / CHECKPOINT).is_file() or (run / METRICS).is_file():
            continue
        try:
            saved = json.loads((run / OVERRIDES).read_text())
        except (OSError, ValueError):
            continue
        if saved.get("semantic") == overrides:
            candidates.append(run)
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r / CHECKPOINT).stat().st_mtime)
