"""The E2E NLG challenge scorer (tuetschek/e2e-metrics ``measure_scores.py``).

What it does and what we do:

* Input: one output per line (``line.strip()``); references one a line, a blank line between
  MRs; every reference of an MR counts.
* BLEU and NIST (``nist.py``): mteval-v13a tokenization, case-insensitive, corpus level.  With
  ``-p`` (the paper's mode, our default ``nist_mode="python"``) the Python port pymteval, which we
  reproduce quirk for quirk (an empty output has length 1; negative n-gram counts for outputs
  shorter than n).  Without ``-p`` NIST comes from mteval-v13a-sig.pl, whose length penalty
  differs; ``nist_mode="perl"`` reproduces that NIST (BLEU stays the Python mode's).
* METEOR, ROUGE-L, CIDEr: the bundled COCO caption evaluator, which first runs every text
  through the Stanford PTB tokenizer (lower-cased, punctuation tokens removed, see ``ptb.py``);
  METEOR 1.5 ``-stdio -l en -norm`` (sums of the per-segment statistics), ROUGE-L (beta 1.2, mean
  of segment scores) and CIDEr-D, both from pycocoevalcap, the same code the scorer ships.

Scales: BLEU 0-100 (the scorer prints 0-1: 72.03 here is its 0.7203), NIST and CIDEr unbounded,
METEOR and ROUGE-L 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from prefixtune.metrics.meteor import meteor
from prefixtune.metrics.nist import corpus_nist, e2e_bleu
from prefixtune.metrics.ptb import ptb_tokenize


def score_e2e(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], *, nist_mode: str = "python"
) -> dict[str, float]:
    return score_e2e_many([(hyps, refs)], nist_mode=nist_mode)[0]


def score_e2e_many(
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]],
    *,
    nist_mode: str = "python",
) -> list[dict[str, float]]:
    """Several systems at once: one PTB tokenizer run and one METEOR jar run for all of them."""
    texts: list[str] = []
    for hyps, refs in systems:
        texts += [*hyps, *(r for seg in refs for r in seg)]
    flat = iter(ptb_tokenize(texts))
    tokenized = []
    for hyps, refs in systems:
        tok_hyps = [next(flat) for _ in hyps]
        tok_refs = [[next(flat) for _ in seg] for seg in refs]
        tokenized.append((tok_hyps, tok_refs))
    all_hyps = [h for tok_hyps, _ in tokenized for h in tok_hyps]
    all_refs = [seg for _, tok_refs in tokenized for seg in tok_refs]
    groups, start = {}, 0
    for k, (tok_hyps, _) in enumerate(tokenized):
        groups[str(k)] = range(start, start + len(tok_hyps))
        start += len(tok_hyps)
    # The METEOR jar spends ~10 s loading its paraphrase table: let it run meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        met = pool.submit(meteor, all_hyps, all_refs, normalize=True, subsets=groups)
        out = []
        for (hyps, refs), (tok_hyps, tok_refs) in zip(systems, tokenized, strict=True):
            gts = {i: seg for i, seg in enumerate(tok_refs)}
            res = {i: [hyp] for i, hyp in enumerate(tok_hyps)}
            rouge_l, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            out.append(
                {
                    "bleu": e2e_bleu(hyps, refs),
                    "nist": float(corpus_nist(hyps, refs, mode=nist_mode)),
                    "rouge_l": float(rouge_l),
                    "cider": float(cider),
                }
            )
        scores = met.result()
    for k, result in enumerate(out):
        result["meteor"] = float(scores[str(k)])
    return [{key: r[key] for key in ("bleu", "nist", "meteor", "rouge_l", "cider")} for r in out]
