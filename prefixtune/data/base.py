"""Shared types and helpers of the data loaders: :class:`Example`, :class:`DataError`, data root."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..errors import UsageError

T = TypeVar("T")

#: Environment variable that overrides the default data root.
DATA_ROOT_ENV = "PREFIXTUNE_DATA_ROOT"


class DataError(UsageError):
    """A data problem with a clear one-line message (the CLI prints ``str(e)`` only).

    A :class:`prefixtune.errors.UsageError`: missing files, bad choices, no network.
    """

    def __init__(self, message: str):
        # Guarantee the one-line contract whatever the caller formatted.
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Example:
    """One input of a task with all its references.

    ``source`` is the linearised input in the paper's format, ``references`` holds every
    reference of this input in file order, ``meta`` is task-specific (see each task module).
    """

    source: str
    references: tuple[str, ...]
    meta: dict = field(default_factory=dict, hash=False)  # compared, not hashed (a dict)


def default_data_root() -> Path:
    """``$PREFIXTUNE_DATA_ROOT`` if set, else ``<repo root>/../shared/data`` (from this file)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    # this file: <repo>/prefixtune/data/base.py -> parents[2] is the repo root
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def local_files(
    root: Path, folder: str, names: list[str], task: str, split: str
) -> list[Path] | None:
    """Resolve the local release files of one split.

    Returns the paths when all exist; ``None`` when the task's folder is absent (the caller
    then falls back to the Hugging Face hub); raises :class:`DataError` naming the first
    missing file when the folder exists but is incomplete (a broken local release).
    """
    base = root / folder
    paths = [base / n for n in names]
    if all(p.exists() for p in paths):
        return paths
    if not base.is_dir():
        return None
    missing = next(p for p in paths if not p.exists())
    raise DataError(
        f"{task} {split}: missing file {missing} in the data root {root} "
        f"(expected the official release layout: {folder}/{', '.join(names)})"
    )


def clean(text: str | None) -> str:
    """Strip a text field from XML/JSON (``None`` -> empty string)."""
    return (text or "").strip()


def parse_xml(path: Path, dataset: str) -> ET.Element:
    """The root of a release XML file (checksum-checked); a broken file is a one-line
    DataError naming the file and the line."""
    from .checksums import decode, read_checked

    data = read_checked(path)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else 0
        if not re.match(rb"<\?xml[^>]*encoding=[\"'](?!utf-?8)", data[:200], re.IGNORECASE):
            decode(data, path, dataset)  # a UTF-8 file with a bad byte: say so
        raise DataError(f"{dataset}: {path}:{line}: not well-formed XML ({exc})") from None


_ENTRY_TAG = re.compile(rb"<entry[\s>/]")


def read_xml_entries(path: Path, dataset: str, parse: Callable[[ET.Element], T]) -> list[T]:
    """``parse`` of every ``<entry>`` of a release XML file; a DataError from one entry becomes
    one line naming the dataset, the file, the entry's line and its eid."""
    out = []
    for n, entry in enumerate(parse_xml(path, dataset).iter("entry")):
        try:
            out.append(parse(entry))
        except DataError as err:
            reason = str(err).removeprefix(f"{dataset}: ")
            raise DataError(
                f"{dataset}: {entry_where(path, n, entry.get('eid'))}: {reason}"
            ) from None
    return out


def entry_where(path: Path, index: int, eid: str | None) -> str:
    """``"<path>:<line>: entry Id5"`` for the ``index``-th (0-based) ``<entry>`` of an XML file.

    For error messages only: it reads the file again to find the entry's line.
    """
    label = f"entry {eid}" if eid else f"entry #{index + 1}"
    try:
        data = Path(path).read_bytes()
    except OSError:
        return f"{path}: {label}"
    for n, m in enumerate(_ENTRY_TAG.finditer(data)):
        if n == index:
            line = data.count(b"\n", 0, m.start()) + 1
            return f"{path}:{line}: {label}"
    return f"{path}: {label}"
