"""TER exactly as tercom 0.7.25 computes it, re-implemented here, spread over the CPU cores.

The WebNLG 2017 and DART scorers run ``java -jar tercom.7.25.jar -h hyp -r ref``: no ``-s``
(case-insensitive), no ``-N`` (no normalisation), no ``-P`` (punctuation kept), beam width 20,
maximum shift distance 50, unit costs.  This module follows that program's procedure step by
step (its ``TERtest``, ``TERcalc`` and ``TERshift`` classes; the code here is our own, written
from the procedure, not a translation of its source), so that every segment gets tercom's edit
count, not only a close one.  sacrebleu's ``TER`` (which we used before) is a port with its own
shift search and beam and differs on long or reordered segments (up to 0.005 TER on a corpus).

What tercom does, and what we do for each step:

1. Reading (``TERtest.load_segs``).  Each line is ``TEXT (id)``; the text is what precedes the
   last parenthesised group, stripped of Java ``\\s`` and then ``String.trim()`` (every character
   up to U+0020).  Lines with the same id are the references of one segment.  We receive the texts
   themselves; :func:`_java_trim` applies the same stripping.
2. Case and tokens (``TERcalc.TER(String, String)``, ``tokenize``).  Both sides are lower-cased
   (``String.toLowerCase``; Python's ``str.lower`` agrees on every character these data use) and
   split on Java's ``\\s+``, which is ASCII whitespace only (space, tab, LF, VT, FF, CR): a
   no-break space or another Unicode space stays inside its word, unlike ``str.split()``.
3. Empty sides (``TERnullstr``).  An empty hypothesis costs one deletion per reference word; an
   empty reference costs one insertion per hypothesis word and has length 0; both empty: 0/0.
4. Several references (``TERtest.score_all_refs``).  Each reference is scored on its own; the
   segment takes the fewest edits and, as its length, the AVERAGE word count of all its
   references (an empty one counts as 0).  The corpus "Total TER" is the sum of the edits over the
   sum of those average lengths, accumulated in segment order as doubles (as we do).
5. Per hypothesis-reference pair (``TERcalc.TER(Comparable[], ...)``): words become integer ids;
   ``rloc`` maps every run of 1 to 11 consecutive reference words that all occur somewhere in the
   hypothesis to its start positions (ascending) (:func:`_ref_ngrams`).  Then: align by the beam
   edit distance (step 6); repeatedly pick a shift (step 7), pay 1 for it and re-align, until no
   shift is picked; the edits are the shifts plus the final edit distance.
6. Beam edit distance (``MinEditDist``): a dynamic programme over cells (ref position i, hyp
   position j), filled hypothesis word by hypothesis word (column by column).  In column j the
   cells are visited top-down; a cell is skipped when it has no value yet or when (except in the
   last column) its cost exceeds the best diagonal cost written into this column + 20 (the beam);
   a visited cell writes the diagonal (match 0 / substitution 1), the insertion (+1, next column)
   and the deletion (+1, next row, same column), each only where it is strictly cheaper than the
   value already there, so ties prefer the diagonal, then the insertion, then the deletion.  The
   alignment is traced back from the corner through those marks.  The beam can make the result
   larger than the true Levenshtein distance, and it decides the alignment that steers the shift
   search, so we reproduce it cell for cell.  :func:`_align_group` does so with numpy for many
   hypotheses at once, one column per step: within a column the deletion chains are a running
   minimum (``minimum.accumulate`` of cost minus row, plus row), and a cell is visited exactly
   when that chained cost is within the beam (costs grow by one along a chain, so a chain that
   leaves the beam never re-enters it and the top-down visit order changes nothing; cells past
   the previous column's last visited one are reached only through such chains, as in tercom's
   ``last_good`` bookkeeping); the diagonal and insertion values of the next column, the beam's
   best cost and (for the alignment) the marks follow with whole-array operations.
7. Shift search (``CalcBestShift`` / ``GatherAllPossShifts`` / ``PerformShift``), from the current
   alignment: which hyp and ref words are errors (not matched), and ``ralign[r]``, the hyp position
   aligned to (or, for a deleted ref word, just before) ref word r. Candidates
   (:func:`_candidates`): for each hyp start whose word is in ``rloc`` with at least one target
   ``ralign[moveto]`` other than the start itself and within 50 words (the first-word test), and
   for each end from it (at most 10 words; it stops at the first phrase not in ``rloc``, and at a
   phrase with a hyp error none of whose occurrences passes the next test: tercom's ``ok`` flag; an
   error-free phrase is skipped and the next longer one tried), a phrase with a hyp error is moved
   to each reference occurrence ``moveto`` whose ``ralign`` lies outside the phrase and within 50
   words, and that covers a ref error; its new places are ``ralign[moveto + roff]`` for roff = -1
   .. length-1 (the front when moveto = 0 and roff = -1), skipping those equal to the start and,
   for roff != 0, those equal to ``ralign[moveto]``. They are tried longest phrases first, and
   within a length in generation order (start, moveto, roff ascending), each by re-running the beam
   edit distance on the shifted hypothesis. A candidate becomes the choice when it beats the choice
   so far: gain = (choice's edit distance + its shift cost) - (candidate's + 1) > 0, or = 0 while
   nothing is chosen yet (so a shift that saves exactly its own cost is taken). The scan stops when
   the gain already achieved exceeds 2 x the phrase length being tried (or equals it once something
   is chosen). Duplicated candidates, the "moving inside itself" shift (the phrase moved right past
   as many following words as newloc - start, clipped at the end) and the front target are all
   reproduced (:func:`_shifted`). The loop ends because each accepted shift lowers the edit
   distance by at least one.

Speed (none of it changes a result):

* Prefix reuse: a candidate is a permutation of the current hypothesis that agrees with it in its
  first k words; the DP state before column k depends on those words only, so the current
  hypothesis' column states are kept (``_Pair.values`` / ``best`` / ``marks``) and each candidate
  starts at its own first changed column.
* Lockstep batching (:func:`_pairs_edits`): all hypothesis-reference pairs of a chunk advance
  together, round by round: one numpy pass aligns every pair that needs a (re)alignment, one pass
  evaluates the next candidates of every pair that is searching.  Rows of different lengths are
  padded (a penalty keeps padded reference rows out of the diagonal and the beam) and
  right-aligned so that all end in the same step, and rows join the pass at their first changed
  column; pairs of similar reference length share a pass.  Python-level work per column step is
  thereby shared by thousands of rows instead of repeated per candidate.
* Laziness: a pair's candidates are evaluated in tercom's order, up to a phrase-length boundary
  past BATCH_MIN at a time, so that a scan tercom stops early is stopped here too; the choice is
  made by replaying tercom's sequential rule on the computed costs (it depends on nothing else).
* Identical (hypothesis, reference) pairs are computed once, and a hypothesis equal to the
  reference costs 0 without a search (its alignment has no error, so tercom finds no candidate).
* Segments are scored in interleaved chunks on a process pool; each returns per-segment (edits,
  reference length) pairs, whose sums give the corpus and any subsets (overlapping ones too:
  several systems, each with WebNLG's all / seen / unseen) exactly.

Not reproduced: tercom reads its files in the platform encoding and with ``readLine``; a text
holding a line break (or, for its regex, U+0085/U+2028/U+2029) would be cut or rejected there.
The callers pass one-line texts (DART's ``glue`` turns those characters into word characters).
Java's ``toLowerCase`` and Python's ``lower`` could differ on characters whose case mappings
changed between their Unicode versions.

Checked against the jar (tercom.7.25.jar, Java 17): every segment of the 14 WebNLG and DART
scorer-fidelity systems gets tercom's edits and length (tests/test_scorer_fidelity.py checks the
printed corpus scores; tests/test_ter.py hand-checked cases).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CHUNKS_PER_WORKER = 6
# below this many segments the pool's start-up costs more than it saves
MIN_SEGMENTS_FOR_POOL = 48

# tercom 0.7.25's constants (TERcalc, TERpara defaults)
BEAM_WIDTH = 20
MAX_SHIFT_SIZE = 10  # a shifted phrase has at most this many words
MAX_SHIFT_DIST = 50
INF = 999999  # tercom's initial "best cost" of a column
# "no value yet" in the DP: far above every reachable cost and INF + BEAM_WIDTH, and small
# enough that sums of two stay within int32
UNSET = 1 << 28
# marks of the DP cells (tercom's ' ', 'S', 'I', 'D')
MATCH, SUB, INS, DEL = 0, 1, 2, 3
# candidates evaluated at once (rows of one numpy batch)
BATCH_MIN = 256
BATCH_MAX = 4096
# cells (rows x reference positions, or rows x DP cells when recorded) of one numpy batch
GROUP_CELLS = 1 << 22

_JAVA_SPACE = re.compile("[ \t\n\x0b\x0c\r]+")
_TRIMMED = "".join(chr(c) for c in range(0x21))


def _java_trim(text: str) -> str:
    """``String.trim()``: drops every character up to U+0020 from both ends."""
    return text.strip(_TRIMMED)


def tokenize(text: str) -> list[str]:
    """The words tercom sees in one line's text (trimmed, lower-cased, split on ASCII space)."""
    text = _java_trim(text).lower()
    return _JAVA_SPACE.split(text) if text else []


# ---------------------------------------------------------------------------------------------
# Beam edit distance (step 6), for many hypotheses at once


class _Block:
    """Hypotheses (rows of ``words``, all of one pair's length) to align to that pair's reference;
    row r equals the pair's current hypothesis in its first ``firsts[r]`` words."""

    __slots__ = ("pair", "words", "firsts", "scores")

    def __init__(self, pair: _Pair, words: np.ndarray, firsts: np.ndarray) -> None:
        self.pair = pair
        self.words = words
        self.firsts = firsts
        self.scores: np.ndarray | None = None


def _groups(blocks: list[_Block], cells_per_row) -> list[list[_Block]]:
    """Blocks of similar reference length together (padding costs work), bounded in memory."""
    blocks = sorted(blocks, key=lambda b: b.pair.n)
    out: list[list[_Block]] = []
    rows = 0
    low = 0
    for b in blocks:
        k = b.words.shape[0]
        if not out or b.pair.n > low * 1.25 + 8 or (rows + k) * cells_per_row(b.pair) > GROUP_CELLS:
            out.append([])
            rows = 0
            low = b.pair.n
        out[-1].append(b)
        rows += k
    return out


def _align_blocks(blocks: list[_Block], record: bool) -> None:
    """Beam edit distances of every row of every block (``block.scores``); with ``record`` (one row
    per block) the row's DP states become its pair's alignment (values, best, marks, score)."""
    if record:
        groups = _groups(blocks, lambda p: 3 * (p.m + 1) * (p.n + 1))
    else:
        groups = _groups(blocks, lambda p: 8 * (p.n + 1))
    for group in groups:
        _align_group(group, record)


def _align_group(blocks: list[_Block], record: bool) -> None:
    n_max = max(b.pair.n for b in blocks)
    m_max = max(b.pair.m for b in blocks)
    total = sum(b.words.shape[0] for b in blocks)
    refs = np.full((total, n_max), -1, dtype=np.int32)
    pen = np.zeros((total, n_max), dtype=np.int32)
    words = np.zeros((total, m_max), dtype=np.int32)  # right-aligned: column j at time j + M - m
    init_values = np.full((total, n_max + 1), UNSET, dtype=np.int32)
    init_best = np.full(total, INF, dtype=np.int32)
    init_marks = np.full((total, n_max + 1), DEL, dtype=np.int8)
    t0 = np.empty(total, dtype=np.int64)
    last = np.empty(total, dtype=np.int64)
    r = 0
    for b in blocks:
        p = b.pair
        k, n, m = b.words.shape[0], p.n, p.m
        refs[r : r + k, :n] = p.ref
        pen[r : r + k, n:] = UNSET
        words[r : r + k, m_max - m :] = b.words
        if p.values is None:
            init_values[r : r + k, 0] = 0
        else:
            init_values[r : r + k, : n + 1] = p.values[b.firsts]
            init_best[r : r + k] = p.best[b.firsts]
            if record:
                init_marks[r : r + k, : n + 1] = p.marks[b.firsts]
        t0[r : r + k] = b.firsts + (m_max - m)
        last[r : r + k] = n
        r += k
    order = np.argsort(t0, kind="stable")
    refs, pen, words = refs[order], pen[order], words[order]
    init_values, init_best, init_marks = init_values[order], init_best[order], init_marks[order]
    t0, last = t0[order], last[order]
    padded = bool((last < n_max).any())
    t_first = int(t0[0])
    joins = np.searchsorted(t0, np.arange(t_first, m_max + 1), side="right")

    rows = np.arange(n_max + 1, dtype=np.int32)
    values = np.empty((total, n_max + 1), dtype=np.int32)
    best = np.empty(total, dtype=np.int32)
    chained = np.empty((total, n_max + 1), dtype=np.int32)
    visited = np.empty((total, n_max + 1), dtype=bool)
    differs = np.empty((total, n_max), dtype=bool)
    diagonal = np.empty((total, n_max), dtype=np.int32)
    if record:
        width = m_max + 1 - t_first
        rec_values = np.empty((total, width, n_max + 1), dtype=np.int32)
        rec_best = np.empty((total, width), dtype=np.int32)
        rec_marks = np.empty((total, width, n_max + 1), dtype=np.int8)
        write_marks = np.empty((total, n_max + 1), dtype=np.int8)
    active = 0
    scores = np.empty(total, dtype=np.int64)
    for t in range(t_first, m_max + 1):
        joined = int(joins[t - t_first])
        if joined > active:
            values[active:joined] = init_values[active:joined]
            best[active:joined] = init_best[active:joined]
            if record:
                write_marks[active:joined] = init_marks[active:joined]
            active = joined
        cur = values[:active]
        ch = chained[:active]
        # the deletions of column j: a running minimum of (cost - row), plus row
        np.subtract(cur, rows, out=ch)
        np.minimum.accumulate(ch, axis=1, out=ch)
        ch += rows
        if record:
            step = t - t_first
            rec_values[:active, step] = cur
            rec_best[:active, step] = best[:active]
            rec_marks[:active, step] = np.where(ch < cur, DEL, write_marks[:active])
        if t == m_max:
            # the last column has no beam: every cell with a value is visited
            scores[:] = ch[np.arange(total), last]
            break
        vis = np.less_equal(ch, (best[:active] + BEAM_WIDTH)[:, None], out=visited[:active])
        cost = np.where(vis, ch, UNSET)
        dif = np.not_equal(refs[:active], words[:active, t][:, None], out=differs[:active])
        diag = np.add(cost[:, :n_max], dif, out=diagonal[:active])
        if padded:
            diag += pen[:active]  # no diagonal from (or to) rows past a reference's end
        cost += 1  # now the insertions
        np.minimum(diag.min(axis=1), INF, out=best[:active])
        if record:
            write_marks[:active, 0] = INS
            write_marks[:active, 1:] = np.where(diag <= cost[:, 1:], dif, INS)
        # the diagonal is written first; the insertion replaces it only when strictly cheaper
        values[:active, 0] = cost[:, 0]
        np.minimum(diag, cost[:, 1:], out=values[:active, 1:])
    out = np.empty(total, dtype=np.int64)
    out[order] = scores
    r = 0
    where = np.empty(total, dtype=np.int64)
    where[order] = np.arange(total)
    for b in blocks:
        k = b.words.shape[0]
        b.scores = out[r : r + k]
        if record:
            p = b.pair
            n, m, first = p.n, p.m, int(b.firsts[0])
            row = int(where[r])
            lo = first + m_max - m - t_first
            values_new = np.empty((m + 1, n + 1), dtype=np.int32)
            best_new = np.empty(m + 1, dtype=np.int32)
            marks_new = np.empty((m + 1, n + 1), dtype=np.int8)
            if first:
                values_new[:first] = p.values[:first]
                best_new[:first] = p.best[:first]
                marks_new[:first] = p.marks[:first]
            values_new[first:] = rec_values[row, lo:, : n + 1]
            best_new[first:] = rec_best[row, lo:]
            marks_new[first:] = rec_marks[row, lo:, : n + 1]
            p.cur = b.words[0]
            p.values, p.best, p.marks = values_new, best_new, marks_new
            p.score = int(out[r])
        r += k


def _trace(marks: np.ndarray, n: int, m: int) -> tuple[list[bool], list[bool], list[int]]:
    """tercom's ``FindAlignErr`` on the traced-back path: hyp errors, ref errors, ``ralign``."""
    path = []
    i, j = n, m
    while i > 0 or j > 0:
        mark = int(marks[j, i])
        path.append(mark)
        if mark == DEL:
            i -= 1
        elif mark == INS:
            j -= 1
        else:
            i -= 1
            j -= 1
    herr = [False] * m
    rerr = [False] * n
    ralign = [0] * n
    hpos = rpos = -1
    for mark in reversed(path):
        if mark == MATCH or mark == SUB:
            hpos += 1
            rpos += 1
            herr[hpos] = rerr[rpos] = mark == SUB
            ralign[rpos] = hpos
        elif mark == INS:
            hpos += 1
            herr[hpos] = True
        else:
            rpos += 1
            rerr[rpos] = True
            ralign[rpos] = hpos
    return herr, rerr, ralign


# ---------------------------------------------------------------------------------------------
# Shift search (step 7)


def _ref_ngrams(hyp: Sequence[int], ref: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """tercom's ``rloc``: runs of up to MAX_SHIFT_SIZE + 1 reference words that all occur in the
    hypothesis, mapped to their start positions in ascending order."""
    in_hyp = set(hyp)
    out: dict[tuple[int, ...], list[int]] = {}
    n = len(ref)
    for start in range(n):
        end = start
        while end < n and end - start <= MAX_SHIFT_SIZE and ref[end] in in_hyp:
            out.setdefault(tuple(ref[start : end + 1]), []).append(start)
            end += 1
    return out


def _candidates(
    cur: Sequence[int],
    rloc: Mapping[tuple[int, ...], list[int]],
    herr: list[bool],
    rerr: list[bool],
    ralign: list[int],
) -> list[tuple[int, int, int, int]]:
    """tercom's ``GatherAllPossShifts`` in its trial order: (length, start, end, newloc), longest
    phrases first, then by start, reference occurrence and offset."""
    groups: list[list[tuple[int, int, int, int]]] = [[] for _ in range(MAX_SHIFT_SIZE)]
    m = len(cur)
    ref_errors = [0]  # ref_errors[i]: ref errors before position i
    for e in rerr:
        ref_errors.append(ref_errors[-1] + e)
    for start in range(m):
        first = rloc.get((cur[start],))
        if first is None:
            continue
        if not any(
            ralign[mt] != start
            and ralign[mt] - start <= MAX_SHIFT_DIST
            and start - ralign[mt] - 1 <= MAX_SHIFT_DIST
            for mt in first
        ):
            continue
        hyp_error = False  # any hyp error in cur[start : end + 1]
        for end in range(start, min(m, start + MAX_SHIFT_SIZE)):
            targets = rloc.get(tuple(cur[start : end + 1]))
            if targets is None:
                break
            hyp_error = hyp_error or herr[end]
            if not hyp_error:
                continue
            length = end - start + 1
            moved = False
            group = groups[length - 1]
            for mt in targets:
                here = ralign[mt]
                if (
                    start <= here <= end
                    or here - start > MAX_SHIFT_DIST
                    or start - here > MAX_SHIFT_DIST
                ):
                    continue
                moved = True
                if ref_errors[mt + length] == ref_errors[mt]:
                    continue
                for roff in range(-1, length):
                    if roff == -1 and mt == 0:
                        group.append((length, start, end, -1))
                        continue
                    newloc = ralign[mt + roff]
                    if newloc != start and (roff == 0 or newloc != here):
                        group.append((length, start, end, newloc))
            if not moved:
                # tercom's ``ok`` stays false: longer phrases from this start are not tried
                break
    return [sh for group in reversed(groups) for sh in group]


def _shifted(m: int, shifts: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """``PerformShift`` as index arrays (K x m): row r gives the source position of each word."""
    arr = np.array(shifts, dtype=np.int64)
    length, s, e, loc = (arr[:, c : c + 1] for c in range(4))
    p = np.arange(m, dtype=np.int64)[None, :]
    # moving right: after end (newloc > end), or "inside itself" (start < newloc <= end), which
    # moves the phrase past newloc - start following words, clipped at the end of the sentence
    right_to = np.where(loc > e, loc, np.minimum(e + (loc - s), m - 1))
    gap = right_to - e  # words that move left over the phrase
    right = np.where(
        p < s,
        p,
        np.where(p < s + gap, p + length, np.where(p <= right_to, p - gap, p)),
    )
    # moving left: after newloc (newloc < start; -1 = to the front)
    left = np.where(
        p <= loc,
        p,
        np.where(p <= loc + length, s + (p - loc - 1), np.where(p <= e, p - length, p)),
    )
    return np.where(loc < s, left, right)


class _Pair:
    """One hypothesis-reference pair going through tercom's shift loop (steps 5-7)."""

    __slots__ = (
        "ref",
        "n",
        "m",
        "cur",
        "rloc",
        "shifts",
        "values",
        "best",
        "marks",
        "score",
        "order",
        "done",
        "chosen",
        "chosen_first",
        "chosen_cost",
        "chosen_edits",
    )

    def __init__(self, hyp: list[int], ref: list[int]) -> None:
        self.ref = np.array(ref, dtype=np.int32)
        self.n, self.m = len(ref), len(hyp)
        self.cur = np.array(hyp, dtype=np.int32)
        self.rloc = _ref_ngrams(hyp, ref)
        self.shifts = 0
        self.values: np.ndarray | None = None  # DP states of ``cur`` (see _align_group)
        self.best: np.ndarray | None = None
        self.marks: np.ndarray | None = None
        self.score = 0  # beam edit distance of ``cur``
        self.order: list[tuple[int, int, int, int]] = []

    def start_search(self) -> bool:
        """Lists the shift candidates from the current alignment; False if there are none."""
        if self.score == 0:
            return False
        herr, rerr, ralign = _trace(self.marks, self.n, self.m)
        self.order = _candidates(self.cur.tolist(), self.rloc, herr, rerr, ralign)
        self.done = 0
        self.chosen = None
        self.chosen_first = 0
        self.chosen_cost = 0  # tercom's cur_best_shift_cost
        self.chosen_edits = self.score  # tercom's cur_best_align.numEdits
        return bool(self.order)

    def next_block(self) -> _Block:
        """The next candidates to evaluate: up to a phrase-length boundary past BATCH_MIN (tercom's
        scan can stop only there), at most BATCH_MAX."""
        order, done = self.order, self.done
        size = 1
        while done + size < len(order) and size < BATCH_MAX:
            if size >= BATCH_MIN and order[done + size][0] != order[done + size - 1][0]:
                break
            size += 1
        words = self.cur[_shifted(self.m, order[done : done + size])]
        differs = words != self.cur[None, :]
        firsts = np.where(differs.any(axis=1), differs.argmax(axis=1), self.m)
        return _Block(self, words, firsts)

    def take(self, block: _Block) -> bool:
        """tercom's sequential choice over the evaluated block; True when the scan is over."""
        assert block.scores is not None
        current = self.score
        scores = block.scores.tolist()
        for r, (length, *_) in enumerate(self.order[self.done : self.done + len(scores)]):
            fixed = current - (self.chosen_cost + self.chosen_edits)
            if fixed > 2 * length or (self.chosen_cost != 0 and fixed == 2 * length):
                return True
            gain = (self.chosen_edits + self.chosen_cost) - (scores[r] + 1)
            if gain > 0 or (self.chosen_cost == 0 and gain == 0):
                self.chosen = block.words[r]
                self.chosen_first = int(block.firsts[r])
                self.chosen_cost = 1
                self.chosen_edits = scores[r]
        self.done += len(scores)
        return self.done >= len(self.order)


def _pairs_edits(pairs: Sequence[tuple[list[int], list[int]]]) -> list[int]:
    """tercom's edit counts (shifts + final beam edit distance) of non-empty id sequences, all
    pairs advanced in lockstep so that each numpy step serves many of them."""
    tasks = [_Pair(h, r) for h, r in pairs]
    to_align = [_Block(t, t.cur[None, :], np.zeros(1, dtype=np.int64)) for t in tasks]
    searching: list[_Pair] = []
    while to_align or searching:
        if to_align:
            _align_blocks(to_align, record=True)
            searching += [b.pair for b in to_align if b.pair.start_search()]
            to_align = []
        if searching:
            blocks = [t.next_block() for t in searching]
            _align_blocks(blocks, record=False)
            still = []
            for t, b in zip(searching, blocks, strict=True):
                if not t.take(b):
                    still.append(t)
                elif t.chosen is not None:
                    t.shifts += 1
                    first = np.array([t.chosen_first], dtype=np.int64)
                    to_align.append(_Block(t, t.chosen[None, :], first))
            searching = still
    return [t.shifts + t.score for t in tasks]


def pair_edits(hyp: Sequence[str], ref: Sequence[str]) -> int:
    """tercom's edit count (shifts + beam edit distance) for two non-empty token lists."""
    return _edits_of([(list(hyp), list(ref))])[0]


def _edits_of(pairs: Sequence[tuple[list[str], list[str]]]) -> list[int]:
    """Edit counts of token-list pairs (identical pairs computed once, equal sides cost 0)."""
    keys: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    work: list[tuple[list[int], list[int]]] = []
    slots = []
    for hyp, ref in pairs:
        if hyp == ref:
            slots.append(-1)
            continue
        key = (tuple(hyp), tuple(ref))
        if key not in keys:
            vocab: dict[str, int] = {}
            hyp_ids = [vocab.setdefault(w, len(vocab)) for w in hyp]
            ref_ids = [vocab.setdefault(w, len(vocab)) for w in ref]
            keys[key] = len(work)
            work.append((hyp_ids, ref_ids))
        slots.append(keys[key])
    edits = _pairs_edits(work) if work else []
    return [0 if s < 0 else edits[s] for s in slots]


def _segments_stats(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> list[tuple[float, float]]:
    """tercom's (edits, reference length) per segment: the fewest edits over its references and
    their average length (``score_all_refs``; the empty cases as ``TERnullstr``)."""
    pairs: list[tuple[list[str], list[str]]] = []
    plan = []
    for hyp, seg in zip(hyps, refs, strict=True):
        if not seg:
            raise ValueError("a segment needs at least one reference")
        hyp_words = tokenize(hyp)
        entries = []
        for ref in seg:
            ref_words = tokenize(ref)
            if not ref_words:
                entries.append((len(hyp_words), 0, -1))  # insertions; the reference's length is 0
            elif not hyp_words:
                entries.append((len(ref_words), len(ref_words), -1))  # deletions
            else:
                entries.append((0, len(ref_words), len(pairs)))
                pairs.append((hyp_words, ref_words))
        plan.append(entries)
    edits = _edits_of(pairs)
    out = []
    for entries in plan:
        counts = [e if k < 0 else edits[k] for e, _, k in entries]
        length = sum(n for _, n, _ in entries)
        out.append((float(min(counts)), length / len(entries)))
    return out


def segment_stats(hyp: str, refs: Sequence[str]) -> tuple[float, float]:
    """tercom's (edits, reference length) for one segment (see :func:`corpus_ter`)."""
    return _segments_stats([hyp], [refs])[0]


def _ter_stats(hyps: list[str], refs: list[list[str | None]]) -> list[tuple[float, float]]:
    return _segments_stats(hyps, [[r for r in seg if r is not None] for seg in refs])


def ter_rows(
    hyps: Sequence[str], refs: Sequence[Sequence[str | None]], *, workers: int | None = None
) -> list[tuple[float, float]]:
    """tercom's (edits, average reference length) for every segment, in order.

    ``None`` in a segment's references means "no such reference" (dropped); an empty string is a
    reference of length 0 and counts in the average reference length, as in tercom.  The segments
    are spread over ``workers`` processes (default: the CPU cores, at most 8).
    """
    workers = workers or min(os.cpu_count() or 1, 8)
    n = len(hyps)
    n_chunks = max(1, min(n, workers * CHUNKS_PER_WORKER))
    chunks = [list(range(c, n, n_chunks)) for c in range(n_chunks)]
    chunks = [c for c in chunks if c]

    def args(chunk: list[int]) -> tuple[list[str], list[list[str | None]]]:
        return [hyps[i] for i in chunk], [list(refs[i]) for i in chunk]

    if workers > 1 and len(chunks) > 1 and n >= MIN_SEGMENTS_FOR_POOL:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_ter_stats, *zip(*(args(c) for c in chunks), strict=True)))
    else:
        parts = [_ter_stats(*args(c)) for c in chunks]
    stats: list[tuple[float, float]] = [(0.0, 0.0)] * n
    for chunk, part in zip(chunks, parts, strict=True):
        for i, pair in zip(chunk, part, strict=True):
            stats[i] = pair
    return stats


def ter_from(edits: float, length: float) -> float:
    """The corpus rate from summed edits and reference lengths (tercom's "Total TER")."""
    return edits / length if length > 0 else (1.0 if edits > 0 else 0.0)


def corpus_ter(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str | None]],
    *,
    groups: Mapping[str, Sequence[int]] | None = None,
    workers: int | None = None,
) -> dict[str, float | None]:
    """TER on 0-1 for ``"all"`` and for each named group of segment indices (groups may overlap);
    the references as in :func:`ter_rows`."""
    stats = ter_rows(hyps, refs, workers=workers)

    def rate(selected: Sequence[int]) -> float | None:
        if not selected:
            return None
        return ter_from(sum(stats[i][0] for i in selected), sum(stats[i][1] for i in selected))

    out: dict[str, float | None] = {"all": rate(range(len(hyps)))}
    for name, idx in (groups or {}).items():
        out[name] = rate(list(idx))
    return out
