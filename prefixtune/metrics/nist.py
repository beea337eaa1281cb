"""E2E BLEU and NIST as the E2E challenge scorer computes them, in its two modes.

``measure_scores.py`` (tuetschek/e2e-metrics) computes BLEU and NIST either with its Python port
``metrics/pymteval.py`` (``-p``, the paper's choice and our default) or, by default, with the Perl
``mteval/mteval-v13a-sig.pl``.  Both tokenize with mteval-v13a's rules (sacrebleu's ``13a``
tokenizer is the same regexes) and are case-insensitive; all references of an MR count.

Why by hand: sacrebleu has no NIST; NLTK's ``corpus_nist`` is 1.0 to 1.6 points low with several
references (n-gram information and reference length per reference stream); and the Python mode
has quirks no library shares, which matter for short or empty outputs:

* an empty output is ONE empty token (``"".split(" ")``), so it has length 1;
* the number of hypothesis n-grams of a segment is ``len - n + 1`` even when negative (a
  two-word output adds -1 trigrams), for BLEU and NIST alike;
* BLEU: closest reference length (shorter on ties); brevity penalty ``exp(1 - r/c)`` when
  ``c <= r``; precisions floored at 1e-15 / 1e-9 instead of zero (so no exact 0 BLEU).

NIST (Doddington 2002): the information of an n-gram is log2(count of its (n-1)-gram prefix /
count of the n-gram), counted over every reference of the corpus (for unigrams the prefix count
is the number of reference words); each hypothesis n-gram earns its information times min(its
count, its largest count in one reference of the segment); per n the sum is divided by the number
of hypothesis n-grams and the five quotients are added; the brevity factor is
exp(-beta log(min(1, Lsys / Lref))^2), beta chosen so that a ratio of 1.5 gives 0.5.  The modes
differ in Lref and in small details:

* ``python``: Lref = sum over segments of the segment's average reference length.
* ``perl`` (mteval-v13a-sig.pl, the challenge's leaderboard numbers): Lref = all reference words
  of the corpus / (non-empty references / segments), the corpus-average reference count; the E2E
  wrapper pads MRs with fewer references with empty ones, which add no words and are not counted.
  Perl also lower-cases ASCII letters only (``tr/[A-Z]/[a-z]/``), counts ``max(len - n + 1, 0)``
  n-grams, gives an empty output 0 words, and, a Perl truth-value quirk, takes an n-gram whose
  prefix is the single token "0" as if it had no prefix (information against the total word
  count).  We reproduce that in Python so that scoring needs no Perl at run time.

The penalty difference is real and large: 7.97 (python) against 8.11 (perl) for the project's
committed prefix-tuning test outputs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

BETA = -math.log(0.5) / math.log(1.5) ** 2
MAX_N = 5
NIST_MODES = ("python", "perl")

_TOKENIZE = Tokenizer13a()
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WS = re.compile(r"\s+")

Ngram = tuple[str, ...]


def _ngrams(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def python_tokens(text: str) -> list[str]:
    """pymteval's tokens: mteval-v13a rules, lower-cased; ``""`` gives ``[""]``."""
    return _TOKENIZE(text.strip()).lower().split(" ")


def perl_tokens(text: str) -> list[str]:
    """mteval-v13a-sig.pl's tokens: ASCII-only lower-casing, split on whitespace."""
    return [t for t in _WS.split(_TOKENIZE(text.strip().translate(_ASCII_UPPER))) if t]


def e2e_bleu_rows(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[list[float]]:
    """Per input, pymteval's BLEU statistics: matched n-grams (n = 1..4), hypothesis n-grams
    (n = 1..4, ``len - n + 1`` even when negative), the closest reference length (shorter on
    ties).  Their column sums give the corpus BLEU (``e2e_bleu_from``)."""
    rows = []
    for hyp, seg in zip(hyps, refs, strict=True):
        h = python_tokens(hyp)
        rs = [python_tokens(r) for r in seg]
        hits, cand = [], []
        for n in range(1, 5):
            best: Counter[Ngram] = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            hits.append(sum(min(c, best[g]) for g, c in _ngrams(h, n).items()))
            cand.append(len(h) - n + 1)  # may be negative, as in pymteval
        ref_len = len(min(rs, key=lambda r: (abs(len(r) - len(h)), len(r))))
        rows.append([*hits, *cand, ref_len])
    return rows


def e2e_bleu_from(sums: Sequence[float]) -> float:
    """Corpus BLEU on 0-100 from the column sums of ``e2e_bleu_rows``."""
    hits, cand, ref_len = sums[0:4], sums[4:8], sums[8]
    bp = 1.0
    if cand[0] <= ref_len:
        bp = math.exp(1.0 - ref_len / (cand[0] if cand[0] else 1e-5))
    log_prec = sum(
        math.log(max(hi, 1e-15) / max(c, 1e-9)) for hi, c in zip(hits, cand, strict=True)
    )
    return 100.0 * bp * math.exp(log_prec / 4)


def e2e_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU on 0-100 exactly as pymteval's ``BLEUScore`` (4-grams, case-insensitive)."""
    return e2e_bleu_from(column_sums(e2e_bleu_rows(hyps, refs)))


def column_sums(rows: Sequence[Sequence[float]]) -> list[float]:
    """Per-column sums, added in input order (the order the official scorers accumulate in)."""
    sums = [0.0] * (len(rows[0]) if rows else 0)
    for row in rows:
        for j, v in enumerate(row):
            sums[j] += v
    return sums


def _penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-BETA * math.log(ratio) ** 2)


def nist_rows(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    max_n: int = MAX_N,
    *,
    mode: str = "python",
) -> list[list[float]]:
    """Per input, NIST's statistics in the scorer's mode: information gained (n = 1..max_n),
    hypothesis n-grams (n = 1..max_n), hypothesis length, average reference length, reference
    words, references, and 1 (counting inputs).  The n-gram information comes from all of
    ``refs`` at once; a corpus score over a subset or a resample of these rows (``nist_from``)
    keeps that information fixed, the usual convention for resampling NIST."""
    if mode not in NIST_MODES:
        raise ValueError(f"unknown NIST mode {mode!r}; choose one of: {', '.join(NIST_MODES)}")
    perl = mode == "perl"
    tokens = perl_tokens if perl else python_tokens
    hyp_toks = [tokens(h) for h in hyps]
    ref_toks = [[tokens(r) for r in seg if not perl or r.strip()] for seg in refs]

    # Corpus-wide reference n-gram counts; the empty tuple counts reference words.
    ref_counts: Counter[Ngram] = Counter()
    for seg in ref_toks:
        for ref in seg:
            ref_counts[()] += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngrams(ref, n))

    def info(ngram: Ngram) -> float:
        prefix = ngram[:-1]
        if perl and prefix == ("0",):  # Perl: `$mgram ? ... : $tot_wrds` and "0" is false
            prefix = ()
        return math.log2(ref_counts[prefix] / ref_counts[ngram])

    rows = []
    for hyp, seg in zip(hyp_toks, ref_toks, strict=True):
        gained, totals = [0.0] * max_n, [0] * max_n
        for n in range(1, max_n + 1):
            count = len(hyp) - n + 1
            totals[n - 1] = max(count, 0) if perl else count
            best: Counter[Ngram] = Counter()
            for ref in seg:
                best |= _ngrams(ref, n)  # | keeps the larger count per n-gram
            for ngram, c in _ngrams(hyp, n).items():
                if ngram in best:
                    gained[n - 1] += info(ngram) * min(c, best[ngram])
        avg_ref_len = sum(len(r) for r in seg) / max(len(seg), 1)
        ref_words = sum(len(r) for r in seg)
        rows.append([*gained, *totals, len(hyp), avg_ref_len, ref_words, len(seg), 1])
    return rows


def nist_from(sums: Sequence[float], *, mode: str = "python") -> float:
    """Corpus NIST from the column sums of ``nist_rows``."""
    max_n = (len(sums) - 5) // 2
    gained, totals = sums[:max_n], sums[max_n : 2 * max_n]
    hyp_len, avg_ref_len, ref_words, n_refs, n_inputs = sums[2 * max_n : 2 * max_n + 5]
    if mode == "perl":
        score = sum(g / max(t, 1) for g, t in zip(gained, totals, strict=True))
        ref_len = ref_words / (n_refs / n_inputs) if n_refs and ref_words else 0.0
    else:
        score = sum(g / t for g, t in zip(gained, totals, strict=True) if t)
        ref_len = avg_ref_len
    if ref_len <= 0:
        return 0.0
    return score * _penalty(hyp_len / ref_len)


def corpus_nist(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    max_n: int = MAX_N,
    *,
    mode: str = "python",
) -> float:
    """Corpus NIST of ``hyps`` against ``refs`` (all references of each), in the scorer's mode."""
    rows = nist_rows(hyps, refs, max_n, mode=mode)
    return nist_from(column_sums(rows), mode=mode)
