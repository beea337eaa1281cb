"""E2E NLG Challenge (Novikova et al., 2017), release v1.0.0.

Local files (``<root>/e2e/``): ``trainset.csv``, ``devset.csv``, ``testset_w_refs.csv``;
columns ``mr,ref``, one row per reference. Hub fallback: ``tuetschek/e2e_nlg``
(``meaning_representation``, ``human_reference``; same rows in the same order).

One :class:`Example` per DISTINCT MR, in the order the MRs first appear, with all its
references in file order (dev: 547 MRs / 4,672 refs; test: 630 MRs / 4,693 refs) -- the
E2E scorer's "one output per MR" order.

Linearisation (paper, "Data formats"; the released code's ``src1_*.txt`` files):
``name[The Eagle], eatType[coffee shop], food[French]`` ->
``name : The Eagle | Type : coffee shop | food : French``: attributes keep the MR's order,
joined by `` | ``, each ``key : value`` with the released code's attribute names
(eatType -> ``Type``, priceRange -> ``price``, familyFriendly -> ``family friendly``;
name, food, area, near, customer rating unchanged). Values are kept exactly as in the
release: the released code's files were additionally space-tokenised (``£ 30``); we do not
tokenise, the scorer tokenises for itself.

meta: ``{"mr": raw MR string}``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from .base import DataError, Example, local_files
from .hub import HubSource, load_hub_rows

FOLDER = "e2e"
FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
# Script-based repos cannot run on datasets>=4; their parquet conversion branch is tried next.
HUB = {
    split: [
        HubSource("tuetschek/e2e_nlg", hub_split),
        HubSource("tuetschek/e2e_nlg", hub_split, revision="refs/convert/parquet"),
    ]
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test"))
}

#: MR attribute -> name used in the linearised source (the released code's naming).
ATTRIBUTE_NAMES = {
    "name": "name",
    "eatType": "Type",
    "food": "food",
    "priceRange": "price",
    "customer rating": "customer rating",
    "area": "area",
    "familyFriendly": "family friendly",
    "near": "near",
}

_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """``"name[X], eatType[pub]"`` -> ``[("name", "X"), ("eatType", "pub")]`` (MR order)."""
    slots = []
    pos = 0
    mr = mr.strip()
    while pos < len(mr):
        m = _SLOT.match(mr, pos)
        if m is None:
            raise DataError(f"E2E: cannot parse meaning representation {mr!r} at {pos}")
        slots.append((m.group(1), m.group(2).strip()))
        pos = m.end()
    return slots


def linearize_mr(mr: str) -> str:
    """The paper's E2E source: ``name : The Eagle | Type : coffee shop | food : French``."""
    return " | ".join(f"{ATTRIBUTE_NAMES.get(k, k)} : {v}" for k, v in parse_mr(mr))


def group_pairs(pairs: Iterable[tuple[str, str]]) -> list[Example]:
    """(mr, ref) rows -> one Example per distinct MR, first-appearance order."""
    refs: dict[str, list[str]] = {}
    for mr, ref in pairs:
        refs.setdefault(mr, []).append(ref)
    return [
        Example(source=linearize_mr(mr), references=tuple(r), meta={"mr": mr})
        for mr, r in refs.items()
    ]


def read_csv(path: Path) -> list[Example]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["mr", "ref"]:
            raise DataError(f"E2E: {path} does not start with the header 'mr,ref'")
        return group_pairs((row[0], row[1]) for row in reader if row)


def load(split: str, root: Path, subset: str = "all") -> list[Example]:
    paths = local_files(root, FOLDER, [FILES[split]], "e2e", split)
    if paths is not None:
        return read_csv(paths[0])
    rows = load_hub_rows(
        "e2e", split, HUB[split], local=f"{root / FOLDER / FILES[split]} not found"
    )
    return group_pairs((r["meaning_representation"], r["human_reference"]) for r in rows)
