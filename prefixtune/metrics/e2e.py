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

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from prefixtune.metrics.meteor import meteor_rows
from prefixtune.metrics.nist import column_sums, e2e_bleu_from, e2e_bleu_rows, nist_from, nist_rows
from prefixtune.metrics.ptb import ptb_tokenize
from prefixtune.metrics.stats import InputStats, mean_rows


def score_e2e_many(
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]],
    *,
    nist_mode: str = "python",
) -> list[tuple[dict[str, float], InputStats]]:
    """Several systems at once: one PTB tokenizer run and one METEOR jar run for all of them.
    Each system's scores come with its per-input statistics (``stats.py``)."""
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
        met = pool.submit(meteor_rows, all_hyps, all_refs, normalize=True, subsets=groups)
        out = []
        for (hyps, refs), (tok_hyps, tok_refs) in zip(systems, tokenized, strict=True):
            gts = {i: seg for i, seg in enumerate(tok_refs)}
            res = {i: [hyp] for i, hyp in enumerate(tok_hyps)}
            rouge_l, rouge_segments = Rouge().compute_score(gts, res)
            cider, cider_segments = Cider().compute_score(gts, res)
            bleu_rows = e2e_bleu_rows(hyps, refs)
            nist = nist_rows(hyps, refs, mode=nist_mode)
            scores = {
                "bleu": e2e_bleu_from(column_sums(bleu_rows)),
                "nist": float(nist_from(column_sums(nist), mode=nist_mode)),
                "rouge_l": float(rouge_l),
                "cider": float(cider),
            }
            rows = {
                "bleu": ("pymteval_bleu", bleu_rows),
                "nist": ("pymteval_nist" if nist_mode == "python" else "mteval_nist", nist),
                "rouge_l": ("mean", mean_rows(rouge_segments)),
                "cider": ("mean", mean_rows(cider_segments)),
            }
            out.append((scores, rows))
        meteor_scores, meteor_segments = met.result()
    results = []
    for k, (scores, rows) in enumerate(out):
        scores["meteor"] = float(meteor_scores[str(k)])
        span = groups[str(k)]
        rows["meteor"] = ("meteor15", meteor_segments[span.start : span.stop])
        order = ("bleu", "nist", "meteor", "rouge_l", "cider")
        stats = {key: (rows[key][0], np.asarray(rows[key][1], dtype=np.float64)) for key in order}
        results.append(({key: scores[key] for key in order}, InputStats("e2e", stats)))
    return results
