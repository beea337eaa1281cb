"""NIST (Doddington 2002) as the E2E challenge scorer computes it: mteval-v13a's formula.

Why by hand: NLTK's ``corpus_nist`` is the only library NIST in reach, and it is 1.0 to 1.6 points
low with several references (it computes n-gram information and the reference length per
reference stream instead of over all references of a segment), and sacrebleu has no NIST.  The
E2E scorer's Python mode ("pymteval") follows mteval-v13a:

* information of an n-gram = log2(count of its (n-1)-gram prefix / count of the n-gram), both
  counted over every reference of the corpus; for unigrams the prefix count is the number of
  reference words;
* per segment, each hypothesis n-gram earns its information times min(its count, its largest count
  in any one reference of that segment); the sum over segments for each n is divided by the number
  of hypothesis n-grams, and the five quotients are added;
* brevity factor exp(beta * log(min(1, Lsys / Lref))^2) with beta chosen so that a length ratio
  of 1.5 gives 0.5; Lsys = hypothesis words, Lref = sum over segments of the segment's average
  reference length.

Texts are tokenized with mteval's 13a rules and lower-cased, like the E2E scorer's BLEU.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

BETA = -math.log(0.5) / math.log(1.5) ** 2
MAX_N = 5


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def mteval_tokens(text: str) -> list[str]:
    """mteval-v13a tokenization, lower-cased (the E2E scorer is case-insensitive)."""
    return Tokenizer13a()(text.strip()).lower().split()


def corpus_nist(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = MAX_N) -> float:
    """Corpus NIST of ``hyps`` (one string each) against ``refs`` (all references of each)."""
    hyp_toks = [mteval_tokens(h) for h in hyps]
    ref_toks = [[mteval_tokens(r) for r in seg] for seg in refs]

    # Corpus-wide reference n-gram counts; the empty tuple counts reference words.
    ref_counts: Counter[tuple[str, ...]] = Counter()
    for seg in ref_toks:
        for ref in seg:
            ref_counts[()] += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngrams(ref, n))

    def info(ngram: tuple[str, ...]) -> float:
        return math.log2(ref_counts[ngram[:-1]] / ref_counts[ngram])

    gained = [0.0] * (max_n + 1)
    hyp_ngram_total = [0] * (max_n + 1)
    hyp_len = 0
    ref_len = 0.0
    for hyp, seg in zip(hyp_toks, ref_toks, strict=True):
        hyp_len += len(hyp)
        ref_len += sum(len(r) for r in seg) / len(seg)
        for n in range(1, max_n + 1):
            hyp_ngrams = _ngrams(hyp, n)
            hyp_ngram_total[n] += max(len(hyp) - n + 1, 0)
            best: Counter[tuple[str, ...]] = Counter()
            for ref in seg:
                best |= _ngrams(ref, n)  # | keeps the larger count per n-gram
            for ngram, count in hyp_ngrams.items():
                if ngram in best:
                    gained[n] += info(ngram) * min(count, best[ngram])

    score = sum(gained[n] / max(hyp_ngram_total[n], 1) for n in range(1, max_n + 1))
    ratio = hyp_len / ref_len if ref_len else 0.0
    if ratio <= 0:
        return 0.0
    penalty = 1.0 if ratio >= 1 else math.exp(-BETA * math.log(ratio) ** 2)
    return score * penalty
