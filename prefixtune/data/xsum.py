"""XSum (Narayan et al., 2018): BBC articles with one-sentence summaries.

Local "test" split: ``<root>/xsum/frank_xsum_test.jsonl`` -- 250 articles of the official
XSum TEST split (every id is in ``XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json``'s test list),
raw untokenised text as in the Hugging Face ``EdinburghNLP/xsum`` release, in file order.
Chosen over ``edinburgh_xsum_humaneval_test50.jsonl`` (50 pairs) because that file's text is
tokenised (`` , `` / `` .``) and its ids are not BBC ids of the official split, and the two
are not mixed because of their different formats. Known artefacts of the FRANK scrape are
left as they are: some sentence joins lost in documents, summaries lower-cased, and a few
escaped quotes (``\\'\\'``). The full test set (11,334) and train/dev (204,045 / 11,332) come
from the hub (``EdinburghNLP/xsum``, dev = its ``validation`` split).

Example: ``source`` = the whole article (the collator cuts its tokens to
``task.max_source_tokens``: 512 for XSum, as in the paper; the released code used 1024),
``references`` = ``(summary,)``, ``meta`` = ``{"id": str}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import DataError, Example, local_files
from .checksums import decode, read_checked
from .hub import HubSource, load_hub_rows

FOLDER = "xsum"
TEST_FILE = "frank_xsum_test.jsonl"
# The XSum release's list of the archived BBC pages, one URL per article, whose path gives the
# article's section: the paper's extrapolation splits are built from it.
URL_FILE = "XSum-WebArxiveUrls.txt"
# news -> sports: train on news articles, test on sport ones. Within news: train on the world,
# UK and business sections, test on the other news sections (health, technology, science, ...).
SEEN_NEWS_TOPICS = frozenset({"world", "uk", "business"})
SUBSETS = ("all", "news", "sports", "news-seen", "news-unseen")
# Script-based repos cannot run on datasets>=4; their parquet conversion branch is tried next.
HUB = {
    split: [
        HubSource("EdinburghNLP/xsum", hub_split),
        HubSource("EdinburghNLP/xsum", hub_split, revision="refs/convert/parquet"),
    ]
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test"))
}


def _example(row: dict) -> Example:
    return Example(
        source=row["document"], references=(row["summary"],), meta={"id": str(row["id"])}
    )


def read_jsonl(path: Path) -> list[Example]:
    """One JSON record per line; a bad line is one DataError naming the file and the line."""
    out = []
    for n, line in enumerate(decode(read_checked(path), path, "XSum").split("\n"), 1):
        if not line.strip():
            continue
        where = f"XSum: {path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: a JSON {type(row).__name__}, expected an object")
        missing = [k for k in ("id", "document", "summary") if k not in row]
        if missing:
            raise DataError(f"{where}: the record has no {', '.join(map(repr, missing))}")
        bad = [k for k in ("document", "summary") if not isinstance(row[k], str)]
        if bad:
            raise DataError(f"{where}: {', '.join(map(repr, bad))} is not a string")
        out.append(_example(row))
    return out


def load(split: str, root: Path, subset: str = "all") -> list[Example]:
    if subset != "all":
        sections = read_sections(root / FOLDER / URL_FILE)  # before any download: fail fast
        return [e for e in load(split, root) if in_subset(sections.get(e.meta["id"]), subset)]
    if split == "test":
        paths = local_files(root, FOLDER, [TEST_FILE], "xsum", split)
        if paths is not None:
            return read_jsonl(paths[0])
        local = f"{root / FOLDER / TEST_FILE} not found"
    else:
        local = f"XSum {split} is never local; only the test sample is"
    return [_example(r) for r in load_hub_rows("xsum", split, HUB[split], local=local)]


def read_sections(path: Path) -> dict[str, tuple[str, str]]:
    """Article id -> (section, topic) from the release's URL list, e.g.
    ``http://web.archive.org/web/2015.../http://www.bbc.com/news/world-africa-33905478`` ->
    ``"33905478": ("news", "world")``; ``.../sport/0/football/33905478`` -> ("sport",
    "football"). Lines that are not article URLs (blank, or without a trailing id) are skipped."""
    if not path.is_file():
        raise DataError(
            f"XSum's extrapolation subsets need the release's URL list {path}, which is "
            f"missing; put {URL_FILE} (from the XSum repository) there, or use task.subset=all"
        )
    sections = {}
    for line in decode(read_checked(path), path, "XSum").split("\n"):
        url = line.strip().rstrip("/")
        article = url.rsplit("bbc.co.uk/", 1)[-1].rsplit("bbc.com/", 1)[-1].split("/")
        if len(article) < 2 or not article[-1].split("-")[-1].isdigit():
            continue
        ident = article[-1].split("-")[-1]
        section = article[0]
        rest = [p for p in article[1:] if p != "0"]  # /sport/0/football/<id>
        topic = rest[0].split("-")[0] if rest and not rest[0].isdigit() else ""
        sections[ident] = (section, topic)
    return sections


def in_subset(section: tuple[str, str] | None, subset: str) -> bool:
    """Whether an article of this (section, topic) belongs to an extrapolation subset."""
    if section is None:
        return False  # not in the URL list: no known section
    where, topic = section
    if subset == "sports":
        return where == "sport"
    if where != "news":
        return False
    if subset == "news-seen":
        return topic in SEEN_NEWS_TOPICS
    if subset == "news-unseen":
        return topic not in SEEN_NEWS_TOPICS
    return True  # news
