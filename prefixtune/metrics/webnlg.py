"""The WebNLG 2017 challenge scorer: its text preparation, multi-bleu ``-lc``, METEOR 1.5, tercom.

What the official scripts do (``webnlg-automatic-evaluation``: ``evaluation.py``,
``bleu_eval_3ref.sh``, ``meteor_eval.sh``, ``ter_eval.sh``; run by the DART repository's
``run_eval_on_webnlg.sh``), and what we do for each step:

* Text: outputs and references go through the challenge preparation (``webnlg_text.py``; the two
  sides differ in the order of unidecode and the punctuation split).
* References: the ``<lex>`` texts of each entry in file order; every metric uses the FIRST THREE.
  ``bleu_ref_files_gen`` writes one file per reference position with a blank line where an entry
  has fewer, and ``bleu_eval_3ref.sh`` passes files 0, 1 and 2 only (the 17 test entries with 4-8
  texts lose the rest); the METEOR file holds three lines per entry, blank-padded
  (``meteor_3ref_files_gen``); the tercom file lists at most three, unpadded.
* BLEU: ``multi-bleu.perl -lc ref0 ref1 ref2``.  A blank line is an empty reference: its length
  0 takes part in the closest-reference-length choice (an output of 1-3 words next to an entry
  with 1-2 texts gets a shorter effective reference).  So the references go to sacrebleu
  (untokenized, lower-cased) padded with ``""`` to three; ``None`` would drop them.
* METEOR 1.5 ``-l en -norm -r 3`` on the blank-padded triples: the jar scores each of the three
  and keeps the best, so blank references are passed too, in the same positions.
* TER: tercom on the (at most three) non-blank references; see ``ter.py``.
* seen / unseen: the subsets of the 10 training categories and of the 5 others, scored apart
  (``old-cat`` / ``new-cat`` files); the caller's flags say which is which.

An earlier version kept five references and dropped blank ones: that fitted the nine printed
scores of one system (the BART file in ../shared/data/scoring) with our then NFKD-based text
preparation, and was 0.05-0.07 BLEU off for a rule-based system; with the real preparation the
official three-reference rule reproduces both.  Scales: BLEU 0-100, METEOR and TER 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefixtune.metrics.bleu import bleu_from, bleu_rows
from prefixtune.metrics.meteor import meteor_rows
from prefixtune.metrics.nist import column_sums
from prefixtune.metrics.stats import InputStats
from prefixtune.metrics.ter import ter_from, ter_rows
from prefixtune.metrics.webnlg_text import normalise_output, normalise_reference

# The challenge scripts use three references per entry for every metric (see above).
MAX_REFS = 3


def prepare(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """Outputs and the first three references, prepared; references padded with ``""`` to 3."""
    norm_hyps = [normalise_output(h) for h in hyps]
    norm_refs = [
        ([normalise_reference(r) for r in seg[:MAX_REFS]] + [""] * MAX_REFS)[:MAX_REFS]
        for seg in refs
    ]
    return norm_hyps, norm_refs


def score_webnlg_many(
    systems: Sequence[tuple[Sequence[str], Sequence[Sequence[str]], Sequence[bool] | None]],
) -> list[tuple[dict[str, dict[str, float | None] | None], InputStats]]:
    """Several systems at once: one METEOR jar run and one TER pool for all of them.  Each
    system's scores come with its per-input statistics (``stats.py``)."""
    all_hyps: list[str] = []
    all_refs: list[list[str]] = []
    groups: dict[str, list[int]] = {}
    spans = []
    for k, (hyps, refs, seen) in enumerate(systems):
        norm_hyps, norm_refs = prepare(hyps, refs)
        start = len(all_hyps)
        all_hyps += norm_hyps
        all_refs += norm_refs
        parts = {"all": list(range(start, len(all_hyps)))}
        if seen is not None:
            parts["seen"] = [start + i for i, s in enumerate(seen) if s]
            parts["unseen"] = [start + i for i, s in enumerate(seen) if not s]
        for name, idx in parts.items():
            groups[f"{k}/{name}"] = idx
        spans.append((parts, seen is not None))

    met, met_rows = meteor_rows(all_hyps, all_refs, normalize=True, subsets=groups)
    bleu_rows_all = bleu_rows(all_hyps, all_refs, tokenize="none", lowercase=True)
    present = [[r if r else None for r in seg] for seg in all_refs]
    ter_all = ter_rows(all_hyps, present)
    results = []
    for k, (parts, has_seen) in enumerate(spans):
        out: dict[str, dict[str, float | None] | None] = {}
        for name, idx in parts.items():
            if not idx:
                out[name] = {"bleu": None, "meteor": None, "ter": None}
                continue
            bleu = bleu_from(column_sums([bleu_rows_all[i] for i in idx]))
            ter = ter_from(*column_sums([ter_all[i] for i in idx]))
            out[name] = {"bleu": bleu, "meteor": met[f"{k}/{name}"], "ter": ter}
        if not has_seen:
            out["seen"] = out["unseen"] = None
        idx = parts["all"]
        start = idx[0] if idx else 0
        stats = InputStats(
            "webnlg",
            {
                "bleu": ("sacrebleu_bleu", np.asarray([bleu_rows_all[i] for i in idx])),
                "meteor": ("meteor15", np.asarray([met_rows[i] for i in idx])),
                "ter": ("ter", np.asarray([ter_all[i] for i in idx])),
            },
            {g: [i - start for i in parts[g]] for g in ("seen", "unseen") if has_seen},
        )
        results.append((out, stats))
    return results
