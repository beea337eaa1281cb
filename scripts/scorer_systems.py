"""System outputs for the scorer-fidelity tests (issue 14), regenerated from the data.

``python scripts/scorer_systems.py OUT [--data-root DIR]`` writes, per task, the outputs of seven
varied systems plus the references in the official scorers' input formats, so that the official
scorers can be run on them (see ``tests/data/scorer_fidelity/README.md`` for the commands); the
tests call :func:`build` and score the same outputs with our scorer.

Systems (deterministic: seeded ``random.Random``, no model):

* ``template``: a rule-based system from the input (E2E: one clause per MR slot; WebNLG and DART:
  one sentence per triple, "subject relation-words object."; XSum: the lead sentence);
* ``dropped``: the first reference with about a third of its words dropped;
* ``shuffled``: the last reference with its words shuffled;
* ``copy``: the linearised input itself;
* ``edge``: empty lines, punctuation-only and punctuation-heavy lines, very short lines and "0"
  tokens (the corner cases of tokenizers, length penalties and n-gram counts), otherwise a
  reference;
* ``nonascii``: the first reference with letters accented, names and symbols in other scripts
  (Cyrillic, Greek, CJK, "°", "–", "ß", "æ", typographic quotes, a no-break space);
* ``project``: real generations: E2E the project's committed prefix-tuning test outputs
  (docs/results/e2e_smollm2_cpu), WebNLG and DART the BART outputs in ../shared/data/scoring;
  XSum (no generations exist) a second rule-based system, the first 25 words of the article.
  E2E also gets ``project_finetune``, the committed fine-tuning outputs.

Inputs: E2E all 630 test MRs; WebNLG every 5th test entry plus every entry with more than three
references (387 entries); DART every 5th test triple set (1,020); XSum the 250 FRANK test pairs.
The subsets keep the tests fast (TER is pure Python here) while keeping real data.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs without `pip install -e .`

from prefixtune.data import default_data_root, load_split  # noqa: E402

TASKS = ("e2e", "webnlg", "dart", "xsum")
SEED = 14
RESULTS = REPO / "docs" / "results" / "e2e_smollm2_cpu"

# Punctuation-heavy and odd lines; every tokenizer in the official scorers splits these its way.
PUNCT_LINES = (
    '" ... -- ( ) ; : !! ?? , . & < > / % $ # @ * + = [ ] { } ~ ^ | \\ `',
    "!!!",
    "...",
    "0",
    "0 0 0 , 0 . 0",
    "it's 5.5 -- no, 5,5 ; (really) ?",
    "a",
    "the the",
)


@dataclass
class TaskSystems:
    """One task's inputs (references, WebNLG seen flags) and its systems' outputs."""

    task: str
    refs: list[list[str]]
    systems: dict[str, list[str]]
    seen: list[bool] | None = None
    # what the official scorer reads besides the outputs (the subset's ids / line numbers)
    keys: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    return text.split()


def dropped(text: str, rng: random.Random) -> str:
    kept = [w for w in _words(text) if rng.random() >= 0.33]
    return " ".join(kept)


def shuffled(text: str, rng: random.Random) -> str:
    words = _words(text)
    rng.shuffle(words)
    return " ".join(words)


_ACCENTS = str.maketrans(
    {"a": "á", "e": "é", "o": "ø", "u": "ü", "i": "í", "c": "ç", "n": "ñ", "A": "Å", "E": "É"}
)
_EXTRAS = ("Москва", "Ελλάδα", "東京", "20 °C", "Madrid–Barajas", "Straße", "Ærø", "“quoted”")


def non_ascii(text: str, rng: random.Random) -> str:
    words = _words(text)
    out = []
    for w in words:
        if w[:1].isupper() or rng.random() < 0.2:
            w = w.translate(_ACCENTS)
        out.append(w)
    if out:
        out.insert(rng.randrange(len(out) + 1), rng.choice(_EXTRAS))
    joined = " ".join(out)
    return joined.replace(" ", "\u00a0", 1) if rng.random() < 0.2 else joined


def edge(text: str, i: int) -> str:
    kind = i % 6
    if kind == 0:
        return ""
    if kind == 1:
        return PUNCT_LINES[(i // 6) % len(PUNCT_LINES)]
    if kind == 2:  # punctuation around the words
        return " ".join(f"({w})," if j % 2 else f'"{w}"...' for j, w in enumerate(_words(text)))
    if kind == 3:  # one to three words
        return " ".join(_words(text)[: 1 + (i // 6) % 3])
    return text


def _e2e_template(mr: str) -> str:
    slots = dict(re.findall(r"(\w+)\[([^\]]*)\]", mr))
    name = slots.pop("name", "It")
    kind = slots.pop("eatType", "restaurant")
    parts = [f"{name} is a {kind}"]
    if "food" in slots:
        parts.append(f"serving {slots.pop('food')} food")
    if "area" in slots:
        parts.append(f"in the {slots.pop('area')}")
    sentence = " ".join(parts) + "."
    for key, value in slots.items():
        words = re.sub(r"([A-Z])", r" \1", key).lower()
        sentence += f" Its {words} is {value}."
    return sentence


def _triples(source: str) -> list[tuple[str, str, str]]:
    out = []
    for part in source.split(" | "):
        bits = part.split(" : ")
        if len(bits) < 3:
            bits = [*bits, "", ""][:3]
        out.append((bits[0], " : ".join(bits[1:-1]), bits[-1]))
    return out


def _triple_template(source: str) -> str:
    sentences = []
    for s, p, o in _triples(source):
        rel = re.sub(r"([a-z])([A-Z])", r"\1 \2", p).replace("_", " ").lower()
        sentences.append(f"{s.replace('_', ' ')} {rel} {o.replace('_', ' ')}.".strip())
    return " ".join(sentences)


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").replace("\r\n", "\n").splitlines()


def _common(task: str, refs: list[list[str]], sources: list[str]) -> dict[str, list[str]]:
    rng = random.Random(f"{SEED}-{task}")
    present = [[r for r in seg if r.strip()] for seg in refs]
    return {
        "dropped": [dropped(seg[0], rng) for seg in present],
        "shuffled": [shuffled(seg[-1], rng) for seg in present],
        "copy": list(sources),
        "edge": [edge(seg[0], i) for i, seg in enumerate(present)],
        "nonascii": [non_ascii(seg[0], rng) for seg in present],
    }


def e2e(root: Path) -> TaskSystems:
    examples = load_split("e2e", "test", root)
    refs = [list(e.references) for e in examples]
    systems = {"template": [_e2e_template(e.meta["mr"]) for e in examples]}
    systems |= _common("e2e", refs, [e.meta["mr"] for e in examples])
    systems["project"] = _read(RESULTS / "prefix_generations_test.txt")
    systems["project_finetune"] = _read(RESULTS / "finetune_generations_test.txt")
    return TaskSystems("e2e", refs, systems, keys=[e.meta["mr"] for e in examples])


def webnlg_indices(examples: list) -> list[int]:
    return [i for i, e in enumerate(examples) if i % 5 == 0 or len(e.references) > 3]


def webnlg(root: Path) -> TaskSystems:
    examples = load_split("webnlg", "test", root)
    idx = webnlg_indices(examples)
    sub = [examples[i] for i in idx]
    refs = [list(e.references) for e in sub]
    systems = {"template": [_triple_template(e.source) for e in sub]}
    systems |= _common("webnlg", refs, [e.source for e in sub])
    bart = _read(root / "scoring" / "webnlg_test_bart-large.txt")
    systems["project"] = [bart[i] for i in idx]
    seen = [bool(e.meta["seen"]) for e in sub]
    return TaskSystems("webnlg", refs, systems, seen=seen, keys=[e.meta["eid"] for e in sub])


def dart(root: Path) -> TaskSystems:
    examples = load_split("dart", "test", root)
    files = [root / "dart" / f"ref_all-delex-reference{k}.lex" for k in range(3)]
    columns = [_read(p) for p in files]
    idx = list(range(0, len(examples), 5))
    refs = [[col[i].strip() for col in columns] for i in idx]
    sources = [examples[i].source for i in idx]
    systems = {"template": [_triple_template(s) for s in sources]}
    systems |= _common("dart", refs, sources)
    bart = _read(root / "scoring" / "dart_test_bart-large.txt")
    systems["project"] = [bart[i] for i in idx]
    return TaskSystems("dart", refs, systems, keys=[str(i) for i in idx])


def xsum(root: Path) -> TaskSystems:
    examples = load_split("xsum", "test", root)
    refs = [list(e.references) for e in examples]
    lead = [re.split(r"(?<=[.!?])\s+", e.source.strip(), maxsplit=1)[0] for e in examples]
    systems = {"template": lead}
    systems |= _common("xsum", refs, [" ".join(e.source.split()[:60]) for e in examples])
    systems["project"] = [" ".join(e.source.split()[:25]) for e in examples]
    return TaskSystems("xsum", refs, systems, keys=[e.meta["id"] for e in examples])


BUILDERS = {"e2e": e2e, "webnlg": webnlg, "dart": dart, "xsum": xsum}


def build(task: str, root: Path | None = None) -> TaskSystems:
    """The inputs and system outputs of ``task``, from the data root (default: the project's)."""
    return BUILDERS[task](Path(root) if root is not None else default_data_root())


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _webnlg_xml(root: Path, eids: list[str], out: Path) -> None:
    """The subset of testdata_with_lex.xml, entries renumbered Id1..IdN (the official
    evaluation.py maps output line k to entry "Idk")."""
    tree = ET.parse(root / "webnlg2017" / "test" / "testdata_with_lex.xml")
    entries = tree.getroot().find("entries")
    assert entries is not None
    wanted = {eid: k for k, eid in enumerate(eids, start=1)}
    for entry in list(entries):
        k = wanted.get(entry.attrib["eid"])
        if k is None:
            entries.remove(entry)
        else:
            entry.attrib["eid"] = f"Id{k}"
    tree.write(out, encoding="utf-8", xml_declaration=True)


def write(out: Path, root: Path | None = None) -> None:
    """Every task's system outputs and references, in the official scorers' formats."""
    root = Path(root) if root is not None else default_data_root()
    for task in TASKS:
        bundle = build(task, root)
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, hyps in bundle.systems.items():
            assert len(hyps) == len(bundle.refs), (task, name)
            assert all("\n" not in h and "\r" not in h for h in hyps), (task, name)
            _write_lines(folder / f"{name}.txt", hyps)
        if task == "e2e":  # the challenge format: references one a line, blank line between MRs
            _write_lines(folder / "refs.txt", [r for seg in bundle.refs for r in [*seg, ""]])
        elif task == "webnlg":
            _webnlg_xml(root, bundle.keys, folder / "testdata_with_lex.xml")
        else:
            width = 3 if task == "dart" else max(len(seg) for seg in bundle.refs)
            for k in range(width):
                column = [seg[k] if k < len(seg) else "" for seg in bundle.refs]
                _write_lines(folder / f"reference{k}.txt", column)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (one subfolder per task)")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args(argv)
    write(args.out, args.data_root)
    print(f"wrote {', '.join(TASKS)} systems under {args.out}")


if __name__ == "__main__":
    main()
