"""The DART scorer (``evaluation/run_eval_on_dart.sh``): multi-bleu, METEOR 1.5, tercom.

* BLEU: ``multi-bleu.perl`` on the raw outputs, cased, against the three reference files; a blank
  line (missing reference) is an empty reference, not an absent one: it can be the closest length
  (worth about 1 BLEU on the official test outputs), so it is passed to sacrebleu as ``""``.
* METEOR 1.5 ``-l en -norm -r 8`` (``-norm`` reproduces the official 0.3922; without it 0.3921).
* TER: tercom with the non-empty references.

Scales: BLEU 0-100, METEOR and TER 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefixtune.metrics.bleu import corpus_bleu
from prefixtune.metrics.meteor import meteor
from prefixtune.metrics.ter import corpus_ter


def score_dart(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    bleu = corpus_bleu(hyps, refs, tokenize="none", lowercase=False)
    met = meteor(hyps, refs, normalize=True)["all"]
    present = [[r if r.strip() else None for r in seg] for seg in refs]
    ter = corpus_ter(hyps, present)["all"]
    return {"bleu": bleu, "meteor": float(met), "ter": ter}
