"""Atomic file writes, so that a reader finds the old file or the new one, never half of one.

The same scheme as prefixtune.checkpoint's (kept separate so that the engine depends on nothing
of the application): write a temporary file `.<name>.<random>.tmp` in the same folder, fsync
it, then os.replace it into place. The file gets the usual mode, 0666 less the umask (0644 by
default), not mkstemp's 0600. A killed write leaves only the temporary file behind, which the
application's stale-file sweep (pattern `.*.tmp`) removes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call `write(f)` on a temporary file opened with `mode` ("w" or "wb"), then move it to
    `path`; on any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
