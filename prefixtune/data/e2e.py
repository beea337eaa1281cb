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
import io
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from .base import DataError, Example, local_files
from .checksums import decode, read_checked
from .hub import HubSource, load_hub_rows

log = logging.getLogger(__name__)

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

_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")


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
    """The release CSV; anything malformed is one DataError naming the file and the line.

    The csv module is strict here: its lenient default reads a file cut inside a quoted field
    as one huge last field, which silently dropped most of a truncated training set.
    """
    text = decode(read_checked(path), path, "E2E")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    refs: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}  # MR -> line of its first row (to name a bad MR)
    line = 1  # first physical line of the row being read
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"E2E: {path} is empty; expected the header 'mr,ref' and rows")
        if [h.strip() for h in header] != ["mr", "ref"]:
            got = ",".join(header)[:60]
            raise DataError(f"E2E: {path}:1: expected the header 'mr,ref', got {got!r}")
        line = reader.line_num + 1
        for row in reader:
            row_line, line = line, reader.line_num + 1
            if not row:
                continue
            if len(row) != 2 or line - row_line > 1 or not row[0].strip() or not row[1].strip():
                _check_row(row, f"{path}:{row_line}", line - row_line)  # names what is wrong
            mr, ref = row
            if mr not in refs:
                refs[mr] = []
                first_line[mr] = row_line
            refs[mr].append(ref)
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise DataError(
                f"E2E: {path}:{line}: a quoted field opened on this line is never closed "
                f"(the file ends inside it, line {reader.line_num}); is the file cut short, "
                "or is a quote unbalanced?"
            ) from None
        raise DataError(
            f"E2E: {path}:{line}: malformed CSV quoting ({err} on line {reader.line_num}); "
            "an unbalanced quote?"
        ) from None
    if text and not text.endswith(("\n", "\r")):
        log.warning(
            "E2E: %s:%d: the last line has no line end; is the file cut short?", path, line - 1
        )
    out = []
    for mr, r in refs.items():
        try:
            source = linearize_mr(mr)
        except DataError as err:
            reason = str(err).removeprefix("E2E: ")
            raise DataError(f"E2E: {path}:{first_line[mr]}: {reason}") from None
        out.append(Example(source=source, references=tuple(r), meta={"mr": mr}))
    return out


#: A reference of the release spans at most 2 lines and 400 characters; a multi-line field far
#: beyond that is a stray quote that swallowed the rows after it.
_MAX_LINES_IN_FIELD = 3
_MAX_MULTILINE_FIELD = 2000


def _check_row(row: list[str], where: str, n_lines: int) -> None:
    if len(row) != 2:
        raise DataError(f"E2E: {where}: expected 2 columns (mr,ref), got {len(row)}")
    for name, value in zip(("mr", "ref"), row, strict=True):
        if ("\n" in value or "\r" in value) and (
            n_lines > _MAX_LINES_IN_FIELD or len(value) > _MAX_MULTILINE_FIELD
        ):
            raise DataError(
                f"E2E: {where}: the {name} field runs over {n_lines} lines "
                f"({len(value)} characters); an unbalanced quote swallowed the rows after it?"
            )
        if not value.strip():
            raise DataError(f"E2E: {where}: empty {name} field")


def load(split: str, root: Path, subset: str = "all") -> list[Example]:
    paths = local_files(root, FOLDER, [FILES[split]], "e2e", split)
    if paths is not None:
        return read_csv(paths[0])
    rows = load_hub_rows(
        "e2e", split, HUB[split], local=f"{root / FOLDER / FILES[split]} not found"
    )
    return group_pairs((r["meaning_representation"], r["human_reference"]) for r in rows)
