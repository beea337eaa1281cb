"""The DART scorer (``evaluation/run_eval_on_dart.sh``): multi-bleu, METEOR 1.5, tercom.

What each official step reads, and what we pass (``refs`` = the three aligned reference files,
``ref_all-delex-reference{0,1,2}.lex``, a blank line for a missing reference):

* BLEU: ``multi-bleu.perl ref0 ref1 ref2 < output`` on the raw output, cased (no ``-lc``; the
  reference files are lower-cased and tokenized, the outputs usually not, as in the paper).  A
  blank line is an empty reference whose length 0 can win the closest-length choice (worth about
  1 BLEU on the official test outputs), so all three go to sacrebleu, a missing one as ``""``.
* METEOR 1.5 ``-l en -norm -r 8`` on the file ``prepare_files.py`` writes: per output, reference 0
  as it is (blank or not), then references 1 and 2 if not blank, then blank lines up to 8.  The
  jar keeps the best-scoring reference (the first on ties), so we pass the same eight, in the same
  order (``-norm`` reproduces the official 0.3922; without it 0.3921).
* TER: tercom on ``prepare_files.py``'s TER file: reference 0 always (an empty one too, which then
  counts as length 0 in the average reference length), references 1 and 2 if not blank.

Scales: BLEU 0-100, METEOR and TER 0-1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from prefixtune.metrics.bleu import bleu_from, bleu_rows
from prefixtune.metrics.meteor import meteor_rows
from prefixtune.metrics.nist import column_sums
from prefixtune.metrics.stats import InputStats
from prefixtune.metrics.ter import ter_from, ter_rows

METEOR_REFS = 8  # prepare_files.py pads every reference set to 8 lines for ``-r 8``

# multi-bleu.perl (reading bytes) and tercom (Java ``\\s``) split words on ASCII whitespace
# only: a no-break space or another Unicode space stays inside its word there.  sacrebleu splits
# on every Unicode space, so for BLEU and TER those are mapped to private-use characters (which
# no reference or output uses) that keep the word in one piece and still match the same word.
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_GLUE = {
    cp: 0xF0000 + cp
    for cp in [0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029]
    + [0x202F, 0x205F, 0x3000]
}


def glue(text: str) -> str:
    """``text`` with its non-ASCII spaces made word characters, as multi-bleu and tercom see it."""
    return text.translate(_GLUE)


def ascii_squeeze(text: str) -> str:
    """Whitespace squeezed the way the DART scorer's tools see it: ASCII whitespace only."""
    return " ".join(w for w in re.split(f"[{_ASCII_SPACE}]+", text) if w)


def meteor_refs(seg: Sequence[str]) -> list[str]:
    """``prepare_files.py``'s METEOR reference lines for one output."""
    kept = [seg[0], *(r for r in seg[1:] if r.strip())] if seg else [""]
    return kept + [""] * max(0, METEOR_REFS - len(kept))


def ter_refs(seg: Sequence[str]) -> list[str | None]:
    """``prepare_files.py``'s TER references for one output (reference 0 even when blank)."""
    return [seg[0], *(r for r in seg[1:] if r.strip())] if seg else [""]


def score_dart_many(
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]],
) -> list[tuple[dict[str, float], InputStats]]:
    """Several systems at once: one METEOR jar run and one TER pool for all of them.  Each
    system's scores come with its per-input statistics (``stats.py``)."""
    all_hyps: list[str] = []
    all_refs: list[list[str]] = []
    groups: dict[str, list[int]] = {}
    for k, (hyps, refs) in enumerate(systems):
        start = len(all_hyps)
        all_hyps += list(hyps)
        all_refs += [list(seg) for seg in refs]
        groups[str(k)] = list(range(start, len(all_hyps)))
    met, met_rows = meteor_rows(
        all_hyps, [meteor_refs(seg) for seg in all_refs], normalize=True, subsets=groups
    )
    glued_refs = [[glue(r) for r in seg] for seg in all_refs]
    ter_all = ter_rows([glue(h) for h in all_hyps], [ter_refs(seg) for seg in glued_refs])
    out = []
    for k, (hyps, refs) in enumerate(systems):
        rows = bleu_rows(
            [glue(h) for h in hyps],
            [[glue(r) for r in seg] for seg in refs],
            tokenize="none",
            lowercase=False,
        )
        idx = groups[str(k)]
        ter = [ter_all[i] for i in idx]
        scores = {
            "bleu": bleu_from(column_sums(rows)) if rows else 0.0,
            "meteor": float(met[str(k)]),
            "ter": ter_from(*column_sums(ter)) if ter else 0.0,
        }
        stats = InputStats(
            "dart",
            {
                "bleu": ("sacrebleu_bleu", np.asarray(rows)),
                "meteor": ("meteor15", np.asarray([met_rows[i] for i in idx])),
                "ter": ("ter", np.asarray(ter)),
            },
        )
        out.append((scores, stats))
    return out
