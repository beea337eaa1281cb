"""Corpus BLEU through sacrebleu, set up per official scorer.

sacrebleu reproduces multi-bleu.perl and mteval's BLEU exactly once it sees the same tokens and
casing (closest reference length, shorter on ties; corpus-level n-gram sums).  What differs per
scorer is only the preparation: E2E tokenizes with mteval-13a and lower-cases; WebNLG feeds its
normalised text untokenized and lower-cased (``multi-bleu -lc``); DART feeds raw, cased text.
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU


def ref_streams(refs: Sequence[Sequence[str | None]]) -> list[list[str | None]]:
    """Per-segment reference lists -> sacrebleu's reference streams; ``None`` pads ragged sets.

    sacrebleu ignores ``None`` (reference absent) but keeps ``""`` (a reference of length 0, which
    can win the closest-length choice, as a blank line in a multi-bleu reference file does).
    """
    width = max((len(r) for r in refs), default=1)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def _bleu(tokenize: str, lowercase: bool) -> BLEU:
    return BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method="none", force=True)


def bleu_rows(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str | None]],
    *,
    tokenize: str,
    lowercase: bool,
) -> list[list[float]]:
    """Per input, sacrebleu's BLEU statistics: hypothesis length, effective reference length,
    matched and total n-grams (n = 1..4); ``bleu_from`` of their column sums is the corpus BLEU.
    (``_extract_corpus_statistics`` is the call sacrebleu's own paired tests use.)"""
    if not hyps:
        return []
    stats = _bleu(tokenize, lowercase)._extract_corpus_statistics(list(hyps), ref_streams(refs))
    return [[float(v) for v in row] for row in stats]


def bleu_from(sums: Sequence[float]) -> float:
    """Corpus BLEU on 0-100 from the column sums of ``bleu_rows`` (no smoothing)."""
    return float(
        BLEU.compute_bleu(
            correct=[int(v) for v in sums[2:6]],
            total=[int(v) for v in sums[6:10]],
            sys_len=int(sums[0]),
            ref_len=int(sums[1]),
            smooth_method="none",
        ).score
    )


def corpus_bleu(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str | None]],
    *,
    tokenize: str,
    lowercase: bool,
) -> float:
    """Corpus BLEU on 0-100 (multi-bleu prints it so; the E2E scorer prints it on 0-1)."""
    if not hyps:
        return 0.0
    return float(_bleu(tokenize, lowercase).corpus_score(list(hyps), ref_streams(refs)).score)
