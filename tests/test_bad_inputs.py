"""Every bad input to the CLIs ends in exit status 2 and exactly one ``error:`` line: no
traceback, and every file that existed before the command is byte-identical after it.

Each case runs the real command in a subprocess, as a user would. Cases that fail before the
model is loaded take a few seconds; the few that need the tiny model take ~10 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, REPO, TINY, run_cli

from prefixtune.checkpoint import save_checkpoint


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given the test's tmp folder
    message: str  # a part of the error line
    setup: Callable[[Path], None] = lambda tmp: None
    command: str = "train"  # train | score
    env: dict[str, str] = field(default_factory=dict)


def _used_folder(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("mine\n")


def _checkpoint(content: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        run = tmp / "run"
        run.mkdir()
        (run / "config.yaml").write_text("seed: 42\n")
        if content == "truncated":
            save_checkpoint(run, {"step": 1, "t": torch.zeros(4096)})
            data = (run / "checkpoint.safetensors").read_bytes()
            (run / "checkpoint.safetensors").write_bytes(data[: len(data) // 3])
        else:
            (run / "checkpoint.safetensors").write_bytes(content)

    return setup


def _pickled_checkpoint(tmp: Path) -> None:
    run = tmp / "run"
    run.mkdir()
    payload = f"__import__('os').mkdir({str(tmp / 'pwned')!r})"
    # A pickle that runs code when loaded: protocol 0 text calling eval(payload).
    (run / "checkpoint.pt").write_bytes(b"cbuiltins\neval\n(V" + payload.encode() + b"\ntR.")


def _e2e_copy(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(DATA_ROOT / "e2e", tmp / "data" / "e2e")
        shutil.copytree(DATA_ROOT / "tokenizers", tmp / "data" / "tokenizers")
        path = tmp / "data" / "e2e" / "trainset.csv"
        path.write_bytes(edit(path.read_bytes()))

    return setup


def _cut_mid_line(data: bytes) -> bytes:
    return data[: data.index(b'\n"', len(data) // 2) + 20]  # inside a quoted MR


def _webnlg_size_one(tmp: Path) -> None:
    shutil.copytree(DATA_ROOT / "webnlg2017", tmp / "data" / "webnlg2017")
    shutil.copytree(DATA_ROOT / "tokenizers", tmp / "data" / "tokenizers")
    path = next((tmp / "data" / "webnlg2017" / "train").rglob("*.xml"))
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r'size="\d+"', 'size="one"', text, count=1), encoding="utf-8")


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a folder\n")


def _tiny_data(tmp: Path) -> list[str]:
    return [*TINY, f"data.root={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}"]


CASES = [
    Case("typo in a key", lambda t: ["prefix.lenght=3"], "did you mean prefix.length?"),
    Case("typo in a group", lambda t: ["modle=gpt2"], "did you mean model?"),
    Case("zero beams", lambda t: ["eval.num_beams=0"], "eval.num_beams=0"),
    Case("lr overflows", lambda t: ["train.lr=1e38"], "train.lr=1e+38 is out of range"),
    Case("negative lr", lambda t: ["train.lr=-1"], "train.lr=-1.0 is out of range"),
    Case("min above max", lambda t: ["eval.min_new_tokens=9", "eval.max_new_tokens=3"], "exceeds"),
    Case(
        "sweep with one bad job",
        lambda t: ["-m", *TINY, "prefix.length=1,0", f"hydra.sweep.dir={t / 'sweep'}"],
        "job 1 of 2 (",
    ),
    Case(
        "used named folder",
        lambda t: [*TINY, f"hydra.run.dir={t / 'run'}"],
        "is not empty",
        setup=_used_folder,
    ),
    Case(
        "empty checkpoint",
        lambda t: [*TINY, f"hydra.run.dir={t / 'run'}", "resume=true"],
        "corrupt or unreadable",
        setup=_checkpoint(b""),
    ),
    Case(
        "random-bytes checkpoint",
        lambda t: [*TINY, f"hydra.run.dir={t / 'run'}", "resume=true"],
        "corrupt or unreadable",
        setup=_checkpoint(os.urandom(3000)),
    ),
    Case(
        "truncated checkpoint",
        lambda t: [*TINY, f"hydra.run.dir={t / 'run'}", "resume=true"],
        "corrupt or unreadable",
        setup=_checkpoint("truncated"),
    ),
    Case(
        "pickled legacy checkpoint",
        lambda t: [*TINY, f"hydra.run.dir={t / 'run'}", "resume=true"],
        "pickles are never loaded",
        setup=_pickled_checkpoint,
    ),
    Case(
        "run folder under a file",
        lambda t: [*TINY, f"hydra.run.dir={t / 'afile' / 'run'}"],
        "is not a folder",
        setup=_a_file,
    ),
    Case(
        "generation past the positions",
        lambda t: [*TINY, "eval.max_new_tokens=1000", f"hydra.run.dir={t / 'run'}"],
        "eval.max_new_tokens=1000",
    ),
    Case(
        "missing data root",
        lambda t: [*TINY, f"data.root={t / 'nowhere'}", f"hydra.run.dir={t / 'run'}"],
        "nowhere",
    ),
    Case(
        "E2E cut mid-line",
        _tiny_data,
        "data.allow_modified=true",
        setup=_e2e_copy(_cut_mid_line),
    ),
    Case(
        "E2E cut mid-line, modified copy allowed",
        lambda t: [*_tiny_data(t), "data.allow_modified=true"],
        "trainset.csv",
        setup=_e2e_copy(_cut_mid_line),
    ),
    Case(
        "E2E one-column row",
        lambda t: [*_tiny_data(t), "data.allow_modified=true"],
        "trainset.csv",
        setup=_e2e_copy(lambda d: d.replace(b"\n", b"\njust one column\n", 1)),
    ),
    Case(
        "E2E invalid UTF-8",
        lambda t: [*_tiny_data(t), "data.allow_modified=true"],
        "trainset.csv",
        setup=_e2e_copy(lambda d: d[:5000] + b"\xff\xfe" + d[5000:]),
    ),
    Case(
        "WebNLG size=one",
        lambda t: [*_tiny_data(t), "task=webnlg", "data.allow_modified=true"],
        "size",
        setup=_webnlg_size_one,
    ),
    Case(
        "unwritable model cache",
        lambda t: [
            "train.max_steps=1",
            f"data.root={DATA_ROOT}",
            f"hydra.run.dir={t / 'run'}",
        ],
        "PREFIXTUNE_CACHE",
        setup=_a_file,
        env={"PREFIXTUNE_CACHE": "{tmp}/afile/cache"},
    ),
    Case(
        "scorer without data",
        lambda t: [
            "--task",
            "e2e",
            "--split",
            "test",
            "--hyps",
            str(t / "h.txt"),
            "--data-root",
            str(t / "nowhere"),
        ],
        "--data-root",
        setup=lambda t: (t / "h.txt").write_text("a\n"),
        command="score",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(case: Case, tmp_path: Path):
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    env = {k: v.format(tmp=tmp_path) for k, v in case.env.items()}
    if case.command == "train":
        res = run_cli(case.args(tmp_path), env=env, timeout=300)
    else:
        res = subprocess.run(
            [sys.executable, "-m", "prefixtune.score", *case.args(tmp_path)],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = res.stdout + res.stderr
    assert res.returncode == 2, output[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, res.stderr[-3000:]
    assert case.message in errors[0], errors[0]
    assert "Traceback" not in output
    assert snapshot(tmp_path) == before  # nothing written, nothing lost
    assert not (tmp_path / "pwned").exists()  # no pickle was ever loaded
    leftovers = [p for p in tmp_path.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not leftovers, leftovers  # a failed run leaves no empty folder behind


def test_two_runs_started_together_get_two_consistent_folders(tmp_path):
    """Same default folder (one timestamp for both): the second moves on to <folder>-2;
    the same named folder: one runs, the other stops with one line."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    def start(seed: int, folder: str) -> subprocess.Popen:
        args = [*TINY, f"seed={seed}", f"hydra.run.dir={folder}"]
        return subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    default = str(tmp_path / "runs") + "/${now:%Y}"  # the same for both, as in one second
    procs = [start(1, default), start(2, default)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    folders = sorted((tmp_path / "runs").iterdir())
    assert [f.name[4:] for f in folders] == ["", "-2"]
    assert sorted(_seed_of(f) for f in folders) == [1, 2]

    named = tmp_path / "named"
    procs = [start(1, str(named)), start(2, str(named))]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    ((_, _, err),) = [r for r in results if r[0].returncode == 2]
    assert [line for line in err.splitlines() if line.startswith("error:")][0].startswith(
        "error: run folder"
    )
    _seed_of(named)


def _seed_of(folder: Path) -> int:
    """The folder is one run's: its config, overrides and losses agree and are complete."""
    config = (folder / "config.yaml").read_text()
    seed = int(next(line for line in config.splitlines() if line.startswith("seed:")).split()[1])
    overrides = json.loads((folder / "overrides.json").read_text())["overrides"]
    assert f"seed={seed}" in overrides
    losses = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if r["split"] == "train"] == [1, 2, 3, 4]
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 4
    return seed


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    res = run_cli([*TINY, f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    res = run_cli([*TINY, f"hydra.run.dir={out}", "resume=true"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already finished; nothing to do" in res.stdout + res.stderr
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before
