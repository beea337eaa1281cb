"""Scores of the official scorers the paper used, one module per scorer.

``score(task, hyps, refs, seen=...)`` is the one entry point; inputs are checked here so that the
task modules can assume one hypothesis and a non-empty list of references per input.

Conventions (also in ``prefixtune-score --help``):

* BLEU on 0-100; METEOR, TER, ROUGE-L (E2E) on 0-1 as the official scripts print them; NIST and
  CIDEr unbounded; XSum ROUGE as rouge-score F-measures on 0-100.
* An empty (or blank) hypothesis is scored as an empty output: it matches nothing and counts as
  length 0.  (The paper's generation code wrote "Error" for empty generations; we do not.)
* A missing reference is ``""``: DART keeps it for BLEU as multi-bleu does; elsewhere it is
  dropped.  Every input needs at least one non-empty reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefixtune.metrics.errors import ScoreError
from prefixtune.tasks import TASKS

__all__ = ["TASKS", "ScoreError", "score", "score_examples"]


def _check(task: str, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[list[str]]:
    if task not in TASKS:
        raise ScoreError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if len(hyps) != len(refs):
        raise ScoreError(f"{len(hyps)} outputs but {len(refs)} inputs with references")
    if not hyps:
        raise ScoreError("nothing to score: no outputs")
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise ScoreError(f"output {i + 1} is {type(h).__name__}, not str")
    clean: list[list[str]] = []
    for i, seg in enumerate(refs):
        if isinstance(seg, str):
            raise ScoreError(f"references of input {i + 1} must be a list of strings, not a str")
        seg = [r.strip() for r in seg]
        if not any(seg):
            raise ScoreError(f"input {i + 1} has no non-empty reference")
        clean.append(seg if task == "dart" else [r for r in seg if r])
    return clean


def score(
    task: str,
    hyps: list[str],
    refs: list[list[str]],
    *,
    seen: list[bool] | None = None,
) -> dict[str, Any]:
    """Score ``hyps`` (one per input) against ``refs`` (all references of each input).

    Returns e2e ``{bleu, nist, meteor, rouge_l, cider}``; webnlg ``{all, seen, unseen}`` each
    ``{bleu, meteor, ter}`` (seen / unseen are ``None`` without ``seen`` flags); dart
    ``{bleu, meteor, ter}``; xsum ``{rouge1, rouge2, rougeL, rougeLsum}``.
    """
    clean_refs = _check(task, hyps, refs)
    clean_hyps = [" ".join(h.split()) for h in hyps]
    if seen is not None and (task != "webnlg" or len(seen) != len(hyps)):
        if task != "webnlg":
            raise ScoreError("seen flags only apply to webnlg")
        raise ScoreError(f"{len(seen)} seen flags for {len(hyps)} outputs")
    if task == "e2e":
        from prefixtune.metrics.e2e import score_e2e

        return score_e2e(clean_hyps, clean_refs)
    if task == "webnlg":
        from prefixtune.metrics.webnlg import score_webnlg

        return score_webnlg(clean_hyps, clean_refs, None if seen is None else list(seen))
    if task == "dart":
        from prefixtune.metrics.dart import score_dart

        return score_dart(clean_hyps, clean_refs)
    from prefixtune.metrics.xsum import score_xsum

    return score_xsum(clean_hyps, clean_refs)


def score_examples(task: str, hyps: Sequence[str], examples: Sequence) -> dict[str, Any]:
    """``score`` for a split's examples (prefixtune.data.Example): their references, and
    WebNLG's seen/unseen categories."""
    refs = [list(e.references) for e in examples]
    seen = [bool(e.meta.get("seen")) for e in examples] if task == "webnlg" else None
    return score(task, list(hyps), refs, seen=seen)
