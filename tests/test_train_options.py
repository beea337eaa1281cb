"""The training loop's scale options on tiny models: the wall-clock budget (train.max_minutes),
gradient accumulation, mixed precision, a low-precision frozen base, gradient checkpointing and
torch.compile, each through the real train()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, compose_cfg
from safetensors.torch import load_file

from prefixtune.checkpoint import load_state, save_state
from prefixtune.errors import UsageError
from prefixtune.train import train


def run(tmp_path, name: str, extra: list[str]) -> tuple[dict, dict]:
    overrides = [*TINY, "eval.split=none", *extra]
    metrics = train(compose_cfg(overrides, tmp_path / name), overrides)
    info = json.loads((tmp_path / name / "run.json").read_text())
    return metrics, info


# dropout draws a different random stream for one batch of 8 than for two of 4
NO_DROPOUT = [f"+model.tiny.{k}=0.0" for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")]


def prefix_tensors(folder) -> dict[str, torch.Tensor]:
    (weights,) = list((folder / "prefix").glob("*.safetensors"))
    return load_file(weights)


def test_budget_stops_training_then_evaluates(tmp_path):
    metrics, info = run(tmp_path, "a", ["train.max_minutes=1e-6", "train.max_steps=1000"])
    assert info["training"]["stopped_by"] == "max_minutes"
    assert info["training"]["max_minutes"] == 1e-6 and info["training"]["planned_steps"] == 1000
    assert metrics["steps"] == info["training"]["steps"] < 1000
    assert (tmp_path / "a" / "metrics.json").is_file() and (tmp_path / "a" / "prefix").is_dir()
    assert set(info["phases_this_segment_s"]) >= {"fit", "evaluate"}


def test_generous_budget_runs_all_steps(tmp_path):
    metrics, info = run(tmp_path, "a", ["train.max_minutes=60"])
    assert info["training"]["stopped_by"] == "steps" and metrics["steps"] == 4


def test_budget_counts_the_earlier_segments(tmp_path):
    """A resumed run whose earlier segments used up the budget stops at once."""
    overrides = [*TINY, "eval.split=none", "train.max_minutes=5"]
    out = tmp_path / "a"
    train(compose_cfg(overrides, out), overrides)
    (out / "metrics.json").unlink()  # as if it had died after its last checkpoint
    state = load_state(out)
    state.elapsed_s = 5 * 60 + 1  # the earlier segments spent the whole budget
    state.step = state.best_step = 3  # ... at step 3 of 4, its best so far
    save_state(out, state)
    again = [*TINY, "eval.split=none", "train.max_minutes=5", "resume=true"]
    metrics = train(compose_cfg(again, tmp_path / "b"), again)
    info = json.loads((out / "run.json").read_text())
    assert metrics["steps"] == 3 and info["training"]["stopped_by"] == "max_minutes"


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 4 give the step of 1 batch of 8 (token-weighted, as the loss is)."""
    common = ["train.max_steps=1", "train.lr=1e-2", "train.eval_every=1", *NO_DROPOUT]
    _, big = run(tmp_path, "big", [*common, "train.batch_size=8"])
    _, acc = run(tmp_path, "acc", [*common, "train.batch_size=4", "train.grad_accum=2"])
    assert big["training"]["step_batch"] == acc["training"]["step_batch"] == 8
    one, two = prefix_tensors(tmp_path / "big"), prefix_tensors(tmp_path / "acc")
    assert one.keys() == two.keys()
    init = [*TINY, "eval.split=none", "train.max_steps=1", "train.lr=1e-30", *NO_DROPOUT]
    train(compose_cfg(init, tmp_path / "init"), init)
    start = prefix_tensors(tmp_path / "init")
    for key in one:
        assert not torch.allclose(one[key], start[key])  # the step moved them
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_on_cpu(tmp_path):
    metrics, info = run(tmp_path, "a", ["train.precision=bf16"])
    assert info["training"]["precision"] == "bf16" and metrics["dev_loss"] > 0
    assert all(t.dtype == torch.float32 for t in prefix_tensors(tmp_path / "a").values())


def test_bf16_frozen_base_with_fp32_prefix(tmp_path):
    """Trains, then generates through the decoding loop with the bf16 base."""
    overrides = [*TINY, "model.dtype=bf16"]
    metrics = train(compose_cfg(overrides, tmp_path / "a"), overrides)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["training"]["model_dtype"] == "bf16" and metrics["dev_loss"] > 0
    assert len((tmp_path / "a" / "generations_dev.txt").read_text().splitlines()) == 3
    assert all(t.dtype == torch.float32 for t in prefix_tensors(tmp_path / "a").values())


def test_low_precision_base_refused_for_fine_tuning(tmp_path):
    overrides = [o for o in TINY if not o.startswith("prefix.")]
    overrides += ["method=finetune", "model.dtype=bf16"]
    with pytest.raises(UsageError, match="train.precision=bf16 instead"):
        train(compose_cfg(overrides, tmp_path / "a"), overrides)


@pytest.mark.parametrize(
    "bad", ["train.max_minutes=-1", "train.grad_accum=0", "train.precision=fp16"]
)
def test_bad_scale_options_are_one_line(tmp_path, bad):
    overrides = [*TINY, bad]
    with pytest.raises(UsageError) as err:
        train(compose_cfg(overrides, tmp_path / "a"), overrides)
    assert bad.split("=")[0] in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "a").exists()


def test_gradient_checkpointing_gives_the_same_run(tmp_path):
    plain, _ = run(tmp_path, "plain", ["train.lr=1e-2"])
    ckpt, info = run(tmp_path, "ckpt", ["train.lr=1e-2", "train.gradient_checkpointing=true"])
    assert info["training"]["gradient_checkpointing"] is True
    assert ckpt["dev_loss"] == pytest.approx(plain["dev_loss"], rel=1e-5)
    a, b = prefix_tensors(tmp_path / "plain"), prefix_tensors(tmp_path / "ckpt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_compiled_training_gives_the_same_run(tmp_path, monkeypatch):
    """train.compile=true goes through torch.compile; dynamo traces the prefix engine's
    attention-registry path. The backend here is dynamo's "eager" (the graph capture without
    inductor's code generation, which takes minutes on 2 cores)."""
    real, calls = torch.compile, []

    def compile_eagerly(model, **kwargs):
        calls.append(kwargs)
        return real(model, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    plain, _ = run(tmp_path, "plain", ["train.lr=1e-2", *NO_DROPOUT])
    compiled, _ = run(tmp_path, "compiled", ["train.lr=1e-2", "train.compile=true", *NO_DROPOUT])
    assert calls == [{"dynamic": True}]
    assert compiled["dev_loss"] == pytest.approx(plain["dev_loss"], rel=1e-4)


def test_accelerate_launch_two_cpu_processes_with_accumulation(tmp_path):
    """Data-parallel through `accelerate launch` (its torchrun launcher; cpu=true takes gloo),
    with gradient accumulation: each process runs 2 micro-batches of 2 per step."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "train.py", *TINY, "cpu=true", "train.grad_accum=2"]
    cmd += [f"hydra.run.dir={out}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2 and info["training"]["step_batch"] == 2 * 2 * 2
    assert info["training"]["steps"] == 4
    assert len((out / "generations_dev.txt").read_text().splitlines()) == 3
