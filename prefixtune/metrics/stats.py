"""Per-input sufficient statistics of every metric: corpus scores of any subset or resample.

A significance test resamples the test inputs thousands of times and needs each metric's corpus
score on every resample.  Each official metric here is a function of column sums of per-input
rows, so a run keeps those rows (``stats_<split>.json`` next to its generations) and a
resample's score is ``score_of(kind, rows[sample].sum(0))``: no tokenizer, no Java.

The kinds and their rows (each row's columns; every ``*_from`` function is the one the scorer
itself uses for its corpus score, so the two cannot drift apart):

* ``pymteval_bleu``: E2E BLEU, ``nist.e2e_bleu_rows``;
* ``pymteval_nist`` / ``mteval_nist``: E2E NIST in the Python / Perl mode, ``nist.nist_rows``
  (the n-gram information weights come from all of the references and stay fixed);
* ``sacrebleu_bleu``: multi-bleu BLEU (WebNLG, DART), ``bleu.bleu_rows``;
* ``meteor15``: METEOR 1.5, the jar's 23 statistics of the segment's best reference,
  ``meteor.meteor_rows``;
* ``ter``: tercom's edits and average reference length of a segment, ``ter.ter_rows``;
* ``mean`` / ``mean_x100``: a per-input score and 1 (ROUGE-L and CIDEr-D of the COCO code, whose
  corpus score is the mean of its segment scores with CIDEr's document frequencies from all of
  the references; XSum's rouge-score F-measures, on 0-100).

``InputStats.views()`` names them as ``metrics.json`` does (``bleu``; WebNLG ``all/bleu``,
``seen/bleu``, ...), each with the rows of its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefixtune.metrics.bleu import bleu_from
from prefixtune.metrics.errors import ScoreError
from prefixtune.metrics.meteor import meteor_from
from prefixtune.metrics.nist import e2e_bleu_from, nist_from
from prefixtune.metrics.ter import ter_from

FORMAT = "prefixtune-input-stats"
VERSION = 1


def _mean(sums: Sequence[float]) -> float:
    return sums[0] / sums[1] if sums[1] else 0.0


KINDS: dict[str, Callable[[Sequence[float]], float]] = {
    "pymteval_bleu": e2e_bleu_from,
    "pymteval_nist": lambda s: nist_from(s, mode="python"),
    "mteval_nist": lambda s: nist_from(s, mode="perl"),
    "sacrebleu_bleu": bleu_from,
    "meteor15": meteor_from,
    "ter": lambda s: ter_from(s[0], s[1]),
    "mean": _mean,
    "mean_x100": lambda s: 100.0 * _mean(s),
}


def score_of(kind: str, sums: Sequence[float]) -> float:
    """The corpus score of ``kind`` from its rows' column sums."""
    return float(KINDS[kind](sums))


def mean_rows(values: Sequence[float]) -> list[list[float]]:
    """Rows of a metric whose corpus score is the mean of per-input scores."""
    return [[float(v), 1.0] for v in values]


@dataclass
class InputStats:
    """One system's per-input statistics on one split.

    ``metrics``: metric name -> (kind, rows over all inputs); ``groups``: WebNLG's named subsets
    (``seen``, ``unseen``) as input indices; ``inputs``: a fingerprint of the references, so
    that only runs scored on the same inputs are compared.
    """

    task: str
    metrics: dict[str, tuple[str, np.ndarray]]
    groups: dict[str, list[int]] = field(default_factory=dict)
    inputs: str = ""

    @property
    def n(self) -> int:
        return len(next(iter(self.metrics.values()))[1]) if self.metrics else 0

    def views(self) -> dict[str, tuple[str, np.ndarray]]:
        """Metric key as in ``metrics.json`` (flattened with "/") -> (kind, rows of its inputs)."""
        if self.task != "webnlg":  # only WebNLG nests its scores, under all / seen / unseen
            return dict(self.metrics)
        out = {}
        for group in ("all", *self.groups):
            idx = self.groups.get(group)
            if idx is not None and not idx:
                continue  # an empty group has no scores (metrics.json: null)
            for name, (kind, rows) in self.metrics.items():
                out[f"{group}/{name}"] = (kind, rows if idx is None else rows[idx])
        return out

    def scores(self) -> dict[str, float]:
        """Every view's corpus score over all of its inputs."""
        return {key: score_of(kind, rows.sum(0)) for key, (kind, rows) in self.views().items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "n": self.n,
            "inputs": self.inputs,
            "groups": self.groups,
            "metrics": {
                name: {"kind": kind, "rows": rows.tolist()}
                for name, (kind, rows) in self.metrics.items()
            },
        }

    @classmethod
    def from_json(cls, obj: Any, source: str = "statistics") -> InputStats:
        """Checked parsing (plain JSON, nothing executed); one-line ScoreError when malformed."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ScoreError(f"{source}: not a {FORMAT} file")
        if obj.get("version") != VERSION:
            raise ScoreError(f"{source}: version {obj.get('version')!r}, expected {VERSION}")
        metrics = {}
        n = obj.get("n")
        for name, entry in (obj.get("metrics") or {}).items():
            kind = entry.get("kind") if isinstance(entry, dict) else None
            if kind not in KINDS:
                raise ScoreError(f"{source}: metric {name!r} has unknown kind {kind!r}")
            try:
                rows = np.asarray(entry["rows"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ScoreError(f"{source}: metric {name!r} has malformed rows") from None
            if rows.ndim != 2 or len(rows) != n:
                raise ScoreError(f"{source}: metric {name!r} has {len(rows)} rows, not {n}")
            metrics[name] = (kind, rows)
        groups = obj.get("groups") or {}
        if not all(
            isinstance(v, list) and all(isinstance(i, int) and 0 <= i < n for i in v)
            for v in groups.values()
        ):
            raise ScoreError(f"{source}: malformed groups")
        return cls(str(obj.get("task")), metrics, dict(groups), str(obj.get("inputs", "")))


def fingerprint(refs: Sequence[Sequence[str]]) -> str:
    """A short hash of the references, in order: equal for runs scored on the same inputs."""
    blob = json.dumps([list(seg) for seg in refs], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def write_stats(path: str | os.PathLike, stats: InputStats) -> None:
    from prefixtune.runfolder import write_json

    write_json(path, stats.to_json())


def read_stats(path: str | os.PathLike) -> InputStats:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ScoreError(f"cannot read {path}: {err}") from None
    return InputStats.from_json(obj, str(path))
