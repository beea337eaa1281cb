"""The resumable training state and the run folder's rules: atomic writes, never clobber,
one run per folder, nothing ever unpickled.

A checkpoint is one self-contained state (as in nanoGPT): the trainable parameters, optimizer,
scheduler, step, the best dev state so far and every process's RNG states. The data order is a
pure function of (seed, epoch), so the step number alone says where in the data to continue.

It is stored without pickle, in one safetensors file (written atomically): every tensor of the
state is a tensor of the file, and the rest of the state (numbers, strings, lists, the config)
is JSON in the file's metadata, with each tensor replaced by a reference to its key. Loading
reads raw tensor bytes and parses JSON; a crafted file cannot run code.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefixtune.errors import UsageError

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickled by prefixtune < 0.2: refused, never loaded
OVERRIDES = "overrides.json"
METRICS = "metrics.json"
LOCK = ".lock"  # held (flock) by the process writing the run; the OS drops it if that dies
FORMAT = "prefixtune-checkpoint/1"
_TMP_SUFFIX = ".tmp"  # temporary files of atomic writes: .<name>.<random>.tmp


class CheckpointError(UsageError):
    """A checkpoint that cannot be used (corrupt, legacy pickle, another config)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, fsync, then os.replace into place.

    The file gets the usual mode (0666 less the umask, 0644 by default), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left behind (a killed write can leave ~100 MB).

    Only call this while holding the folder's lock: then no other process is writing there."""
    removed = []
    for tmp in Path(folder).rglob(f".*{_TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON only (NaN and inf become null), so every JSON reader can read the file."""
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=True, allow_nan=False)
    write_text(path, text + "\n")


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and inf float, at any depth, as None (JSON has no spelling for
    them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


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
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        state = _decode(json.loads(meta["state"]), tensors)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no training step in it")
    except Exception as err:  # noqa: BLE001 - any failure to read means the same to the user
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


class RunFolder:
    """A run folder this process has claimed: it holds the folder's lock until ``release``.

    The lock is an flock on ``.lock`` inside the folder, so it dies with the process (kill -9
    included) and a later ``resume=true`` can take the folder over."""

    def __init__(self, path: Path, fd: int | None, resumed: bool, finished: bool = False):
        self.path, self._fd, self.resumed, self.finished = path, fd, resumed, finished

    def release(self, failed: bool = False) -> None:
        """Drop the lock; after a failure that wrote nothing, also remove the empty folder."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if failed and not self.resumed:
            entries = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
            if entries <= {LOCK}:
                (self.path / LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()


def claim_run_dir(
    output_dir: str | os.PathLike, resume: bool, overrides: list[str], unique: bool = False
) -> RunFolder:
    """Choose and claim the folder this run writes to; one run per folder, atomically.

    Without resume the folder must be empty. When it is taken (used, or claimed at the same
    moment by a run started in the same second), ``unique=True`` (Hydra's default,
    timestamped folder) moves on to ``<folder>-2``, ``-3``, ...; a folder the user named gives
    one error line. With resume: the folder itself if it holds a checkpoint, else the newest
    sibling run started with the same overrides (Hydra gives every launch a fresh timestamped
    folder, so "the same command plus resume=true" lands next to the run it should continue).
    A run that already finished is reported (``finished``) and left as it is.
    """
    out = Path(output_dir)
    if resume:
        target = None
        if (out / CHECKPOINT).is_file() or (out / LEGACY_CHECKPOINT).is_file():
            target = out
        elif (found := _find_resumable(out, overrides)) is not None:
            _remove_if_empty(out)
            target = found
        elif _used(out):
            raise UsageError(f"resume=true but {out} holds no checkpoint to resume from")
        if target is not None:
            if (target / METRICS).is_file():
                return RunFolder(target, None, resumed=True, finished=True)
            fd = _lock(target)
            if fd is None:
                raise UsageError(f"run folder {target} is being written by another process now")
            return RunFolder(target, fd, resumed=True)
    busy = False  # the last folder tried was locked by a live run (not merely used)
    for n in range(1, 1000 if unique else 2):
        candidate = out if n == 1 else out.with_name(f"{out.name}-{n}")
        busy = False
        if not _used(candidate) or {p.name for p in candidate.iterdir()} == {LOCK}:
            fd = _lock(candidate)
            busy = fd is None
            if fd is not None:
                if {p.name for p in candidate.iterdir()} == {LOCK}:
                    if candidate != out:
                        _remove_if_empty(out)
                    return RunFolder(candidate, fd, resumed=False)
                os.close(fd)  # another run claimed and wrote it between our look and our lock
    if busy:
        raise UsageError(
            f"run folder {out} is being written by another run right now; choose another "
            "hydra.run.dir"
        )
    raise UsageError(
        f"run folder {out} is not empty; refusing to overwrite it (add resume=true to continue "
        "that run, or choose another hydra.run.dir)"
    )


def _used(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _lock(folder: Path) -> int | None:
    """An fd holding the folder's exclusive lock, or None when another process holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(
            f"cannot write to the run folder {folder} ({err.strerror or err}); choose a writable "
            "hydra.run.dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _find_resumable(out: Path, overrides: list[str]) -> Path | None:
    """The newest sibling run of the same command (finished or not) with a checkpoint."""
    parent = out.parent
    if not parent.is_dir():
        return None
    candidates = []
    for run in parent.iterdir():
        if run == out or not run.is_dir():
            continue
        files = [run / CHECKPOINT, run / LEGACY_CHECKPOINT]
        if not any(f.is_file() for f in files):
            continue
        try:
            saved = json.loads((run / OVERRIDES).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and saved.get("semantic") == overrides:
            candidates.append(run)
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r / OVERRIDES).stat().st_mtime_ns)
