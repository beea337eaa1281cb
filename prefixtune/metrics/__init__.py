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
from prefixtune.metrics.stats import InputStats, fingerprint
from prefixtune.tasks import TASKS

__all__ = [
    "TASKS",
    "ScoreError",
    "score",
    "score_examples",
    "score_many",
    "score_many_with_stats",
    "score_with_stats",
]


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
    nist_mode: str = "python",
) -> dict[str, Any]:
    """Score ``hyps`` (one per input) against ``refs`` (all references of each input).

    Returns e2e ``{bleu, nist, meteor, rouge_l, cider}``; webnlg ``{all, seen, unseen}`` each
    ``{bleu, meteor, ter}`` (seen / unseen are ``None`` without ``seen`` flags); dart
    ``{bleu, meteor, ter}``; xsum ``{rouge1, rouge2, rougeL, rougeLsum}``.  ``nist_mode`` (E2E):
    ``"python"`` the E2E scorer's ``-p`` mode, as the paper; ``"perl"`` its default mode's NIST.
    """
    return score_many(task, [(hyps, refs, seen)], nist_mode=nist_mode)[0]


def score_with_stats(
    task: str,
    hyps: list[str],
    refs: list[list[str]],
    *,
    seen: list[bool] | None = None,
    nist_mode: str = "python",
) -> tuple[dict[str, Any], InputStats]:
    """``score`` and the per-input statistics behind it (``stats.py``), from one scoring run."""
    return score_many_with_stats(task, [(hyps, refs, seen)], nist_mode=nist_mode)[0]


def score_many(
    task: str,
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]], Sequence[bool] | None]],
    *,
    nist_mode: str = "python",
) -> list[dict[str, Any]]:
    """``score`` for several systems ``(hyps, refs, seen)`` at once, with the same results: the
    Java tools (PTB tokenizer, METEOR) and the TER pool start once for all of them."""
    return [scores for scores, _ in score_many_with_stats(task, systems, nist_mode=nist_mode)]


def score_many_with_stats(
    task: str,
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]], Sequence[bool] | None]],
    *,
    nist_mode: str = "python",
) -> list[tuple[dict[str, Any], InputStats]]:
    """``score_many`` with each system's per-input statistics."""
    results = _score_many(task, systems, nist_mode)
    for (_, refs, _), (_, stats) in zip(systems, results, strict=True):
        stats.inputs = fingerprint(refs)
    return results


def _score_many(
    task: str,
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]], Sequence[bool] | None]],
    nist_mode: str,
) -> list[tuple[dict[str, Any], InputStats]]:
    from prefixtune.metrics.nist import NIST_MODES

    if nist_mode not in NIST_MODES:
        raise ScoreError(f"unknown NIST mode {nist_mode!r}; choose one of: {', '.join(NIST_MODES)}")
    if task != "e2e" and nist_mode != "python":
        raise ScoreError("the NIST mode only applies to e2e")
    prepared = []
    for hyps, refs, seen in systems:
        clean_refs = _check(task, hyps, refs)
        if task == "dart":  # its tools split on ASCII whitespace only (see dart.py)
            from prefixtune.metrics.dart import ascii_squeeze

            clean_hyps = [ascii_squeeze(h) for h in hyps]
        else:
            clean_hyps = [" ".join(h.split()) for h in hyps]
        if seen is not None and (task != "webnlg" or len(seen) != len(hyps)):
            if task != "webnlg":
                raise ScoreError("seen flags only apply to webnlg")
            raise ScoreError(f"{len(seen)} seen flags for {len(hyps)} outputs")
        prepared.append((clean_hyps, clean_refs, None if seen is None else list(seen)))
    if task == "e2e":
        from prefixtune.metrics.e2e import score_e2e_many

        return score_e2e_many([(h, r) for h, r, _ in prepared], nist_mode=nist_mode)
    if task == "webnlg":
        from prefixtune.metrics.webnlg import score_webnlg_many

        return score_webnlg_many(prepared)
    if task == "dart":
        from prefixtune.metrics.dart import score_dart_many

        return score_dart_many([(h, r) for h, r, _ in prepared])
    from prefixtune.metrics.xsum import score_xsum

    return [score_xsum(h, r) for h, r, _ in prepared]


def score_examples(
    task: str, hyps: Sequence[str], examples: Sequence
) -> tuple[dict[str, Any], InputStats]:
    """``score_with_stats`` for a split's examples (prefixtune.data.Example): their references,
    and WebNLG's seen/unseen categories."""
    refs = [list(e.references) for e in examples]
    seen = [bool(e.meta.get("seen")) for e in examples] if task == "webnlg" else None
    return score_with_stats(task, list(hyps), refs, seen=seen)
