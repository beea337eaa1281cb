"""XSum: Google's rouge-score with Porter stemming, as the paper's summarisation code used.

Per summary the F-measure of rouge1, rouge2, rougeL and rougeLsum (rougeLsum splits sentences at
newlines; one-line summaries make it equal to rougeL); with several references the best one per
metric (``score_multi``).  Reported: the plain mean over summaries, on 0-100 like the paper's
tables (the paper's script reported the bootstrap median, which lies close to the mean).
"""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def score_xsum(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, seg in zip(hyps, refs, strict=True):
        present = [r for r in seg if r.strip()] or [""]
        result = scorer.score_multi(present, hyp)
        for name in ROUGE_TYPES:
            totals[name] += result[name].fmeasure
    n = max(len(hyps), 1)
    return {name: 100.0 * totals[name] / n for name in ROUGE_TYPES}
