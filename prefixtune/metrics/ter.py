"""TER as tercom 0.7.25 computes it, via sacrebleu, spread over the CPU cores.

What tercom does (``java -jar tercom.7.25.jar -h hyp -r ref``, the WebNLG and DART scorers'
call): each line ends in ``(id)``; references with the same id belong to one segment; no
normalisation, punctuation kept, case-insensitive (no ``-s``); per segment the fewest edits
(greedy shifts, then the beam edit distance) over its references, and the reference length is
the AVERAGE length of all its references, an empty one included; the corpus score ("Total TER")
is the sum of edits divided by the sum of those average lengths.

sacrebleu's TER ports the shift search and edit distance with those defaults.  It is pure Python
and slow on long sentences (minutes for WebNLG's 7-triple texts on one core), so segments are
scored in interleaved chunks on a process pool; each returns per-segment (edits, reference length)
pairs, whose sums give the corpus and any subsets (overlapping ones too: several systems, each with
WebNLG's all / seen / unseen) exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

from sacrebleu.metrics import TER

CHUNKS_PER_WORKER = 6


def _ter_stats(hyps: list[str], refs: list[list[str | None]]) -> list[tuple[float, float]]:
    metric = TER()
    out = []
    for hyp, seg in zip(hyps, refs, strict=True):
        present = [r for r in seg if r is not None]
        result = metric.sentence_score(hyp, present)
        out.append((float(result.num_edits), float(result.ref_length)))
    return out


def corpus_ter(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str | None]],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    workers: int | None = None,
) -> dict[str, float | None]:
    """TER on 0-1 for ``"all"`` and for each named group of segment indices (groups may overlap).

    ``None`` in a segment's references means "no such reference" (dropped); an empty string is a
    reference of length 0 and counts in the average reference length, as in tercom.
    """
    workers = workers or min(os.cpu_count() or 1, 8)
    n = len(hyps)
    n_chunks = max(1, min(n, workers * CHUNKS_PER_WORKER))
    chunks = [list(range(c, n, n_chunks)) for c in range(n_chunks)]
    chunks = [c for c in chunks if c]

    def args(chunk: list[int]) -> tuple[list[str], list[list[str | None]]]:
        return [hyps[i] for i in chunk], [list(refs[i]) for i in chunk]

    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_ter_stats, *zip(*(args(c) for c in chunks), strict=True)))
    else:
        parts = [_ter_stats(*args(c)) for c in chunks]
    stats: list[tuple[float, float]] = [(0.0, 0.0)] * n
    for chunk, part in zip(chunks, parts, strict=True):
        for i, pair in zip(chunk, part, strict=True):
            stats[i] = pair

    def rate(selected: Sequence[int]) -> float | None:
        if not selected:
            return None
        edits = sum(stats[i][0] for i in selected)
        length = sum(stats[i][1] for i in selected)
        return edits / length if length > 0 else (1.0 if edits > 0 else 0.0)

    out: dict[str, float | None] = {"all": rate(range(n))}
    for name, idx in (groups or {}).items():
        out[name] = rate(list(idx))
    return out
