"""The scorer against the official scores of real system outputs (data README, "scoring/").

Each official number must come out at its printed precision: BLEU to 0.01, METEOR / TER /
ROUGE-L to 0.0005, NIST / CIDEr to 0.005.  The Java and TER runs are shared per module.
"""

from __future__ import annotations

import pytest
from conftest import DATA_ROOT, SCORING
from rouge_score import rouge_scorer

from prefixtune.metrics import ScoreError, score
from prefixtune.metrics.nist import corpus_nist
from prefixtune.metrics.webnlg_text import normalise
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
    assert normalise("Adolfo Suárez Madrid–Barajas Airport's 18L/36R.") == (
        "adolfo suarez madrid – barajas airport ' s 18l / 36r ."
    )
    assert normalise("Preußisch  Oldendorf") == "preussisch oldendorf"


def test_nist_hand_example():
    # One segment, hypothesis == its only reference: every n-gram is matched; info of a unigram
    # is log2(4/1) = 2, of longer n-grams log2(1/1) = 0; so NIST = 2 (no length penalty).
    assert corpus_nist(["a b c d"], [["a b c d"]]) == pytest.approx(2.0)
    # Shorter output than reference: the brevity factor applies (ratio 0.5).
    short = corpus_nist(["a b"], [["a b c d"]])
    assert 0 < short < 2.0


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
