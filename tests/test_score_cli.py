"""``prefixtune-score`` run as a user runs it: a subprocess; last stdout line is JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCORING

from prefixtune.metrics.stats import read_stats

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "prefixtune.score", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_e2e_end_to_end():
    proc = run_cli(
        "--task", "e2e",
        "--hyps", SCORING / "e2e_example_baseline.txt",
        "--refs", SCORING / "e2e_example_refs.txt",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    assert round(result["bleu"], 2) == 72.03


def test_stats_file_gives_back_the_scores_and_is_never_overwritten(tmp_path):
    stats_file = tmp_path / "stats_test.json"
    args = [
        "--task", "e2e",
        "--hyps", SCORING / "e2e_example_baseline.txt",
        "--refs", SCORING / "e2e_example_refs.txt",
        "--stats", stats_file,
    ]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stats = read_stats(stats_file)
    assert stats.task == "e2e" and len(stats.inputs) == 16
    for key, value in stats.scores().items():
        assert value == pytest.approx(result[key], rel=1e-9), key
    before = stats_file.read_bytes()
    assert_one_line_error(run_cli(*args), "already exists")
    assert stats_file.read_bytes() == before


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_xsum_crlf_and_empty_output(tmp_path):
    hyps = write(tmp_path / "hyps.txt", b"the cat sat\r\n\r\n")
    refs = write(tmp_path / "refs.txt", b"the cat sat\r\na dog ran\r\n")
    proc = run_cli("--task", "xsum", "--hyps", hyps, "--refs", refs)
    assert proc.returncode == 0, proc.stderr
    assert "1 empty output line(s)" in proc.stderr and "line 2" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert result["rouge1"] == pytest.approx(50.0)  # 100 and 0, averaged


def test_webnlg_refs_with_seen_flags(tmp_path):
    # Grouped references; --seen-flags splits the scores; TER/METEOR run on two inputs only.
    hyps = write(tmp_path / "h.txt", "suárez airport .\nthe cat\n".encode())
    refs = write(tmp_path / "r.txt", b"Suarez Airport.\n\nThe cat.\nA cat.\n")
    flags = write(tmp_path / "f.txt", b"seen\nunseen\n")
    proc = run_cli("--task", "webnlg", "--hyps", hyps, "--refs", refs, "--seen-flags", flags)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"all", "seen", "unseen"}
    assert result["seen"]["ter"] == 0.0  # identical after the challenge normalisation
    assert result["unseen"]["ter"] == pytest.approx(1 / 3)  # "the cat" vs "the cat ."


def test_wrong_line_count(tmp_path):
    hyps = write(tmp_path / "hyps.txt", b"a\nb\nc\n")
    refs = write(tmp_path / "refs.txt", b"a\nb\n")
    assert_one_line_error(
        run_cli("--task", "xsum", "--hyps", hyps, "--refs", refs), "has 2 lines", "has 3"
    )


def test_e2e_group_count_mismatch(tmp_path):
    hyps = write(tmp_path / "hyps.txt", b"a\nb\nc\n")
    refs = write(tmp_path / "refs.txt", b"x\ny\n\nz\n")
    assert_one_line_error(
        run_cli("--task", "e2e", "--hyps", hyps, "--refs", refs), "3 lines", "2 inputs"
    )


def test_non_utf8(tmp_path):
    hyps = write(tmp_path / "hyps.txt", b"fine\nbad \xff byte\n")
    refs = write(tmp_path / "refs.txt", b"a\nb\n")
    assert_one_line_error(
        run_cli("--task", "xsum", "--hyps", hyps, "--refs", refs),
        str(hyps),
        "line 2 is not valid UTF-8",
    )


def test_unknown_task(tmp_path):
    assert_one_line_error(
        run_cli("--task", "bleu", "--hyps", "x", "--refs", "y"), "e2e", "webnlg", "dart", "xsum"
    )


def test_unknown_split(tmp_path):
    assert_one_line_error(
        run_cli("--task", "e2e", "--hyps", "x", "--split", "train"), "'dev'", "'test'"
    )


def test_missing_file(tmp_path):
    assert_one_line_error(
        run_cli("--task", "xsum", "--hyps", tmp_path / "nope.txt", "--refs", tmp_path / "r"),
        "cannot read",
    )


def test_e2e_nist_mode_perl_on_the_committed_outputs():
    # The E2E scorer's default (Perl) mode gives the committed prefix outputs NIST 8.11, its
    # -p mode (ours by default, the paper's) 7.97; the other metrics do not depend on the mode.
    hyps = REPO / "docs" / "results" / "e2e_smollm2_cpu" / "prefix_generations_test.txt"
    proc = run_cli("--task", "e2e", "--hyps", hyps, "--split", "test", "--nist-mode", "perl")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert round(result["nist"], 2) == 8.11
    assert round(result["bleu"], 2) == 64.15


def test_nist_mode_only_for_e2e(tmp_path):
    hyps = write(tmp_path / "hyps.txt", b"a\n")
    assert_one_line_error(
        run_cli("--task", "xsum", "--hyps", hyps, "--refs", hyps, "--nist-mode", "perl"),
        "--nist-mode only applies to --task e2e",
    )
    assert_one_line_error(
        run_cli("--task", "e2e", "--hyps", hyps, "--refs", hyps, "--nist-mode", "mteval"),
        "'python'",
        "'perl'",
    )
