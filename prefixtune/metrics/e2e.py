"""The E2E NLG challenge scorer (e2e-metrics, ``measure_scores.py -p``: Python BLEU/NIST).

* BLEU, NIST: corpus level over all references of an MR, on mteval-13a tokens, lower-cased
  (its ``pymteval`` port of mteval-v13a); BLEU via sacrebleu, NIST by hand (see ``nist.py``).
* METEOR, ROUGE-L, CIDEr: the COCO caption evaluator, which first runs every text through the
  PTB tokenizer (lower-cased, punctuation tokens removed, see ``ptb.py``); METEOR 1.5 with
  ``-l en -norm``, ROUGE-L (beta 1.2, mean of segment scores) and CIDEr-D from pycocoevalcap.

Scales: BLEU 0-100 (the scorer prints 0-1: 72.03 here is its 0.7203), NIST and CIDEr unbounded,
METEOR and ROUGE-L 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from prefixtune.metrics.bleu import corpus_bleu
from prefixtune.metrics.meteor import meteor
from prefixtune.metrics.nist import corpus_nist
from prefixtune.metrics.ptb import ptb_tokenize


def score_e2e(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    flat = ptb_tokenize([*hyps, *(r for seg in refs for r in seg)])
    tok_hyps, rest = flat[: len(hyps)], iter(flat[len(hyps) :])
    tok_refs = [[next(rest) for _ in seg] for seg in refs]
    # The METEOR jar spends ~10 s loading its paraphrase table: let it run meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        met = pool.submit(meteor, tok_hyps, tok_refs, normalize=True)
        bleu = corpus_bleu(hyps, refs, tokenize="13a", lowercase=True)
        nist = corpus_nist(hyps, refs)
        gts = {i: seg for i, seg in enumerate(tok_refs)}
        res = {i: [hyp] for i, hyp in enumerate(tok_hyps)}
        rouge_l, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        meteor_all = met.result()["all"]
    return {
        "bleu": bleu,
        "nist": float(nist),
        "meteor": float(meteor_all),
        "rouge_l": float(rouge_l),
        "cider": float(cider),
    }
