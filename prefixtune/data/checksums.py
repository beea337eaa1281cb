"""The official release files' sha256, checked whenever a loader reads one.

A copy that differs (cut short, edited, another version) is refused with one line naming the
file, unless the user says it is meant: ``data.allow_modified=true`` (then a warning). Files not
in the list (a user's own split, a data root of another layout) are read unchecked; their
parsers still name the file and line of anything malformed.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from .base import DataError

log = logging.getLogger(__name__)

_ALLOW_MODIFIED = contextvars.ContextVar("allow_modified", default=False)
#: (path, size, mtime_ns, inode, ctime_ns) -> sha256: each file is hashed once per process.
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


@cache
def known() -> dict[str, str]:
    """Relative path (``e2e/trainset.csv``) -> sha256 of the official file."""
    text = (Path(__file__).with_name("release_sha256.txt")).read_text(encoding="utf-8")
    pairs = (line.split(None, 1) for line in text.splitlines() if not line.startswith("#"))
    return {name.strip(): digest for digest, name in pairs}


@contextlib.contextmanager
def allow_modified(allow: bool) -> Iterator[None]:
    token = _ALLOW_MODIFIED.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_MODIFIED.reset(token)


def read_checked(path: Path) -> bytes:
    """The file's bytes, after checking them against the official checksum if it has one."""
    path = Path(path)
    try:
        stat = path.stat()  # before reading: a file changed meanwhile gets a new key
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    release = _release_name(path)
    if release is None:
        return data
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        digest = _HASHES[key] = hashlib.sha256(data).hexdigest()
    expected = known()[release]
    if digest != expected:
        message = (
            f"{path} differs from the official {release} (sha256 {digest[:12]}..., expected "
            f"{expected[:12]}...)"
        )
        if not _ALLOW_MODIFIED.get():
            raise DataError(
                f"{message}; restore the official file, or pass data.allow_modified=true to use "
                "this modified copy"
            )
        log.warning("%s; using it (data.allow_modified=true)", message)
    return data


def _release_name(path: Path) -> str | None:
    parts = path.parts
    table = known()
    for n in range(2, min(len(parts), 6) + 1):
        name = "/".join(parts[-n:])
        if name in table:
            return name
    return None


def decode(data: bytes, path: Path, dataset: str = "") -> str:
    """UTF-8 text (a BOM is dropped); an undecodable byte names the file and its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        prefix = f"{dataset}: " if dataset else ""
        raise DataError(
            f"{prefix}{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None
