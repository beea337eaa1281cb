"""Broken and modified data files: each is ONE clear DataError line naming the file (and line).

The broken files are made at test time in tmp_path from copies of the official release files
(../shared/data); nothing is added to the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT

from prefixtune.data import DataError, checksums, load_split
from prefixtune.data import dart as dart_mod
from prefixtune.data import e2e as e2e_mod
from prefixtune.data import webnlg as webnlg_mod
from prefixtune.data import xsum as xsum_mod

REPO = Path(__file__).resolve().parents[1]
DATA = DATA_ROOT
WEBNLG_TRAIN_1 = "webnlg2017/train/1triples/1triple_allSolutions_Airport_train_challenge.xml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # A broken local folder must never turn into a hub download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _copy(tmp_path: Path, rel: str, edit=None) -> Path:
    """``<tmp>/data/<rel>``: a copy of the official file, edited by ``edit(bytes)``."""
    dst = tmp_path / "data" / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / rel, dst)
    if edit is not None:
        dst.write_bytes(edit(dst.read_bytes()))
    return dst


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg and msg == msg.strip(), msg
    assert len(msg) < 400, msg
    return msg


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


# ---------------------------------------------------------------------------- checksums


def test_shipped_checksums_are_the_official_ones():
    official = {}
    for line in (DATA / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split(None, 1)
        if name.split("/")[0] in ("e2e", "webnlg2017", "dart", "xsum"):
            official[name.strip()] = digest
    assert checksums.known() == official
    assert "e2e/trainset.csv" in official and WEBNLG_TRAIN_1 in official


def test_official_files_load_and_are_hashed_once(monkeypatch):
    calls = []
    real = hashlib.sha256

    def counting(data=b""):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(checksums, "_HASHES", {})
    monkeypatch.setattr(checksums.hashlib, "sha256", counting)
    start = time.perf_counter()
    train = load_split("e2e", "train", DATA)
    first = time.perf_counter() - start
    assert len(train) == 4862 and sum(len(e.references) for e in train) == 42061
    assert len(calls) == 1
    load_split("e2e", "train", DATA)
    assert len(calls) == 1  # memoised on (path, size, mtime_ns, ...)
    assert first < 2.0
    web = load_split("webnlg", "dev", DATA)
    assert len(web) == 872
    n_dev_files = len(list((DATA / "webnlg2017" / "dev").glob("*triples/*.xml")))
    assert len(calls) == 1 + n_dev_files
    load_split("webnlg", "dev", DATA, subset="seen")
    assert len(calls) == 1 + n_dev_files


def test_modified_official_file_is_refused_then_allowed(tmp_path, caplog):
    # one word changed, still a perfectly valid CSV
    path = _copy(tmp_path, "e2e/devset.csv", lambda d: d.replace(b"families", b"famillies", 1))
    msg = _error(load_split, "e2e", "dev", tmp_path / "data")
    assert str(path) in msg and "e2e/devset.csv" in msg
    assert "differs from the official" in msg and "sha256" in msg
    assert "restore the official file" in msg and "data.allow_modified=true" in msg
    assert checksums.known()["e2e/devset.csv"][:12] in msg

    caplog.set_level(logging.WARNING)
    dev = load_split("e2e", "dev", tmp_path / "data", allow_modified=True)
    assert len(dev) == 547 and any("famillies" in r for e in dev for r in e.references)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "differs from the official" in w for w in warned), warned
    # the flag is per call: the next plain call refuses again
    _error(load_split, "e2e", "dev", tmp_path / "data")


def test_unmodified_copy_elsewhere_passes_and_unknown_files_are_not_checked(tmp_path, caplog):
    _copy(tmp_path, "e2e/devset.csv")
    assert len(load_split("e2e", "dev", tmp_path / "data")) == 547
    # DART train is not part of the release list: a user's own file is read unchecked
    train = tmp_path / "data" / "dart" / dart_mod.TRAIN_JSON
    train.parent.mkdir(parents=True)
    rec = {"tripleset": [["S", "REL", "O"]], "annotations": [{"source": "x", "text": "t"}]}
    train.write_text(json.dumps([rec]), encoding="utf-8")
    caplog.set_level(logging.WARNING)
    (ex,) = load_split("dart", "train", tmp_path / "data")
    assert ex.source == "S : rel : O" and ex.references == ("t",)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_read_error_is_one_line(tmp_path):
    folder = tmp_path / "data" / "e2e" / "devset.csv"
    folder.mkdir(parents=True)  # a folder where the file should be
    msg = _error(load_split, "e2e", "dev", tmp_path / "data")
    assert "devset.csv" in msg


# ---------------------------------------------------------------------------- E2E


def _cut_in_quoted_mr(data: bytes) -> bytes:
    return data[: data.index(b'\n"', len(data) // 2) + 20]


def _cut_in_unquoted_ref(data: bytes) -> bytes:
    # a row whose reference is not quoted: `"<mr>",<ref>` -- cut in the middle of the ref
    at = data.index(b'",', len(data) // 2)
    while data[at + 2 : at + 3] == b'"':
        at = data.index(b'",', at + 1)
    return data[: at + 12]


def test_e2e_cut_inside_a_quoted_field(tmp_path):
    path = _copy(tmp_path, "e2e/trainset.csv", _cut_in_quoted_mr)
    msg = _error(load_split, "e2e", "train", tmp_path / "data")
    assert str(path) in msg and "differs from the official" in msg
    assert "data.allow_modified=true" in msg

    # allowed as a modified copy, the parse error still names the file and the line
    msg = _error(load_split, "e2e", "train", tmp_path / "data", allow_modified=True)
    last = _line_of(path.read_bytes(), len(path.read_bytes()) - 1)
    assert f"{path}:{last}:" in msg and "never closed" in msg and "cut short" in msg


def test_e2e_cut_inside_an_unquoted_row(tmp_path, caplog):
    path = _copy(tmp_path, "e2e/trainset.csv", _cut_in_unquoted_ref)
    msg = _error(load_split, "e2e", "train", tmp_path / "data")
    assert str(path) in msg and "differs from the official" in msg

    # the rows before the cut are complete: allowed, it loads and warns twice
    caplog.set_level(logging.WARNING)
    train = load_split("e2e", "train", tmp_path / "data", allow_modified=True)
    n_lines = _line_of(path.read_bytes(), len(path.read_bytes()))
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f) if r][1:]
    assert sum(len(e.references) for e in train) == len(rows)
    assert rows[-1][1] == train[-1].references[-1] or any(
        e.references[-1] == rows[-1][1] for e in train
    )
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "differs from the official" in warned
    assert f"{path}:{n_lines}: the last line has no line end" in warned


def test_e2e_unterminated_quote(tmp_path):
    path = tmp_path / "mine.csv"  # not a release name: no checksum, only the parse checks
    path.write_text(
        'mr,ref\r\n"name[A], eatType[pub]",ok\r\n"name[B], food[French]","unclosed\r\n'
        '"name[C], area[riverside]",fine\r\n',
        encoding="utf-8",
    )
    msg = _error(e2e_mod.read_csv, path)
    assert msg.startswith(f"E2E: {path}:3: ") and "quot" in msg

    path.write_text('mr,ref\r\n"name[A]",ok\r\n"name[B]","unclosed at the end\r\n')
    msg = _error(e2e_mod.read_csv, path)
    assert msg.startswith(f"E2E: {path}:3: ") and "never closed" in msg


def test_e2e_quote_that_swallows_rows(tmp_path):
    # the stray quote closes 5 lines later, just before a newline: strict csv accepts it
    rows = "".join(f"name[R{i}],plain reference {i}\r\n" for i in range(5))
    path = tmp_path / "swallow.csv"
    path.write_text(f'mr,ref\r\nname[A],ok\r\nname[B],"broken\r\n{rows}name[Z],end"\r\n')
    msg = _error(e2e_mod.read_csv, path)
    assert msg.startswith(f"E2E: {path}:3: the ref field runs over 7 lines")
    # the release itself has a reference of 2 lines: still fine
    path.write_text('mr,ref\r\nname[A],"two\r\n lines"\r\n')
    (ex,) = e2e_mod.read_csv(path)
    assert ex.references == ("two\r\n lines",)


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ('"name[A]",ok\r\njust one column\r\n', 3, "expected 2 columns (mr,ref), got 1"),
        ('"name[A]",ok\r\n"name[B]",a,b\r\n', 3, "expected 2 columns (mr,ref), got 3"),
        ('"name[A]",ok\r\n"name[B]",\r\n', 3, "empty ref field"),
        ('"name[A]",ok\r\n,a ref\r\n', 3, "empty mr field"),
        ('"name[A]",ok\r\n\r\n"name[A], food[",ref\r\n', 4, "cannot parse meaning representation"),
        ('"name[A]",ok\r\n"name[B], food[pub, area[x]",r\r\n', 3, "cannot parse meaning"),
    ],
)
def test_e2e_malformed_rows(tmp_path, body, line, needle):
    path = tmp_path / "rows.csv"
    path.write_text("mr,ref\r\n" + body, encoding="utf-8")
    msg = _error(e2e_mod.read_csv, path)
    assert msg.startswith(f"E2E: {path}:{line}: ") and needle in msg, msg


def test_e2e_one_column_row_in_an_official_copy(tmp_path):
    path = _copy(tmp_path, "e2e/trainset.csv", lambda d: d.replace(b"\n", b"\njust one\n", 1))
    msg = _error(load_split, "e2e", "train", tmp_path / "data", allow_modified=True)
    assert msg == f"E2E: {path}:2: expected 2 columns (mr,ref), got 1"


def test_e2e_bad_header_and_empty_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("meaning,text\r\nname[A],x\r\n")
    assert f"{path}:1: expected the header 'mr,ref'" in _error(e2e_mod.read_csv, path)
    path.write_text("")
    assert f"{path} is empty" in _error(e2e_mod.read_csv, path)


def test_e2e_invalid_utf8_names_file_and_line(tmp_path):
    def corrupt(d: bytes) -> bytes:
        return d[:5000] + b"\xff\xfe" + d[5000:]

    path = _copy(tmp_path, "e2e/trainset.csv", corrupt)
    line = _line_of(path.read_bytes(), 5000)
    msg = _error(load_split, "e2e", "train", tmp_path / "data", allow_modified=True)
    assert msg.startswith(f"E2E: {path}:{line}: not valid UTF-8") and "byte 5000" in msg
    # without the flag the checksum speaks first
    assert "differs from the official" in _error(load_split, "e2e", "train", tmp_path / "data")


# ---------------------------------------------------------------------------- WebNLG


def _size_one(d: bytes) -> bytes:
    return d.replace(b'size="1"', b'size="one"', 1)


def test_webnlg_size_one(tmp_path):
    path = _copy(tmp_path, WEBNLG_TRAIN_1, _size_one)
    msg = _error(load_split, "webnlg", "train", tmp_path / "data")
    assert str(path) in msg and "differs from the official" in msg
    assert "data.allow_modified=true" in msg

    msg = _error(load_split, "webnlg", "train", tmp_path / "data", allow_modified=True)
    line = _line_of(path.read_bytes(), path.read_bytes().index(b"<entry "))
    assert msg == (f"WebNLG: {path}:{line}: entry Id1: size='one' is not a number of triples"), msg


def _entry_xml(entries: str) -> str:
    head = '<?xml version="1.0" encoding="UTF-8"?>\n<benchmark>\n<entries>\n'
    return f"{head}{entries}</entries>\n</benchmark>\n"


GOOD_ENTRY = (
    '<entry category="Airport" eid="Id{n}" size="1">\n'
    "<modifiedtripleset><mtriple>A | b | C</mtriple></modifiedtripleset>\n"
    '<lex comment="good" lid="Id1">A b C.</lex>\n</entry>\n'
)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ('<entry category="X" eid="Id2" size="1"><lex>t</lex></entry>\n', "no modifiedtripleset"),
        (
            '<entry category="X" eid="Id2" size="1"><modifiedtripleset><mtriple>A | b | C'
            "</mtriple></modifiedtripleset></entry>\n",
            "no lex element",
        ),
        (
            '<entry category="X" eid="Id2" size="1"><modifiedtripleset><mtriple>A b C'
            "</mtriple></modifiedtripleset><lex>t</lex></entry>\n",
            "malformed triple",
        ),
        (
            '<entry category="X" eid="Id2" size="1.5"><modifiedtripleset><mtriple>A | b | C'
            "</mtriple></modifiedtripleset><lex>t</lex></entry>\n",
            "size='1.5'",
        ),
    ],
)
def test_webnlg_malformed_entries(tmp_path, bad, needle):
    path = tmp_path / "mine.xml"
    path.write_text(_entry_xml(GOOD_ENTRY.format(n=1) + bad), encoding="utf-8")
    msg = _error(webnlg_mod.read_xml, path)
    line = path.read_text(encoding="utf-8").splitlines().index(bad.splitlines()[0]) + 1
    assert msg.startswith(f"WebNLG: {path}:{line}: entry Id2: ") and needle in msg, msg


def test_webnlg_invalid_utf8_and_broken_xml(tmp_path):
    path = tmp_path / "mine.xml"
    text = _entry_xml(GOOD_ENTRY.format(n=1) + GOOD_ENTRY.format(n=2))
    data = text.encode("utf-8")
    at = data.index(b"A b C.", data.index(b"Id2"))
    path.write_bytes(data[:at] + b"\xc3\x28" + data[at:])
    msg = _error(webnlg_mod.read_xml, path)
    assert msg.startswith(f"WebNLG: {path}:{_line_of(data, at)}: not valid UTF-8"), msg

    path.write_text(text[: len(text) // 2], encoding="utf-8")  # cut short
    msg = _error(webnlg_mod.read_xml, path)
    assert msg.startswith(f"WebNLG: {path}:") and "not well-formed XML" in msg


# ---------------------------------------------------------------------------- DART


def test_dart_modified_dev_json_and_broken_json(tmp_path):
    path = _copy(tmp_path, "dart/dart-v1.1.1-full-dev.json", lambda d: d[: len(d) // 2])
    msg = _error(load_split, "dart", "dev", tmp_path / "data")
    assert str(path) in msg and "differs from the official" in msg
    msg = _error(load_split, "dart", "dev", tmp_path / "data", allow_modified=True)
    assert msg.startswith(f"DART: {path}:") and "not valid JSON" in msg

    mine = tmp_path / "mine.json"
    mine.write_bytes(b'[{"tripleset": [["A", "b", "C"]],\n "annotations": "\xff"}]')
    assert _error(dart_mod.read_json, mine).startswith(f"DART: {mine}:2: not valid UTF-8")


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"annotations": [{"source": "s", "text": "t"}]}, "no 'tripleset'"),
        ({"tripleset": [["A", "b", "C"]]}, "no 'annotations'"),
        ({"tripleset": ["A | b | C"], "annotations": [{"text": "t"}]}, "not a list of"),
        ({"tripleset": [["A", "b"]], "annotations": [{"source": "s", "text": "t"}]}, "triple"),
        ({"tripleset": [["A", "b", "C"]], "annotations": [{"source": "s"}]}, "malformed"),
        ([1, 2], "expected an object"),
    ],
)
def test_dart_malformed_json_records(tmp_path, record, needle):
    path = tmp_path / "mine.json"
    good = {"tripleset": [["A", "b", "C"]], "annotations": [{"source": "s", "text": "t"}]}
    path.write_text(json.dumps([good, record]), encoding="utf-8")
    msg = _error(dart_mod.read_json, path)
    assert msg.startswith(f"DART: {path}: entry 1 (Id2): ") and needle in msg, msg


def test_dart_xml_entry_without_lex(tmp_path):
    path = tmp_path / "mine.xml"
    bad = (
        '<entry category="x" eid="Id2" size="1">\n'
        "<modifiedtripleset><mtriple>A | b | C</mtriple></modifiedtripleset></entry>\n"
    )
    path.write_text(_entry_xml(GOOD_ENTRY.format(n=1) + bad), encoding="utf-8")
    msg = _error(dart_mod.read_xml, path)
    line = path.read_text(encoding="utf-8").splitlines().index(bad.splitlines()[0]) + 1
    assert msg == f"DART: {path}:{line}: entry Id2: no lex element (no reference text)"


# ---------------------------------------------------------------------------- XSum


def test_xsum_modified_and_bad_records(tmp_path):
    path = _copy(tmp_path, "xsum/frank_xsum_test.jsonl", lambda d: b"{}\n" + d)
    msg = _error(load_split, "xsum", "test", tmp_path / "data")
    assert str(path) in msg and "differs from the official" in msg
    msg = _error(load_split, "xsum", "test", tmp_path / "data", allow_modified=True)
    assert msg.startswith(f"XSum: {path}:1: the record has no 'id', 'document', 'summary'")

    mine = tmp_path / "mine.jsonl"
    rec = json.dumps({"id": "1", "document": "d", "summary": "s"}).encode()
    mine.write_bytes(rec + b"\n" + rec[:-5] + b"\n")
    assert _error(xsum_mod.read_jsonl, mine).startswith(f"XSum: {mine}:2: not valid JSON")
    mine.write_bytes(rec + b"\n\n" + rec.replace(b'"d"', b'"\xe9"') + b"\n")
    assert _error(xsum_mod.read_jsonl, mine).startswith(f"XSum: {mine}:3: not valid UTF-8")
    mine.write_bytes(rec + b"\n" + json.dumps({"id": 1, "document": 5, "summary": "s"}).encode())
    assert "'document' is not a string" in _error(xsum_mod.read_jsonl, mine)
    mine.write_bytes(rec + b"\n" + rec + b"\n")
    assert len(xsum_mod.read_jsonl(mine)) == 2
