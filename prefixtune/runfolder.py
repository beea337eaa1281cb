"""The run folder's contract: what a run writes and where, atomically, one run per folder.

One module owns it, so that train, the loggers, collect, generate and serve agree:

- the file names (`CONFIG`, `OVERRIDES`, `METRICS`, `RUN_INFO`, `LOSSES`, `CHECKPOINT`, the
  `prefix/` or `trained/` artefact, `generations(split)`);
- which keys do not change what a run computes (`NON_SEMANTIC_KEYS`, one list: a run is found
  for resume=true and checked against its checkpoint with the same rule, and collect leaves the
  same keys out of its settings);
- atomic writes (temp file, fsync, rename), strict JSON, and never clobbering: a folder is
  claimed with an flock before anything is written, and a used folder is never written again
  except to resume the run in it.

    run/
      config.yaml        the resolved config           overrides.json  the command's overrides
      losses.jsonl       train/dev losses per step     checkpoint.safetensors  resumable state
                                                       best.safetensors  best params (until done)
      prefix/ | trained/ the trained artefact          generations_<split>.txt  one line per input
      metrics.json       scores (written last: a run with it is finished)
      run.json           status, git, packages, environment, parameters, wall time, memory
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefixtune.errors import UsageError

CONFIG = "config.yaml"
OVERRIDES = "overrides.json"
LOSSES = "losses.jsonl"
CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"  # the best parameters so far; removed when the run finishes
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickled by prefixtune < 0.2: refused, never loaded
PREFIX_DIR = "prefix"  # method=prefix: P only (prefixtune.prefix's format)
TRAINED_DIR = "trained"  # other methods: the trained weights
TRAINED_WEIGHTS = "trainable.safetensors"
METRICS = "metrics.json"
RUN_INFO = "run.json"
LOCK = ".lock"  # held (flock) by the process writing the run; the OS drops it if that dies
_TMP_SUFFIX = ".tmp"  # temporary files of atomic writes: .<name>.<random>.tmp

# Overrides (and dotted config keys) that never change what a run computes: where it is
# written, how it is logged, how fast it evaluates, where the (checksummed) data lives.
NON_SEMANTIC_KEYS = (
    "resume",
    "output_dir",
    "hydra.",
    "hydra/",
    "logger",
    "eval.batch_size",
    "eval.dev_batch_size",
    "data.root",
    "cpu",
)


def generations(split: str) -> str:
    """The file of a split's generations, one line per input in dataset order."""
    return f"generations_{split}.txt"


def input_stats(split: str) -> str:
    """The file of a split's per-input metric statistics (prefixtune.metrics.stats)."""
    return f"stats_{split}.json"


def is_semantic(key: str) -> bool:
    """Whether a dotted config key (or an override) changes what a run computes."""
    return not key.lstrip("+~").startswith(NON_SEMANTIC_KEYS)


def semantic_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define what a run computes (used to find the run to resume)."""
    return sorted(o for o in overrides if is_semantic(o))


def read_overrides(folder: str | os.PathLike) -> list[str] | None:
    """The command-line overrides a run recorded, or None when it has no readable record."""
    try:
        saved = json.loads((Path(folder) / OVERRIDES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    overrides = saved.get("overrides") if isinstance(saved, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return None
    return overrides


def flatten(d: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of ``a.b.c`` keys (``sep`` between the parts)."""
    if not isinstance(d, dict):
        return {prefix[: -len(sep)]: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, sep, key + sep) if isinstance(v, dict) else {key: v})
    return out


# ---- writing ----------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, fsync, then os.replace into place.

    The file gets the usual mode (0666 less the umask, 0644 by default), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
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


# ---- claiming a folder ------------------------------------------------------------------------


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
        saved = read_overrides(run)
        # compared under today's rule, not the "semantic" list the run stored when it began
        if saved is not None and semantic_overrides(saved) == overrides:
            candidates.append(run)
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r / OVERRIDES).stat().st_mtime_ns)
