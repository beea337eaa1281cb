"""prefixtune-generate: a run's prefix outside its run gives the run's own generations, JSONL
mixes prefixes in one call with the same outputs as one prefix at a time, and bad input is one
error line."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, compose_cfg

from prefixtune.generate_cli import main
from prefixtune.train import train

GEN = ["--num-beams", "2", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on the same tiny GPT-2 (same seed, so the same base weights) with
    prefixes of different lengths, and one on tiny Llama (another base)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (
        ("a", []),
        ("b", ["prefix.length=3", "train.lr=1e-2"]),
        ("llama", ["model=tiny-llama"]),
    ):
        overrides = [*TINY, "eval.split=dev", *extra]
        train(compose_cfg(overrides, root / name), overrides)
        out[name] = root / name
    return out


def generate(args, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_runs_prefix_reproduces_its_generations_and_scores(runs, tmp_path, capsys):
    out = tmp_path / "out.txt"
    args = ["--prefix", runs["a"] / "prefix", "--task", "e2e", "--split", "dev"]
    code, printed, err = generate([*args, "--max-examples", "3", *GEN, "--output", out], capsys)
    assert code == 0, err
    assert out.read_text() == (runs["a"] / "generations_dev.txt").read_text()
    assert set(json.loads(printed)) == {"bleu", "nist", "meteor", "rouge_l", "cider"}


def test_jsonl_mixes_prefixes_with_the_outputs_of_each_alone(runs, tmp_path, capsys):
    sources = ["name : Alimentum | area : city centre", "name : Zizzi", "food : Thai | near : Bar"]
    plain = tmp_path / "in.txt"
    plain.write_text("".join(s + "\n" for s in sources))
    alone = {}
    for name in ("a", "b"):
        dest = tmp_path / f"{name}.txt"
        args = ["--prefix", runs[name] / "prefix", "--input", plain, *GEN, "--output", dest]
        assert generate(args, capsys)[0] == 0
        alone[name] = dest.read_text().splitlines()
    assert alone["a"] != alone["b"]  # the two prefixes really differ
    mixed_in = tmp_path / "in.jsonl"
    picks = ["a", "b", "b", "a", "b", "a"]
    records = [{"prefix": p, "input": sources[i % 3]} for i, p in enumerate(picks)]
    mixed_in.write_text("".join(json.dumps(r) + "\n" for r in records))
    dest = tmp_path / "mixed.jsonl"
    prefixes = ["--prefix", f"a={runs['a'] / 'prefix'}", "--prefix", f"b={runs['b'] / 'prefix'}"]
    args = [*prefixes, "--input", mixed_in, *GEN, "--output", dest, "--output-format", "jsonl"]
    code, _, err = generate(args, capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [r["prefix"] for r in lines] == picks
    assert [r["output"] for r in lines] == [alone[p][i % 3] for i, p in enumerate(picks)]


@pytest.mark.parametrize(
    "case",
    ["unknown prefix", "other base", "empty line", "missing input", "output exists", "no prefix"],
)
def test_bad_input_is_one_error_line(case, runs, tmp_path, capsys):
    good = tmp_path / "in.txt"
    good.write_text("name : Zizzi\n")
    out = tmp_path / "out.txt"
    a = ["--prefix", f"a={runs['a'] / 'prefix'}"]
    args, expected = {
        "unknown prefix": (
            [*a, "--input", _jsonl(tmp_path, {"prefix": "zz", "input": "x"})],
            "unknown prefix 'zz'",
        ),
        "other base": (
            [*a, "--prefix", f"l={runs['llama'] / 'prefix'}", "--input", good],
            "one run serves one base model",
        ),
        "empty line": ([*a, "--input", _text(tmp_path, "name : A\n\n")], ":2: empty input line"),
        "missing input": ([*a, "--input", tmp_path / "nowhere.txt"], "does not exist"),
        "output exists": ([*a, "--input", good], "already exists"),
        "no prefix": (["--prefix", tmp_path, "--input", good], "not a prefix checkpoint"),
    }[case]
    if case == "output exists":
        out.write_text("keep\n")
    code, _, err = generate([*args, *GEN, "--output", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert case == "output exists" or not out.exists()
    if case == "output exists":
        assert out.read_text() == "keep\n"


def _jsonl(folder, record) -> str:
    path = folder / "in.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return str(path)


def _text(folder, text) -> str:
    path = folder / "lines.txt"
    path.write_text(text)
    return str(path)
