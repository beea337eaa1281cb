"""The scorer against the official scores of real system outputs (data README, "scoring/").

Each official number must come out at its printed precision: BLEU to 0.01, METEOR / TER /
ROUGE-L to 0.0005, NIST / CIDEr to 0.005.  The Java and TER runs are shared per module.
"""

from __future__ import annotations

import math

import pytest
from conftest import DATA_ROOT, SCORING
from rouge_score import rouge_scorer

from prefixtune.metrics import ScoreError, score
from prefixtune.metrics.nist import BETA, corpus_nist, e2e_bleu, python_tokens
from prefixtune.metrics.webnlg import prepare
from prefixtune.metrics.webnlg_text import normalise_output, normalise_reference
from prefixtune.score import read_aligned, read_grouped, read_lines

DATA = DATA_ROOT


def close(value: float, official: float, tol: float) -> bool:
    return abs(value - official) <= tol + 1e-12


@pytest.fixture(scope="module")
def e2e_scores() -> dict:
    hyps = read_lines(SCORING / "e2e_example_baseline.txt")
    refs = read_grouped(SCORING / "e2e_example_refs.txt")
    return score("e2e", hyps, refs)


@pytest.mark.parametrize(
    ("key", "official", "tol"),
    [
        ("bleu", 72.03, 0.005),
        ("nist", 7.7889, 0.005),
        ("meteor", 0.4801, 0.0005),
        ("rouge_l", 0.7910, 0.0005),
        ("cider", 2.3039, 0.005),
    ],
)
def test_e2e_official(e2e_scores, key, official, tol):
    assert close(e2e_scores[key], official, tol), (key, e2e_scores[key])


@pytest.fixture(scope="module")
def dart_scores() -> dict:
    hyps = read_lines(SCORING / "dart_test_bart-large.txt")
    refs = read_aligned(
        [DATA / "dart" / f"ref_all-delex-reference{k}.lex" for k in range(3)], len(hyps)
    )
    return score("dart", hyps, refs)


@pytest.mark.parametrize(
    ("key", "official", "tol"),
    [("bleu", 48.56, 0.005), ("meteor", 0.3922, 0.0005), ("ter", 0.4470, 0.0005)],
)
def test_dart_official(dart_scores, key, official, tol):
    assert close(dart_scores[key], official, tol), (key, dart_scores[key])


@pytest.fixture(scope="module")
def webnlg_scores() -> dict:
    from prefixtune.data import load_split

    examples = load_split("webnlg", "test", DATA)
    hyps = read_lines(SCORING / "webnlg_test_bart-large.txt")
    refs = [list(ex.references) for ex in examples]
    seen = [bool(ex.meta["seen"]) for ex in examples]
    return score("webnlg", hyps, refs, seen=seen)


WEBNLG_OFFICIAL = {
    "all": {"bleu": 58.06, "meteor": 0.4297, "ter": 0.3773},
    "seen": {"bleu": 64.51, "meteor": 0.4577, "ter": 0.3231},
    "unseen": {"bleu": 50.20, "meteor": 0.3975, "ter": 0.4414},
}


@pytest.mark.parametrize("part", ["all", "seen", "unseen"])
@pytest.mark.parametrize("key", ["bleu", "meteor", "ter"])
def test_webnlg_official(webnlg_scores, part, key):
    tol = 0.005 if key == "bleu" else 0.0005
    official = WEBNLG_OFFICIAL[part][key]
    assert close(webnlg_scores[part][key], official, tol), (part, key, webnlg_scores[part][key])


def test_webnlg_normalisation():
    # Outputs: unidecode first, then the split on non-word characters (all ASCII by then).
    assert normalise_output("Adolfo Suárez Madrid–Barajas Airport's 18L/36R.") == (
        "adolfo suarez madrid - barajas airport ' s 18l / 36r ."
    )
    assert normalise_output("Preußisch  Oldendorf") == "preussisch oldendorf"
    # References: the split runs on the Unicode text first, unidecode last, so a symbol that
    # transliterates to letters is split off in a reference but glued on in an output.
    assert normalise_reference("20°C") == "20 deg c"
    assert normalise_output("20°C") == "20degc"


def test_webnlg_three_references_padded():
    hyps, refs = prepare(["A b."], [["a b .", "c", "d", "e", "f"]])
    assert refs == [["a b .", "c", "d"]]  # the first three only, as bleu_eval_3ref.sh
    _, refs = prepare(["x"], [["only one"]])
    assert refs == [["only one", "", ""]]  # blank lines of the reference files: empty refs


def test_nist_hand_example():
    # One segment, hypothesis == its only reference: every n-gram is matched; info of a unigram
    # is log2(4/1) = 2, of longer n-grams log2(1/1) = 0; so NIST = 2 (no length penalty).
    for mode in ("python", "perl"):
        assert corpus_nist(["a b c d"], [["a b c d"]], mode=mode) == pytest.approx(2.0)
    # Shorter output than reference: the brevity factor applies (ratio 0.5).
    short = corpus_nist(["a b"], [["a b c d"]])
    assert 0 < short < 2.0


def test_nist_modes_length_penalty():
    # Python: Lref = sum of per-segment average reference lengths = 2 + 4 = 6.  Perl: all
    # reference words / average reference count = 14 / ((1 + 3) / 2) = 7.  Lsys = 4.
    hyps = ["a b", "c d"]
    refs = [["a b"], ["c d e f"] * 3]
    py = corpus_nist(hyps, refs, mode="python")
    pl = corpus_nist(hyps, refs, mode="perl")

    def penalty(ratio: float) -> float:
        return math.exp(-BETA * math.log(ratio) ** 2)

    assert pl / py == pytest.approx(penalty(4 / 7) / penalty(4 / 6))


def test_nist_perl_zero_prefix_quirk():
    # Perl takes the prefix "0" as false: the bigram "0 x" is informative against all 3 words.
    py = corpus_nist(["0 x y"], [["0 x y"]], mode="python")
    pl = corpus_nist(["0 x y"], [["0 x y"]], mode="perl")
    assert py == pytest.approx(math.log2(3))
    assert pl - py == pytest.approx(math.log2(3) / 2)


def test_e2e_bleu_negative_ngram_counts():
    # pymteval counts len - n + 1 n-grams even when negative: the 2-word output adds -1
    # 4-grams, so the 4-gram precision is 2 / (2 - 1) = 2 and BLEU is 2 ** (1/4) on 0-1.
    assert e2e_bleu(["a b", "c d e f g"], [["a b"], ["c d e f g"]]) == pytest.approx(100 * 2**0.25)
    # An empty output is one empty token: length 1, matching nothing.
    assert python_tokens("") == [""]


def test_xsum_matches_rouge_score():
    hyps = ["the cat sat on the mat", "dogs are running fast"]
    refs = [["the cat was sitting on the mat"], ["the dog runs quickly", "dogs ran fast"]]
    result = score("xsum", hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for key in result:
        per = [scorer.score_multi(r, h)[key].fmeasure for h, r in zip(hyps, refs, strict=True)]
        assert result[key] == pytest.approx(100 * sum(per) / len(per))
    # By hand, first pair with stemming: "sitting" -> "sit" != "sat"; 5 of 6 hypothesis
    # unigrams in the 7-word reference: P = 5/6, R = 5/7, F = 10/13 (2PR/(P+R)).
    one = score("xsum", hyps[:1], refs[:1])
    assert one["rouge1"] == pytest.approx(100 * 10 / 13)


def test_xsum_empty_output_scores_zero():
    assert score("xsum", [""], [["a summary"]])["rouge1"] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bleu", ["a"], [["a"]]), "unknown task 'bleu'; choose one of: e2e, webnlg, dart, xsum"),
        (("xsum", ["a", "b"], [["a"]]), "2 outputs but 1 inputs"),
        (("xsum", ["a"], [["", " "]]), "input 1 has no non-empty reference"),
        (("xsum", [], []), "nothing to score"),
    ],
)
def test_score_bad_input(args, message):
    with pytest.raises(ScoreError, match=message):
        score(*args)


def test_seen_flags_only_for_webnlg():
    with pytest.raises(ScoreError, match="seen flags only apply to webnlg"):
        score("xsum", ["a"], [["a"]], seen=[True])
