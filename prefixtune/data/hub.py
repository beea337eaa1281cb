"""Hugging Face hub fallback, with an offline fail-fast.

When a dataset's folder is absent from the data root, the loaders fetch the same data with
``datasets.load_dataset`` and convert it to the same :class:`~prefixtune.data.Example`.
Before touching ``datasets`` (slow to import, and it retries for a long time when the network
is down) we decide within a few seconds whether the hub can be used, with the checks shared
with the model loader (:mod:`prefixtune.hubprobe`):

1. an offline variable (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``)
   set to a true value -> offline, unless the dataset is already in the local Hugging Face
   cache (then ``datasets`` reads it offline);
2. otherwise one real HTTP request to the hub endpoint under one hard total deadline (DNS,
   connect, TLS and the status line included).

If the hub cannot be used we raise a one-line :class:`DataError` naming both remedies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# probe_hub and offline_reason are looked up in this module's namespace at call time, so tests
# can monkeypatch ``prefixtune.data.hub.probe_hub``.
from prefixtune.errors import one_line
from prefixtune.hubprobe import (
    OFFLINE_VARS,
    bounded_hub_timeouts,
    offline_reason,
    probe_hub,
)

from .base import DataError

__all__ = [
    "OFFLINE_VARS",
    "HubSource",
    "field_list",
    "in_local_hf_cache",
    "load_hub_rows",
    "offline_reason",
    "probe_hub",
    "unavailable_message",
]


@dataclass(frozen=True)
class HubSource:
    """One way to get a split from the hub: ``load_dataset(repo, config, split=, revision=)``."""

    repo: str
    split: str
    config: str | None = None
    revision: str | None = None


def _cache_dirs() -> list[Path]:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    ds = os.environ.get("HF_DATASETS_CACHE")
    return [Path(hub) if hub else home / "hub", Path(ds) if ds else home / "datasets"]


def in_local_hf_cache(repo: str) -> bool:
    """Whether ``repo`` was downloaded before (then ``datasets`` can load it offline)."""
    hub_dir, ds_dir = _cache_dirs()
    names = [hub_dir / f"datasets--{repo.replace('/', '--')}", ds_dir / repo.replace("/", "___")]
    return any(p.is_dir() for p in names)


def unavailable_message(task: str, split: str, local: str, reason: str) -> str:
    return (
        f"cannot load {task} {split}: no local files ({local}) and the Hugging Face hub is "
        f"not usable ({reason}). Either point data.root= at a folder with the official {task} "
        f"release files (same layout as ../shared/data), or allow network access to the "
        f"Hugging Face hub."
    )


def load_hub_rows(task: str, split: str, sources: Sequence[HubSource], local: str):
    """Rows (dicts) of the first of ``sources`` that loads; :class:`DataError` otherwise.

    ``local`` says which local files were looked for (it goes into the error message).
    """
    reason = offline_reason()
    if reason is not None:
        if not any(in_local_hf_cache(s.repo) for s in sources):
            raise DataError(unavailable_message(task, split, local, f"offline: {reason}"))
    else:
        reason = probe_hub()
        if reason is not None:
            raise DataError(unavailable_message(task, split, local, reason))

    import datasets  # only now: importing it costs ~1.5 s

    errors = []
    for src in sources:
        try:
            with bounded_hub_timeouts():
                return datasets.load_dataset(
                    src.repo, src.config, split=src.split, revision=src.revision
                )
        except Exception as exc:  # we report every attempt in one line
            errors.append(f"{src.repo}[{src.config or 'default'}:{src.split}]: {one_line(exc)}")
    raise DataError(
        unavailable_message(task, split, local, "every hub source failed: " + "; ".join(errors))
    )


def field_list(value, key: str) -> list:
    """A list-of-structs feature as a list of ``key`` values.

    ``datasets`` returns a sequence of structs either as a dict of lists
    (``{"text": [...], ...}``) or as a list of dicts, depending on how it was declared.
    """
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value.get(key) or [])
    return [v[key] for v in value]
