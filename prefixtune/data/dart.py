"""DART v1.1.1 (Nan et al., 2021): open-domain structured data record to text.

Local files (``<root>/dart/``): ``dart-v1.1.1-full-dev.json`` (or the ``.xml`` of the same
2,768 triple sets, same order), ``dart-v1.1.1-full-test.xml`` (5,097 triple sets / 12,552
texts). DART train is not in the local data: it comes from the hub fallback
(``Yale-LILY/dart``), or from ``dart-v1.1.1-full-train.json`` if a user puts it in the folder.

Test order and the official scorer's references -- verified on the real files
(tests/test_data.py checks it): the scorer's three files
``ref_all-delex-reference{0,1,2}.lex`` have one line per test Example, in the order of
``dart-v1.1.1-full-test.xml``; line i of ``reference{k}`` is the k-th ``lex`` of entry i
(``Example.references[k]``) lower-cased and tokenised (``Five-O`` -> ``five - o``), and a
blank line where entry i has fewer than k+1 texts. Entries with more than 3 texts (about
440) are scored on their first 3 only. System outputs are therefore written one line per
Example in :func:`load` order. The hub test split (from the release's test JSON) has the
same order as the XML: the release's dev JSON and dev XML list the same triple sets in the
same order.

Linearisation, as in the released prefix-tuning code: ``subject : relation : object``
joined by `` | `` in the given triple order, the relation lower-cased (``NOTES`` ->
``notes``; ``[TITLE]`` -> ``[title]``), subject and object kept verbatim.

references: every annotation text in file order.
meta: ``{"eid": str, "sources": tuple of annotation sources}`` (plus
``"subtree_was_extended"`` when read from JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import DataError, Example, clean, local_files, read_xml_entries
from .checksums import decode, read_checked
from .hub import HubSource, field_list, load_hub_rows

FOLDER = "dart"
DEV_JSON = "dart-v1.1.1-full-dev.json"
DEV_XML = "dart-v1.1.1-full-dev.xml"
TEST_XML = "dart-v1.1.1-full-test.xml"
TRAIN_JSON = "dart-v1.1.1-full-train.json"
#: The official multi-reference files of the DART scorer (see the module docstring).
REFERENCE_FILES = tuple(f"ref_all-delex-reference{k}.lex" for k in range(3))
# Script-based repos cannot run on datasets>=4; their parquet conversion branch is tried next.
HUB = {
    split: [
        HubSource("Yale-LILY/dart", hub_split),
        HubSource("Yale-LILY/dart", hub_split, revision="refs/convert/parquet"),
    ]
    for split, hub_split in (("train", "train"), ("dev", "validation"), ("test", "test"))
}


def linearize_triples(triples: list[tuple[str, str, str]]) -> str:
    """``[(s, r, o), ...]`` -> ``"s : r.lower() : o | ..."``."""
    return " | ".join(f"{s} : {r.lower()} : {o}" for s, r, o in triples)


def _triple(parts) -> tuple[str, str, str]:
    parts = [str(p).strip() for p in parts]
    if len(parts) < 3:
        raise DataError(f"DART: malformed triple {parts!r}")
    return parts[0], parts[1], " | ".join(parts[2:])


def _example(triples, texts, sources, eid, extra=None) -> Example:
    meta = {"eid": eid, "sources": tuple(sources)}
    if extra:
        meta.update(extra)
    return Example(source=linearize_triples(triples), references=tuple(texts), meta=meta)


def read_json(path: Path) -> list[Example]:
    """A release JSON file (a list of entries); anything malformed is one DataError naming
    the file and the line or entry."""
    text = decode(read_checked(path), path, "DART")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"DART: {path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"DART: {path} holds a JSON {type(data).__name__}, expected a list")
    out = []
    for i, d in enumerate(data):
        where = f"DART: {path}: entry {i} (Id{i + 1})"
        if not isinstance(d, dict):
            raise DataError(f"{where}: a JSON {type(d).__name__}, expected an object")
        if not d.get("tripleset"):
            raise DataError(f"{where}: no 'tripleset'")
        if not isinstance(d["tripleset"], list) or not all(
            isinstance(t, list) for t in d["tripleset"]
        ):
            raise DataError(f"{where}: 'tripleset' is not a list of [subject, relation, object]")
        if not d.get("annotations"):
            raise DataError(f"{where}: no 'annotations' (no reference text)")
        try:
            out.append(_json_example(i, d))
        except DataError as err:
            raise DataError(f"{where}: {str(err).removeprefix('DART: ')}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"{where}: malformed ({type(err).__name__}: {err})") from None
    return out


def _json_example(i: int, d: dict) -> Example:
    ann = d.get("annotations")
    return _example(
        [_triple(t) for t in d["tripleset"]],
        [clean(t) for t in field_list(ann, "text")],
        field_list(ann, "source"),
        f"Id{i + 1}",
        {"subtree_was_extended": d.get("subtree_was_extended")},
    )


def read_xml(path: Path) -> list[Example]:
    """The entries of a release XML file; a malformed entry is one DataError naming the file,
    the entry's line and its eid."""
    return read_xml_entries(path, "DART", _xml_example)


def _xml_example(entry) -> Example:
    mtriples = entry.findall("modifiedtripleset/mtriple")
    if not mtriples:
        raise DataError("no modifiedtripleset/mtriple element")
    lexes = entry.findall("lex")
    if not lexes:
        raise DataError("no lex element (no reference text)")
    return _example(
        [_triple(clean(t.text).split(" | ")) for t in mtriples],
        [clean(lex.text) for lex in lexes],
        [lex.get("comment", "") for lex in lexes],
        entry.get("eid", ""),
    )


def _from_hub(split: str, local: str) -> list[Example]:
    rows = load_hub_rows("dart", split, HUB[split], local=local)
    return [_json_example(i, r) for i, r in enumerate(rows)]


def load(split: str, root: Path, subset: str = "all") -> list[Example]:
    base = root / FOLDER
    if split == "train":
        # Not part of the local data by design: optional local JSON, else the hub.
        if (base / TRAIN_JSON).exists():
            return read_json(base / TRAIN_JSON)
        return _from_hub(split, f"{base / TRAIN_JSON} not found")
    if split == "dev":
        if (base / DEV_JSON).exists():
            return read_json(base / DEV_JSON)
        paths = local_files(root, FOLDER, [DEV_XML], "dart", split)
        if paths is None:
            return _from_hub(split, f"{base} not found")
        return read_xml(paths[0])
    paths = local_files(root, FOLDER, [TEST_XML], "dart", split)
    if paths is None:
        return _from_hub(split, f"{base} not found")
    return read_xml(paths[0])
