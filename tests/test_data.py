"""Tests of prefixtune.data on the real release files in ../shared/data (from the repo root)."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from prefixtune.data import (
    SPLITS,
    TASKS,
    DataError,
    Example,
    default_data_root,
    load_split,
    low_data_split,
    training_pairs,
)
from prefixtune.data import dart as dart_mod
from prefixtune.data import e2e as e2e_mod
from prefixtune.data import hub as hub_mod
from prefixtune.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="module")
def e2e_dev():
    return load_split("e2e", "dev", DATA)


@pytest.fixture(scope="module")
def webnlg_test():
    return load_split("webnlg", "test", DATA)


@pytest.fixture(scope="module")
def dart_test():
    return load_split("dart", "test", DATA)


@pytest.fixture(autouse=True)
def _no_hf_cache(tmp_path_factory, monkeypatch):
    # Never let a developer's Hugging Face cache change what the tests see.
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


# ---------------------------------------------------------------------------- API basics


def test_api_constants_and_default_root(monkeypatch, tmp_path):
    assert issubclass(DataError, UsageError)  # the CLI prints it as one line, no traceback
    assert TASKS == ("e2e", "webnlg", "dart", "xsum")
    assert SPLITS == ("train", "dev", "test")
    monkeypatch.delenv("PREFIXTUNE_DATA_ROOT", raising=False)
    assert default_data_root() == DATA
    monkeypatch.setenv("PREFIXTUNE_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path.resolve()


def test_example_is_frozen_and_pairs_follow_references(e2e_dev):
    ex = e2e_dev[0]
    with pytest.raises(AttributeError):
        ex.source = "x"  # type: ignore[misc]
    pairs = training_pairs(e2e_dev[:3])
    assert pairs == [(e.source, r) for e in e2e_dev[:3] for r in e.references]
    assert len(training_pairs(e2e_dev)) == 4672


# ---------------------------------------------------------------------------- E2E


def _csv_rows(name):
    with open(DATA / "e2e" / name, encoding="utf-8", newline="") as f:
        return [(r["mr"], r["ref"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    ("split", "fname", "n_mr", "n_ref"),
    [("dev", "devset.csv", 547, 4672), ("test", "testset_w_refs.csv", 630, 4693)],
)
def test_e2e_grouping_and_first_appearance_order(split, fname, n_mr, n_ref):
    examples = load_split("e2e", split, DATA)
    assert len(examples) == n_mr
    assert sum(len(e.references) for e in examples) == n_ref
    rows = _csv_rows(fname)
    order = list(dict.fromkeys(mr for mr, _ in rows))
    assert [e.meta["mr"] for e in examples] == order
    for e in examples[:50]:
        assert list(e.references) == [ref for mr, ref in rows if mr == e.meta["mr"]]


def test_e2e_linearisation_exact(e2e_dev):
    test = load_split("e2e", "test", DATA)
    assert test[0].source == "name : Blue Spice | Type : coffee shop | area : city centre"
    assert test[0].references[0] == "A coffee shop in the city centre area called Blue Spice."
    assert e2e_dev[0].source == "name : Alimentum | area : city centre | family friendly : no"
    mr = (
        "name[The Vaults], eatType[pub], priceRange[more than £30], "
        "customer rating[5 out of 5], near[Café Adriatic]"
    )
    assert e2e_mod.linearize_mr(mr) == (
        "name : The Vaults | Type : pub | price : more than £30 | "
        "customer rating : 5 out of 5 | near : Café Adriatic"
    )
    assert e2e_mod.linearize_mr("name[X], food[French], area[riverside]") == (
        "name : X | food : French | area : riverside"
    )


def test_e2e_matches_official_scoring_refs(e2e_dev):
    # scoring/e2e_example_refs.txt: the references of the first 10 dev MRs, blank-separated.
    text = (DATA / "scoring" / "e2e_example_refs.txt").read_text(encoding="utf-8")
    groups = [tuple(g.splitlines()) for g in text.strip("\n").split("\n\n")]
    assert len(groups) == 10
    assert [e.references for e in e2e_dev[:10]] == groups


def test_e2e_train_loads_fast():
    start = time.perf_counter()
    train = load_split("e2e", "train", DATA)
    elapsed = time.perf_counter() - start
    assert len(train) == 4862
    assert sum(len(e.references) for e in train) == 42061
    assert elapsed < 2.0, f"E2E train took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- WebNLG


def test_webnlg_counts_and_subsets(webnlg_test):
    assert len(webnlg_test) == 1862
    seen = load_split("webnlg", "test", DATA, subset="seen")
    unseen = load_split("webnlg", "test", DATA, subset="unseen")
    assert (len(seen), len(unseen)) == (971, 891)
    assert all(e.meta["seen"] for e in seen) and not any(e.meta["seen"] for e in unseen)
    assert {e.meta["category"] for e in unseen} == {
        "Artist",
        "Athlete",
        "CelestialBody",
        "MeanOfTransportation",
        "Politician",
    }
    # the unseen subset is exactly the official unseen test file, in its order
    root = ET.parse(DATA / "webnlg2017" / "test" / "testdata_unseen_with_lex.xml").getroot()
    official = [[lex.text.strip() for lex in entry.findall("lex")] for entry in root.iter("entry")]
    assert [list(e.references) for e in unseen] == official

    train = load_split("webnlg", "train", DATA)
    assert len(train) == 6940 and sum(len(e.references) for e in train) == 18102
    assert len({e.meta["category"] for e in train}) == 10 and all(e.meta["seen"] for e in train)
    dev = load_split("webnlg", "dev", DATA)
    assert len(dev) == 872 and sum(len(e.references) for e in dev) == 2268


def test_webnlg_linearisation_and_meta(webnlg_test):
    first = webnlg_test[0]
    assert first.source == "Abilene_Regional_Airport : cityServed : Abilene,_Texas"
    assert first.references == (
        "Abilene, Texas is served by the Abilene regional airport.",
        "Abilene Regional Airport serves the city of Abilene in Texas.",
    )
    assert first.meta["category"] == "Airport" and first.meta["eid"] == "Id1"
    assert first.meta["seen"] is True
    assert webnlg_test[2].source == 'Adolfo_Suárez_Madrid–Barajas_Airport : runwayName : "18L/36R"'
    multi = next(e for e in webnlg_test if e.meta["size"] == 3)
    assert multi.source.count(" | ") == 2 and multi.source.count(" : ") == 6


def test_webnlg_test_order_matches_official_scoring_file(webnlg_test):
    lines = (DATA / "scoring" / "webnlg_test_bart-large.txt").read_text(encoding="utf-8")
    outputs = lines.splitlines()
    assert len(outputs) == len(webnlg_test) == 1862

    def words(s):
        return set(re.findall(r"\w+", s.lower()))

    def overlap(i, j):
        o = words(outputs[i])
        return max(len(o & words(r)) / max(1, len(o)) for r in webnlg_test[j].references)

    n = len(outputs)
    aligned = sum(
        overlap(i, i) >= max(overlap(i, i - 1), overlap(i, (i + 1) % n)) for i in range(n)
    )
    shifted = sum(overlap(i, (i + 1) % n) > overlap(i, i) for i in range(n))
    assert aligned >= 0.95 * n
    assert shifted < 0.05 * n


# ---------------------------------------------------------------------------- DART


def test_dart_counts_and_linearisation(dart_test):
    assert len(dart_test) == 5097
    assert sum(len(e.references) for e in dart_test) == 12552
    assert dart_test[0].source == (
        "Hawaii Five-O : notes : Episode: The Flight of the Jewels | "
        "[TABLECONTEXT] : [title] : Jeff Daniels | [TABLECONTEXT] : title : Hawaii Five-O"
    )
    dev = load_split("dart", "dev", DATA)
    assert len(dev) == 2768 and sum(len(e.references) for e in dev) == 6980
    assert dev[0].source == (
        "Mars Hill College : joined : 1973 | "
        "Mars Hill College : location : Mars Hill, North Carolina"
    )
    # dev from JSON == dev from the XML of the same release
    xml_dev = dart_mod.read_xml(DATA / "dart" / dart_mod.DEV_XML)
    assert [(e.source, e.references) for e in xml_dev] == [(e.source, e.references) for e in dev]


def test_dart_test_aligned_with_official_reference_files(dart_test):
    def norm(s):
        return re.sub(r"\W+", "", s.lower())

    for k, name in enumerate(dart_mod.REFERENCE_FILES):
        raw = (DATA / "dart" / name).read_bytes().decode("utf-8")
        lines = raw.split("\r\n")
        assert lines[-1] == ""
        lines = lines[:-1]
        assert len(lines) == len(dart_test)
        for i, (ex, line) in enumerate(zip(dart_test, lines, strict=True)):
            if k < len(ex.references):
                assert norm(ex.references[k]) == norm(line), (k, i)
            else:
                assert line == "", (k, i)
    ref0 = (DATA / "dart" / dart_mod.REFERENCE_FILES[0]).read_text(encoding="utf-8").splitlines()
    assert ref0[1] == "in 1982 , jed jenkins in american playhouse was played by jeff daniels ."
    assert dart_test[1].references[0] == (
        "In 1982, Jed Jenkins in American Playhouse was played by Jeff Daniels."
    )


# ---------------------------------------------------------------------------- XSum


def test_xsum_local_test():
    test = load_split("xsum", "test", DATA)
    assert len(test) == 250
    split_ids = json.loads((DATA / "xsum" / "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json").read_text())
    official = set(split_ids["test"])
    assert all(e.meta["id"] in official for e in test)
    assert test[0].meta["id"] == "10138849"
    assert all(len(e.references) == 1 and e.references[0] for e in test)


def test_low_data_protocol(e2e_dev):
    train, dev = low_data_split(e2e_dev, 100, seed=1)
    assert len(train) == 100 and len(dev) == 30
    assert not {e.source for e in train} & {e.source for e in dev}
    again = low_data_split(e2e_dev, 100, seed=1)
    assert again == (train, dev)
    other = low_data_split(e2e_dev, 100, seed=2)
    assert [e.source for e in other[0]] != [e.source for e in train]
    assert [len(low_data_split(e2e_dev, n, 0)[1]) for n in (50, 200)] == [15, 60]
    with pytest.raises(DataError):
        low_data_split(e2e_dev, 500, seed=0)  # 500 + 150 > 547
    with pytest.raises(DataError):
        low_data_split(e2e_dev, 0, seed=0)


def test_low_data_dev_disjoint_with_duplicate_sources():
    # many inputs share one source: dev must still never repeat a training input
    dup = [Example("same", (f"r{i}",), {}) for i in range(20)]
    uniq = [Example(f"s{i}", ("r",), {}) for i in range(10)]
    for seed in range(20):
        train, dev = low_data_split(dup + uniq, 10, seed=seed)
        assert len(train) == 10 and len(dev) == 3
        assert not {e.source for e in train} & {e.source for e in dev}, seed


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "kwargs", "must_name"),
    [
        (("e2e2", "dev"), {}, "e2e, webnlg, dart, xsum"),
        (("e2e", "valid"), {}, "train, dev, test"),
        (("webnlg", "test"), {"subset": "new"}, "all, seen, unseen"),
        (("e2e", "test"), {"subset": "seen"}, "all"),
    ],
)
def test_unknown_choices_are_clear(args, kwargs, must_name):
    with pytest.raises(DataError) as info:
        load_split(*args, DATA, **kwargs)
    msg = str(info.value)
    assert must_name in msg and "\n" not in msg


def test_missing_file_in_existing_root_is_named(tmp_path):
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "trainset.csv").write_text("mr,ref\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_split("e2e", "dev", tmp_path)
    assert "devset.csv" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "webnlg2017" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="webnlg2017"):
        load_split("webnlg", "train", tmp_path)
    (tmp_path / "dart").mkdir()
    with pytest.raises(DataError, match="dart-v1.1.1-full-test.xml"):
        load_split("dart", "test", tmp_path)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
@pytest.mark.parametrize("task", TASKS)
def test_offline_fails_fast_with_both_remedies(monkeypatch, tmp_path, task, var):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_split(task, "train", tmp_path)
    assert time.perf_counter() - start < 0.5
    msg = str(info.value)
    assert "data.root=" in msg and "network access to the Hugging Face hub" in msg
    assert var in msg and "\n" not in msg


# ---------------------------------------------------------------------------- hub fallback


def _fake_datasets(monkeypatch, tables):
    calls = []

    def load_dataset(repo, config=None, split=None, revision=None):
        calls.append((repo, config, split, revision))
        return tables[(repo, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub_mod, "probe_hub", lambda timeout=1.0: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return calls


def test_hub_fallback_converts_to_same_examples(monkeypatch, tmp_path):
    tables = {
        ("tuetschek/e2e_nlg", "validation"): [
            {"meaning_representation": "name[A], eatType[pub]", "human_reference": "r1"},
            {"meaning_representation": "name[B], familyFriendly[yes]", "human_reference": "r2"},
            {"meaning_representation": "name[A], eatType[pub]", "human_reference": "r3"},
        ],
        ("EdinburghNLP/xsum", "train"): [{"document": "doc", "summary": "sum", "id": "7"}],
        ("Yale-LILY/dart", "train"): [
            {
                "tripleset": [["S", "REL", "O"], ["S", "other", "P"]],
                "subtree_was_extended": False,
                "annotations": {"source": ["e2e", "webnlg"], "text": ["t1", "t2"]},
            }
        ],
        ("webnlg-challenge/web_nlg", "test"): [
            {
                "category": "Artist" if i % 2 else "Airport",
                "eid": f"Id{i + 1}",
                "size": 1,
                "modified_triple_sets": {"mtriple_set": [['A_b | rel | "C"']]},
                "lex": {"comment": ["good"], "lid": ["Id1"], "text": [f"text {i}"], "lang": [""]},
                "test_category": tc,
            }
            for i, tc in enumerate(
                ["testdata_with_lex"] * 1862
                + ["testdata_unseen_with_lex"] * 3
                + ["testdata_no_lex"]
            )
        ],
    }
    calls = _fake_datasets(monkeypatch, tables)
    e2e = load_split("e2e", "dev", tmp_path)
    assert [(e.source, e.references) for e in e2e] == [
        ("name : A | Type : pub", ("r1", "r3")),
        ("name : B | family friendly : yes", ("r2",)),
    ]
    assert load_split("xsum", "train", tmp_path) == [Example("doc", ("sum",), {"id": "7"})]
    (dart,) = load_split("dart", "train", DATA)  # local dart folder has no train: hub
    assert dart.source == "S : rel : O | S : other : P" and dart.references == ("t1", "t2")
    web = load_split("webnlg", "test", tmp_path, subset="unseen")
    assert len(web) == 931 and web[0].source == 'A_b : rel : "C"'
    assert ("tuetschek/e2e_nlg", None, "validation", None) in calls
