"""The resumable training state (`TrainState`), stored without pickle.

A checkpoint is one self-contained state (as in nanoGPT): the trainable parameters, optimizer,
scheduler, step, the best dev loss so far and every process's RNG states. The data order is a
pure function of (seed, epoch), so the step number alone says where in the data to continue.
The best parameters are not a second copy in memory or in the checkpoint: they are written to
`best.safetensors` when the dev loss improves, right after a checkpoint of that very step, so
the state on disk always says where they are (see `best_params`).

It is stored in one safetensors file (written atomically, see runfolder.py): every tensor of the
state is a tensor of the file, and the rest of the state (numbers, strings, lists, the config)
is JSON in the file's metadata, with each tensor replaced by a reference to its key. Loading
reads raw tensor bytes and parses JSON; a crafted file cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefixtune.errors import UsageError
from prefixtune.runfolder import BEST, CHECKPOINT, LEGACY_CHECKPOINT, atomic_write

FORMAT = "prefixtune-checkpoint/1"  # any state dict; TrainState is the one train.py writes


class CheckpointError(UsageError):
    """A checkpoint that cannot be used (corrupt, legacy pickle, another config)."""


# ---- the RNG state as plain data --------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator's state as ints, lists and tensors (no numpy arrays, no pickle)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- checkpoint files -------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON data; tensors go into ``tensors`` and leave a reference behind."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> None:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_encode(state, tensors), allow_nan=False, separators=(",", ":"))
    data = save(tensors, metadata={"format": FORMAT, "state": meta})
    atomic_write(Path(folder) / CHECKPOINT, lambda f: f.write(data), mode="wb")


def load_checkpoint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The saved state, or None when the folder has none; a bad file is one CheckpointError."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder / CHECKPOINT
    if not path.is_file():
        if (folder / LEGACY_CHECKPOINT).is_file():
            raise CheckpointError(
                f"{folder / LEGACY_CHECKPOINT} is a pickled checkpoint of an older prefixtune; "
                "pickles are never loaded (they can run code): start a new run, or delete the "
                "file to let resume=true ignore this folder"
            )
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "state" not in meta:
                raise ValueError(f"not a {FORMAT} file")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # not a dict
        state = _decode(json.loads(meta["state"]), tensors)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no training step in it")
    except Exception as err:  # any failure to read means the same to the user
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({reason}); delete it to start that "
            "run over, or choose another run folder"
        ) from None
    return state


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


# ---- the training state -----------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run's training stands; the checkpoint file holds exactly these fields."""

    step: int = 0
    best_loss: float = math.inf  # the best dev loss so far (inf: none yet)
    best_step: int = 0  # the step of best_loss; its parameters are in best.safetensors
    bad_evals: int = 0  # dev evaluations since the last improvement (early stopping)
    elapsed_s: float = 0.0  # wall time of the run up to this state, over all its segments
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per process
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config of the run

    @property
    def has_best(self) -> bool:
        return math.isfinite(self.best_loss)


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState))


def save_state(folder: str | os.PathLike, state: TrainState) -> None:
    save_checkpoint(folder, {name: getattr(state, name) for name in _FIELDS})  # no deep copy


def load_state(folder: str | os.PathLike) -> TrainState | None:
    """The run's TrainState, or None when it has no checkpoint; a bad one is a CheckpointError."""
    saved = load_checkpoint(folder)
    if saved is None:
        return None
    path = Path(folder) / CHECKPOINT
    if "best" in saved:  # written before TrainState: the best parameters inside the file
        best = saved.pop("best")
        saved.update(best_loss=best["loss"], best_step=best["step"])
        if best.get("params") is not None:
            write_best(folder, best["params"], best["step"])
    unknown = sorted(set(saved) - set(_FIELDS))
    missing = sorted({"step", "trainable", "optimizer", "scheduler", "rng", "config"} - set(saved))
    if unknown or missing:
        raise CheckpointError(
            f"checkpoint {path} is not a training state of this prefixtune (unknown keys "
            f"{unknown}, missing {missing}); delete it to start that run over"
        )
    state = TrainState(**saved)
    if state.best_loss is None:  # JSON null
        state.best_loss = math.inf
    return state


def write_best(folder: str | os.PathLike, params: dict[str, torch.Tensor], step: int) -> None:
    """The best parameters so far, as plain safetensors with their step in the metadata."""
    from safetensors.torch import save

    tensors = {n: t.detach().cpu().contiguous() for n, t in params.items()}
    data = save(tensors, metadata={"step": str(step)})
    atomic_write(Path(folder) / BEST, lambda f: f.write(data), mode="wb")


def best_params(folder: str | os.PathLike, state: TrainState) -> dict[str, torch.Tensor] | None:
    """The parameters of ``state.best_step`` from best.safetensors (which must be of that
    step), or None when the model's current parameters are the ones to use: no dev evaluation
    improved, or the best step is the current one (then best.safetensors may lag behind: it is
    written after the checkpoint of its step)."""
    if not state.has_best or state.best_step == state.step:
        return None
    from safetensors import safe_open

    path = Path(folder) / BEST
    try:
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
            params = {k: f.get_tensor(k) for k in f.keys()}  # not a dict
    except Exception as err:  # missing or unreadable: the same to the user
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"{path} (the best parameters, of step {state.best_step}) is missing or unreadable "
            f"({reason}); delete {Path(folder) / CHECKPOINT} to start that run over"
        ) from None
    if step != str(state.best_step):
        raise CheckpointError(
            f"{path} holds the parameters of step {step}, but the checkpoint's best step is "
            f"{state.best_step}; delete {Path(folder) / CHECKPOINT} to start that run over"
        )
    return params
