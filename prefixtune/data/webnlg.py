"""WebNLG Challenge 2017 (Gardent et al., 2017).

Local files (``<root>/webnlg2017/``): ``train/`` and ``dev/`` (folders ``1triples`` ...
``7triples``, one XML file per category) and ``test/testdata_with_lex.xml`` (1,862 entries,
15 categories). Train/dev entries are read folder by folder (triple count), files in name
order, entries in file order (train 6,940 entries / 18,102 texts; dev 872 / 2,268). The test
order is the file order, which is the order of the official scoring files (line i of a
system output = entry i), e.g. ``../shared/data/scoring/webnlg_test_bart-large.txt``.

Hub fallback: ``webnlg-challenge/web_nlg``, config ``webnlg_challenge_2017``. Its test split
concatenates ``testdata_with_lex`` with the unseen-only and no-lex files (4,615 rows); we keep
only the rows of ``testdata_with_lex`` (by ``test_category``) and check there are 1,862.

Linearisation (paper: ``subject : relation : object | subject : relation : object``) of the
MODIFIED triple set, triples in file order. Entities and relations are kept exactly as in
the release -- underscores (``Abilene_Regional_Airport``) and quotes (``"18L/36R"``)
included -- because the released prefix-tuning code does the same (it formats the raw
``subject``/``property``/``object`` strings of the WebNLG JSON). The released code put a
leading `` | `` before the first triple; we follow the paper's format without it.

references: every ``lex`` text in file order (including ``comment="toFix"`` ones, which the
released code dropped at training time; their comments are in ``meta["lex_comments"]``).

meta: ``{"category", "seen", "eid", "size", "lex_comments"}``; ``seen`` = the category is one
of the 10 training categories (:data:`SEEN_CATEGORIES`). ``subset="seen"``/``"unseen"`` keeps
those entries only (test: 971 seen, 891 unseen).
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, Example, clean, local_files, read_xml_entries
from .hub import HubSource, field_list, load_hub_rows

FOLDER = "webnlg2017"
TEST_FILE = "test/testdata_with_lex.xml"
TEST_SIZE = 1862
SUBSETS = ("all", "seen", "unseen")
#: The 10 categories of the training data ("seen"); the test adds 5 unseen ones.
SEEN_CATEGORIES = frozenset(
    {
        "Airport",
        "Astronaut",
        "Building",
        "City",
        "ComicsCharacter",
        "Food",
        "Monument",
        "SportsTeam",
        "University",
        "WrittenWork",
    }
)
# Script-based repos cannot run on datasets>=4; their parquet conversion branch is tried next.
HUB = {
    split: [
        HubSource("webnlg-challenge/web_nlg", hub_split, config="webnlg_challenge_2017"),
        HubSource(
            "webnlg-challenge/web_nlg",
            hub_split,
            config="webnlg_challenge_2017",
            revision="refs/convert/parquet",
        ),
    ]
    for split, hub_split in (("train", "train"), ("dev", "dev"), ("test", "test"))
}


def split_triple(triple: str) -> tuple[str, str, str]:
    """``"s | p | o"`` -> ``(s, p, o)`` (an object may itself contain `` | ``)."""
    parts = [p.strip() for p in triple.split(" | ")]
    if len(parts) < 3:
        raise DataError(f"WebNLG: malformed triple {triple!r}")
    return parts[0], parts[1], " | ".join(parts[2:])


def linearize_triples(triples: list[str]) -> str:
    """``["A | b | C", ...]`` -> ``"A : b : C | ..."``."""
    return " | ".join(" : ".join(split_triple(t)) for t in triples)


def _example(triples, texts, comments, category, eid, size) -> Example:
    return Example(
        source=linearize_triples(triples),
        references=tuple(texts),
        meta={
            "category": category,
            "seen": category in SEEN_CATEGORIES,
            "eid": eid,
            "size": size,
            "lex_comments": tuple(comments),
        },
    )


def read_xml(path: Path) -> list[Example]:
    """The entries of one release XML file; a malformed entry is one DataError naming the
    file, the entry's line and its eid."""
    return read_xml_entries(path, "WebNLG", _xml_example)


def _xml_example(entry) -> Example:
    triples = [clean(t.text) for t in entry.iterfind("modifiedtripleset/mtriple")]
    if not triples:
        raise DataError("no modifiedtripleset/mtriple element")
    lexes = entry.findall("lex")
    if not lexes:
        raise DataError("no lex element (no reference text)")
    split = [split_triple(t) for t in triples]  # a bad triple: DataError "WebNLG: ..."
    size = entry.get("size")
    if size is None:
        size = len(split)
    elif not size.strip().isdigit():
        raise DataError(f"size={size!r} is not a number of triples")
    return _example(
        triples,
        [clean(lex.text) for lex in lexes],
        [lex.get("comment", "") for lex in lexes],
        entry.get("category", ""),
        entry.get("eid", ""),
        int(size),
    )


def _size(value: object, triples: list, where: str) -> int:
    """A hub row's size: its number of triples."""
    if not value:  # absent, empty or 0: the number of triples, as before
        return len(triples)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"WebNLG: {where}: size={value!r} is not a number of triples") from None


def _split_files(root: Path, split: str) -> list[Path] | None:
    if split == "test":
        return local_files(root, FOLDER, [TEST_FILE], "webnlg", split)
    base = root / FOLDER
    if not base.is_dir():
        return None
    files = sorted((base / split).glob("*triples/*.xml"), key=lambda p: (p.parent.name, p.name))
    if not files:
        raise DataError(
            f"webnlg {split}: no XML files under {base / split} in the data root {root} "
            f"(expected {FOLDER}/{split}/<n>triples/*.xml)"
        )
    return files


def _from_hub(split: str, root: Path) -> list[Example]:
    rows = load_hub_rows("webnlg", split, HUB[split], local=f"{root / FOLDER} not found")
    out = []
    for r in rows:
        if split == "test":
            tc = (r.get("test_category") or "").lower()
            if "unseen" in tc or "no_lex" in tc:
                continue
        triple_sets = field_list(r["modified_triple_sets"], "mtriple_set")
        triples = list(triple_sets[0]) if triple_sets else []
        lex = r["lex"]
        out.append(
            _example(
                triples,
                [clean(t) for t in field_list(lex, "text")],
                field_list(lex, "comment"),
                r["category"],
                r["eid"],
                _size(r.get("size"), triples, f"hub row {r['eid']}"),
            )
        )
    if split == "test" and len(out) != TEST_SIZE:
        raise DataError(
            f"webnlg test from the hub has {len(out)} entries of testdata_with_lex, expected "
            f"{TEST_SIZE}; point data.root= at the official release files instead"
        )
    return out


def load(split: str, root: Path, subset: str = "all") -> list[Example]:
    files = _split_files(root, split)
    if files is None:
        examples = _from_hub(split, root)
    else:
        examples = [ex for f in files for ex in read_xml(f)]
    if subset == "seen":
        return [ex for ex in examples if ex.meta["seen"]]
    if subset == "unseen":
        return [ex for ex in examples if not ex.meta["seen"]]
    return examples
