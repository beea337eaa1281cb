"""The real entry point end to end on tiny models: run folder, resume after kill -9, two
processes, never clobbering a used folder, and the one-line failures that happen mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, compose_cfg, run_cli

from prefixtune.checkpoint import load_state
from prefixtune.data import DataError
from prefixtune.errors import UsageError
from prefixtune.metrics.stats import read_stats
from prefixtune.train import TrainingDiverged, train


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_complete_run_folder(out: Path, n_eval: int, splits=("dev",)) -> dict:
    for name in ("config.yaml", "overrides.json", "run.json", "metrics.json", "losses.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["git"]["commit"] and isinstance(run["git"]["dirty"], bool)
    assert run["packages"]["torch"] and run["packages"]["transformers"]
    counts = run["parameters"]
    assert 0 < counts["trainable"] and 0 < counts["stored"] <= counts["trainable"]
    assert 0 < counts["stored_pct"] < 100 and counts["base"] > 0
    assert run["wall_time_s"] > 0 and run["memory"]["cpu_max_rss_mb"] > 0
    losses = read_jsonl(out / "losses.jsonl")
    assert [r["step"] for r in losses if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in losses if r["split"] == "dev"] == [2, 4]
    for split in splits:
        lines = (out / f"generations_{split}.txt").read_text().split("\n")
        assert len(lines) == n_eval + 1 and lines[-1] == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["dev_loss"] > 0
    return metrics


def test_cli_end_to_end_decoder_prefix_scored(tmp_path):
    out = tmp_path / "run"
    res = run_cli([*TINY, "eval.split=both", "eval.score=true", f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = assert_complete_run_folder(out, 3, splits=("dev", "test"))
    for split in ("dev", "test"):
        assert set(metrics[split]) >= {"bleu", "nist", "meteor", "rouge_l", "cider"}
        # the per-input statistics give back the scores (what collect's bootstrap resamples)
        stats = read_stats(out / f"stats_{split}.json")
        assert stats.n == 3
        for key, value in stats.scores().items():
            assert value == pytest.approx(metrics[split][key], rel=1e-9, abs=1e-12), key
    assert (out / "prefix" / "prefix_config.json").is_file()
    overrides = json.loads((out / "overrides.json").read_text())["overrides"]
    assert "eval.split=both" in overrides


def test_cli_end_to_end_bart_prefix(tmp_path):
    out = tmp_path / "run"
    res = run_cli([*TINY, "model=tiny-bart", "task=webnlg", f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_complete_run_folder(out, 3)
    assert "webnlg" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny-llama", "prefix.mode=infix"],
        ["prefix.mode=embedding", "prefix.init=text"],
        ["model=tiny-bart", "method=ft_top2"],
    ],
    ids=["llama-gqa-infix", "gpt2-embedding-text-init", "bart-ft_top2"],
)
def test_train_function_on_other_variants(overrides, tmp_path):
    cfg = compose_cfg([*TINY, *overrides], tmp_path / "run")
    metrics = train(cfg, overrides)
    assert_complete_run_folder(tmp_path / "run", 3)
    assert metrics["dev_loss"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    if "method=ft_top2" in overrides:  # only the top 2 decoder layers
        assert (tmp_path / "run" / "trained" / "trainable.safetensors").is_file()
        state = load_state(tmp_path / "run").trainable
        assert state and all("decoder.layers." in n for n in state)
        assert run["parameters"]["trainable_pct"] < 100


def _tiny_resume_args(folder: Path) -> list[str]:
    return [*TINY, "train.max_steps=6", "train.checkpoint_every=1", f"hydra.run.dir={folder}"]


def test_resume_after_kill_9_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    ref_res = run_cli(_tiny_resume_args(ref))
    assert ref_res.returncode == 0, ref_res.stderr[-3000:]

    # Hydra gives each launch a fresh timestamped folder; the same command + resume=true finds
    # the unfinished sibling run and continues it.
    runs = tmp_path / "runs"
    args = _tiny_resume_args(runs) + ["hydra.run.dir=" + str(runs) + "/${now:%H-%M-%S-%f}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(runs.glob("*/checkpoint.safetensors")) and time.time() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = list(runs.iterdir())
    assert not (killed / "metrics.json").exists()
    killed_state = load_state(killed)
    killed_at = killed_state.step
    assert 1 <= killed_at < 6

    res = run_cli([*args, "resume=true"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(runs.iterdir()) == [killed]  # continued in place, no stray folder
    run = json.loads((killed / "run.json").read_text())
    assert run["resumed_from_step"] >= killed_at
    # the wall time counts the killed segment (up to its checkpoint) and the resumed one
    assert run["wall_time_s"] >= killed_state.elapsed_s + run["wall_time_this_segment_s"] - 1
    assert run["wall_time_s"] > run["wall_time_this_segment_s"]
    assert json.loads((killed / "metrics.json").read_text()) == json.loads(
        (ref / "metrics.json").read_text()
    )
    assert read_jsonl(killed / "losses.jsonl") == read_jsonl(ref / "losses.jsonl")
    assert (killed / "generations_dev.txt").read_text() == (ref / "generations_dev.txt").read_text()


def test_two_process_cpu_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["train.py", *TINY, "cpu=true", f"hydra.run.dir={out}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2
    assert len((out / "generations_dev.txt").read_text().splitlines()) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_second_run_into_a_used_folder_never_overwrites(tmp_path):
    out = tmp_path / "run"
    train(compose_cfg(TINY, out), [])
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="not empty; refusing to overwrite"):
        train(compose_cfg(TINY, out), [])
    res = run_cli([*TINY, f"hydra.run.dir={out}"])
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: run folder") and "\n" not in res.stderr.strip()
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    overrides = ["method=finetune", "train.lr=1e30", "train.checkpoint_every=1"]
    cfg = compose_cfg([*TINY, *overrides], out)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2") as err:
        train(cfg, overrides)
    assert "\n" not in str(err.value)
    state = load_state(out)
    assert state.step == 1 and f"{out / 'checkpoint.safetensors'} at step 1" in str(err.value)
    assert all(torch.isfinite(t).all() for t in state.trainable.values())
    assert not (out / "metrics.json").exists()
    read_jsonl(out / "losses.jsonl")  # strict JSON throughout


@pytest.mark.parametrize("eval_every", [1, 2])
def test_a_checkpoint_is_good_only_when_everything_is_finite(tmp_path, eval_every):
    """lr=1e30: the first step's parameters are huge and the dev loss on them is NaN; that
    state is never saved, and the message names the checkpoint that exists (or none)."""
    out = tmp_path / "run"
    overrides = ["method=finetune", "train.lr=1e30", f"train.eval_every={eval_every}"]
    with pytest.raises(TrainingDiverged) as err:
        train(compose_cfg([*TINY, *overrides], out), overrides)
    message = str(err.value)
    assert "\n" not in message
    state = load_state(out)
    if state is None:
        assert "no checkpoint was written" in message
    else:
        assert f"at step {state.step}" in message
        assert all(torch.isfinite(t).all() for t in state.trainable.values())
        assert state.best_loss < float("inf")
    text = (out / "losses.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    read_jsonl(out / "losses.jsonl")


def test_missing_data_root_is_one_line(tmp_path):
    cfg = compose_cfg([*TINY, f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run")
    with pytest.raises(DataError) as err:
        train(cfg, [])
    assert "\n" not in str(err.value) and "nowhere" in str(err.value)


def test_hub_model_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = compose_cfg([*TINY, "model=gpt2-medium"], tmp_path / "run")
    start = time.time()
    with pytest.raises(UsageError, match="hub is unreachable") as err:
        train(cfg, [])
    assert time.time() - start < 10 and "\n" not in str(err.value)


def test_resume_ignores_what_does_not_change_the_run(tmp_path):
    """eval.batch_size (and the logger, the data root) may differ on resume: the same rule
    finds the run and accepts its checkpoint (runfolder.NON_SEMANTIC_KEYS)."""
    runs = tmp_path / "runs"
    first = [*TINY, "eval.split=none", f"hydra.run.dir={runs}/a"]
    train(compose_cfg(first, runs / "a"), first)
    (runs / "a" / "metrics.json").unlink()  # as if it had died after its last checkpoint
    again = [*TINY, "eval.split=none", "eval.batch_size=2", "resume=true"]
    metrics = train(compose_cfg(again, runs / "b"), again)
    assert metrics["output_dir"] == str(runs / "a")
    info = json.loads((runs / "a" / "run.json").read_text())
    assert info["resumed_from_step"] == 4 and not (runs / "b").exists()
    assert not (runs / "a" / "best.safetensors").exists()  # the artefact holds them now
