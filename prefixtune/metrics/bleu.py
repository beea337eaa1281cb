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
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method="none", force=True)
    return float(bleu.corpus_score(list(hyps), ref_streams(refs)).score)
