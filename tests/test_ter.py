"""TER as tercom 0.7.25 computes it (prefixtune/metrics/ter.py), on small hand-checked cases.

Each expected value is derived below from tercom's procedure (the module docstring's steps) and
was confirmed with tercom.7.25.jar itself (``java -jar tercom.7.25.jar -h hyp -r ref``, lines
``TEXT (id)``; the jar is not part of this repository).  The last tests check the numpy beam edit
distance cell by cell against a plain loop over tercom's visiting rule.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from prefixtune.metrics import ter
from prefixtune.metrics.ter import corpus_ter, pair_edits, segment_stats, tokenize


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize(
    ("hyp", "refs", "edits", "length"),
    [
        # identical, and identical but for case: tercom lower-cases both sides (no -s)
        ("the cat sat", ["the cat sat"], 0, 3),
        ("The CAT sat", ["the cat SAT"], 0, 3),
        # punctuation is kept and not split off (no -N): "sat." is one word, so 1 substitution
        # (sat. -> sat) + 1 deletion (.)
        ("the cat sat.", ["the cat sat ."], 2, 4),
        # only ASCII whitespace separates words: "a<NBSP>b" is one word: 1 substitution
        # (a b -> a) + 1 deletion (b); tabs and runs of spaces are one separator
        ("a\u00a0b c", ["a b c"], 2, 3),
        ("a  b\tc", ["A B C"], 0, 3),
        # String.trim() drops control characters at both ends
        ("\x01a b\x1f", ["a b"], 0, 2),
        # lower-casing as Java: É -> é, İ -> i + combining dot; ß stays ß (strasse differs)
        ("ÉCOLE Straße İ", ["école strasse i̇"], 1, 3),
        # one shift: the aligned "the cat" has no error, "sat" is moved to the end (1 shift, then
        # 0 edits) instead of a deletion and an insertion
        ("sat the cat", ["the cat sat"], 1, 3),
        # a 3-word phrase moved in one shift (longest phrases are tried first)
        ("d e f a b c", ["a b c d e f"], 1, 6),
        # several references: the fewest edits (1: "c" moved to the end gives "a b c"), and the
        # AVERAGE length of all of them, (3 + 3 + 1) / 3
        ("c a b", ["a b c", "c b a", "x"], 1, 7 / 3),
        # an empty reference counts with length 0 in the average
        ("a b c", ["a b c", ""], 0, 1.5),
        # empty hypothesis: one deletion per reference word, the fewest over the references
        ("", ["a b", "a b c d"], 2, 3),
        # empty reference: one insertion per hypothesis word, length 0
        ("x y", [""], 2, 0),
        ("", [""], 0, 0),
    ],
)
def test_segments(hyp, refs, edits, length):
    assert segment_stats(hyp, refs) == (edits, pytest.approx(length, abs=1e-12))


def test_a_shift_that_only_pays_for_itself_is_taken():
    # "b b a b c b" -> "b b b b a c": edit distance 3.  The first candidate tercom tries (the
    # longest phrases first: "b a" moved one word right, giving "b b b a c b") has distance 2,
    # so its gain is 3 - (2 + 1) = 0: taken, as nothing is chosen yet (sacrebleu's port stops
    # at gain 0 and answers 3).  From "b b b a c b" moving the last "b" to the front gives the
    # reference: 1 more shift, distance 0.  Total 2 shifts.
    assert pair_edits(words("b b a b c b"), words("b b b b a c")) == 2


def test_the_first_of_equal_shifts_is_kept():
    # "a b a c c" -> "c a c a b c a": distance 4.  The first candidate, "a b" (the longest
    # phrase) moved right by one ("a a b c c"), has distance 3: gain 0, taken; later ones
    # (distance 3 or 4) must beat it strictly and do not.  From "a a b c c" the last "c" to the
    # front ("c a a b c") has distance 2: gain 0, taken.  Then no word is misaligned with a
    # movable phrase: 2 shifts + 2 = 4 (a different order of shifts reaches 3, sacrebleu's answer).
    assert pair_edits(words("a b a c c"), words("c a c a b c a")) == 4
    assert pair_edits(words("c b a b c"), words("a a c a c b b")) == 4
    assert pair_edits(words("b a c b c b a d"), words("c b d b c a")) == 4


@pytest.mark.parametrize(("n_a", "edits"), [(15, 15), (20, 20), (21, 21), (30, 40)])
def test_the_beam_can_cost_edits(n_a, edits):
    # 30 "b" against n_a "a" then 30 "b": the true distance is n_a (delete the a's).  tercom's
    # beam drops every cell more than 20 above the best diagonal cost of the column before it;
    # along the "b" columns that best cost grows by about 1 per column (substituting a's), so
    # the row where the reference's b's begin (cost n_a at column 0) is visited only from the
    # column where it is within 20 of it: about column n_a - 20 (at cost j substitutions +
    # n_a - j deletions, then j more deletions of b's at the end): 30 + 10 = 40 for n_a = 30.
    hyp = ["b"] * 30
    ref = ["a"] * n_a + ["b"] * 30
    assert pair_edits(hyp, ref) == edits


def test_tokenize():
    assert tokenize("  A\u00a0B  c\r\n") == ["a\u00a0b", "c"]
    assert tokenize(" \x00 ") == []
    assert tokenize("x\u2003y") == ["x\u2003y"]  # an em space is no separator in Java's \s


def test_corpus_and_groups():
    hyps = ["sat the cat", "a b c", "", "x y"]
    refs = [["the cat sat"], ["a b c", ""], ["a b", "a b c d"], ["", None]]
    # edits 1, 0, 2, 2; lengths 3, 1.5, 3, 0
    out = corpus_ter(hyps, refs, groups={"first": [0, 1], "none": [], "empty": [3]}, workers=1)
    assert out["all"] == pytest.approx(5 / 7.5)
    assert out["first"] == pytest.approx(1 / 4.5)
    assert out["none"] is None
    assert out["empty"] == 1.0  # edits over a zero length


def test_pool_gives_the_same_numbers():
    rng = random.Random(3)
    vocab = "a b c d e f".split()
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(60)]
    refs = [[" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(2)] for _ in hyps]
    one = corpus_ter(hyps, refs, workers=1)
    two = corpus_ter(hyps, refs, workers=2)
    assert one == two
    # and the lockstep batch equals pair by pair
    stats = [segment_stats(h, r) for h, r in zip(hyps, refs, strict=True)]
    assert one["all"] == pytest.approx(sum(e for e, _ in stats) / sum(n for _, n in stats))


def test_a_segment_needs_a_reference():
    with pytest.raises(ValueError):
        corpus_ter(["a"], [[None]], workers=1)


# -- the numpy beam edit distance against a plain loop over tercom's visiting rule -------------


def plain_beam(hyp: list[int], ref: list[int]) -> tuple[int, list[str]]:
    """tercom's beam edit distance cell by cell: (cost, path of ' ', 'S', 'I', 'D')."""
    n, m = len(ref), len(hyp)
    cost = [[-1] * (m + 1) for _ in range(n + 1)]
    mark = [["?"] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0
    best_before = 999999
    best = 999999
    lo = 0  # first visited row of the previous column
    hi = 0  # one past the last visited row of the previous column
    for j in range(m + 1):
        best_before, best = best, 999999
        first_visited = -1
        last, hi = hi, -1
        i = lo
        while i <= n and i <= last:
            c = cost[i][j]
            if c < 0 or (j < m and c > best_before + ter.BEAM_WIDTH):
                i += 1
                continue
            if first_visited < 0:
                first_visited = i
            hi = i + 1
            if i < n and j < m:
                if ref[i] == hyp[j]:
                    if cost[i + 1][j + 1] < 0 or c < cost[i + 1][j + 1]:
                        cost[i + 1][j + 1] = c
                        mark[i + 1][j + 1] = " "
                    best = min(best, c)
                elif cost[i + 1][j + 1] < 0 or c + 1 < cost[i + 1][j + 1]:
                    cost[i + 1][j + 1] = c + 1
                    mark[i + 1][j + 1] = "S"
                    best = min(best, c + 1)
            if j < m and (cost[i][j + 1] < 0 or cost[i][j + 1] > c + 1):
                cost[i][j + 1] = c + 1
                mark[i][j + 1] = "I"
            if i < n and (cost[i + 1][j] < 0 or cost[i + 1][j] > c + 1):
                cost[i + 1][j] = c + 1
                mark[i + 1][j] = "D"
                last = max(last, i + 1)
            i += 1
        lo = first_visited
    path = []
    i, j = n, m
    while i > 0 or j > 0:
        path.append(mark[i][j])
        i, j = (
            (i - 1, j) if mark[i][j] == "D" else (i, j - 1) if mark[i][j] == "I" else (i - 1, j - 1)
        )
    return cost[n][m], path[::-1]


def numpy_beam(hyps: list[list[int]], ref: list[int]) -> list[tuple[int, list[str]]]:
    pairs = [ter._Pair(h, ref) for h in hyps]
    blocks = [ter._Block(p, p.cur[None, :], np.zeros(1, dtype=np.int64)) for p in pairs]
    ter._align_blocks(blocks, record=True)
    out = []
    for p in pairs:
        path = []
        i, j = p.n, p.m
        while i > 0 or j > 0:
            mk = int(p.marks[j, i])
            path.append(" SID"[mk])
            i, j = (i - 1, j) if mk == ter.DEL else (i, j - 1) if mk == ter.INS else (i - 1, j - 1)
        out.append((p.score, path[::-1]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_numpy_beam_is_tercoms_beam(seed):
    rng = random.Random(seed)
    for _ in range(6):
        n = rng.randint(1, 70)
        vocab = rng.randint(2, 8)
        ref = [rng.randrange(vocab) for _ in range(n)]
        # hypotheses of several lengths in one batch (padding, right alignment), some far from
        # the reference so that the beam drops cells
        hyps = [[rng.randrange(vocab) for _ in range(rng.randint(1, 70))] for _ in range(7)]
        hyps.append([vocab] * rng.randint(1, 40) + ref[: rng.randint(0, n)])
        assert numpy_beam(hyps, ref) == [plain_beam(h, ref) for h in hyps]


def test_candidates_starting_later_reuse_the_prefix():
    # a pair's candidates start at their first changed column from its stored DP states; the
    # costs must equal those of full alignments of the same hypotheses
    rng = random.Random(7)
    for _ in range(10):
        ref = [rng.randrange(5) for _ in range(rng.randint(5, 40))]
        hyp = [rng.randrange(5) for _ in range(rng.randint(5, 40))]
        pair = ter._Pair(hyp, ref)
        ter._align_blocks([ter._Block(pair, pair.cur[None, :], np.zeros(1, np.int64))], True)
        if not pair.start_search():
            continue
        block = pair.next_block()
        ter._align_blocks([block], record=False)
        expected = [plain_beam(w.tolist(), ref)[0] for w in block.words]
        assert block.scores.tolist() == expected
