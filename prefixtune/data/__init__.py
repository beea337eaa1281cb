"""Data loaders of the four tasks of the paper: E2E, WebNLG 2017, DART, XSum.

::

    from prefixtune.data import load_split, training_pairs
    dev = load_split("e2e", "dev")                      # list[Example], one per distinct MR
    pairs = training_pairs(load_split("webnlg", "train"))  # (source, target), one per reference

Each task is read from its official release files under a data root laid out as
``../shared/data`` (``root=`` argument, else :func:`default_data_root`). When a task's folder
is absent the same data is fetched from the Hugging Face hub (see :mod:`.hub`), failing at
once with a one-line :class:`DataError` when the hub cannot be reached. Nothing is cached on
disk by this package.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..tasks import TASKS
from . import checksums, dart, e2e, webnlg, xsum
from .base import DataError, Example, default_data_root
from .lowdata import low_data_split

SPLITS = ("train", "dev", "test")
_MODULES = {"e2e": e2e, "webnlg": webnlg, "dart": dart, "xsum": xsum}
#: Valid ``subset=`` values per task (WebNLG: seen/unseen categories; XSum: sections).
SUBSETS = {task: getattr(mod, "SUBSETS", ("all",)) for task, mod in _MODULES.items()}

__all__ = [
    "DataError",
    "Example",
    "SPLITS",
    "SUBSETS",
    "TASKS",
    "default_data_root",
    "load_split",
    "low_data_split",
    "training_pairs",
]


def load_split(
    task: str,
    split: str,
    root: str | Path | None = None,
    *,
    subset: str = "all",
    allow_modified: bool = False,
) -> list[Example]:
    """All Examples of ``task``'s ``split`` ("train" | "dev" | "test"), in the official order.

    ``subset``: WebNLG "all" | "seen" (the 10 training categories) | "unseen"; XSum "all" |
    "news" | "sports" | "news-seen" (world, UK, business) | "news-unseen" (other news sections).
    Official release files are checked against their sha256; ``allow_modified`` accepts a
    copy that differs (with a warning) instead of refusing it.
    """
    if task not in _MODULES:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {task}; valid splits: {', '.join(SPLITS)}")
    if subset not in SUBSETS[task]:
        raise DataError(
            f"unknown subset {subset!r} for {task}; valid subsets: {', '.join(SUBSETS[task])}"
        )
    data_root = Path(root).expanduser() if root is not None else default_data_root()
    with checksums.allow_modified(allow_modified):
        return _MODULES[task].load(split, data_root, subset)


def training_pairs(examples: Iterable[Example]) -> list[tuple[str, str]]:
    """``(source, target)`` pairs: one per reference, examples and references in order."""
    return [(ex.source, ref) for ex in examples for ref in ex.references]
