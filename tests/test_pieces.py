"""Small pieces: collation (loss on y only), generation order, atomic checkpoints, loggers."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, TINY, compose_cfg

from prefixtune.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from prefixtune.collate import Collator
from prefixtune.errors import UsageError
from prefixtune.generate import generate_outputs, merge_outputs
from prefixtune.loggers import JsonlLogger, wandb_names
from prefixtune.models import load_model
from prefixtune.prefix import IGNORE_INDEX
from prefixtune.runfolder import (
    atomic_write,
    claim_run_dir,
    remove_stale_temp_files,
    umask,
    write_json,
)


@pytest.fixture(scope="module")
def gpt2():
    return load_model(compose_cfg(["model=tiny-gpt2"]).model, DATA_ROOT)


def test_decoder_only_text_is_x_eos_y_eos_with_loss_on_y(gpt2):
    _, tok = gpt2
    col = Collator(tok, encoder_decoder=False, max_source_tokens=32, max_target_tokens=32)
    a, b = col.encode("name : A", "A is nice."), col.encode("name : Bb | food : French", "Hi.")
    batch = col.train_batch([a, b])
    assert a.source[-1] == 50256 and a.target[-1] == 50256
    assert tok.decode(a.source + a.target) == "name : A<|endoftext|> A is nice.<|endoftext|>"
    row = batch["labels"][0]
    assert (row[: len(a.source)] == IGNORE_INDEX).all()
    assert row[len(a.source) : len(a.source) + len(a.target)].tolist() == a.target
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    gen = col.generation_batch(["name : A", "name : Bb | food : French"])
    assert gen["attention_mask"][0, 0] == 0 and gen["input_ids"][0, -1] == 50256  # left-padded


def test_encoder_decoder_batch_shifts_the_target():
    tok = load_model(compose_cfg(["model=tiny-bart"]).model, DATA_ROOT)[1]
    col = Collator(tok, encoder_decoder=True, max_source_tokens=8, max_target_tokens=8)
    batch = col.train_batch([col.encode("a b c d e f g h i j k", "x y")])
    assert batch["input_ids"].shape[1] == 8 and batch["input_ids"][0, -1] == 50256
    assert batch["decoder_input_ids"][0, 0] == 50256
    assert batch["decoder_input_ids"][0, 1:].tolist() == batch["labels"][0, :-1].tolist()


def test_generation_returns_one_output_per_input_in_order(gpt2):
    model, tok = gpt2
    col = Collator(tok, encoder_decoder=False, max_source_tokens=32, max_target_tokens=8)
    sources = ["a", "b c d e f", "g h", "i j k"]
    full = merge_outputs(
        [
            generate_outputs(
                model,
                col,
                sources,
                max_rows=3,
                num_beams=2,
                max_new_tokens=4,
                show_progress=False,
            )
        ],
        4,
    )
    single = [
        generate_outputs(
            model, col, [s], max_rows=2, num_beams=2, max_new_tokens=4, show_progress=False
        )[0][1]
        for s in sources
    ]
    assert full == single
    shares = [
        generate_outputs(
            model,
            col,
            sources,
            max_rows=2,
            num_beams=2,
            max_new_tokens=4,
            rank=r,
            world_size=2,
            show_progress=False,
        )
        for r in (0, 1)
    ]
    assert merge_outputs(shares, 4) == full


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, lambda f: f.write("old"))

    def boom(f):
        f.write("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_claim_run_dir_refuses_used_folders(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        claim_run_dir(tmp_path / "used", False, [])
    fresh = claim_run_dir(tmp_path / "fresh", False, [])
    assert fresh.path == tmp_path / "fresh" and not fresh.resumed
    fresh.release(failed=True)  # nothing written: the folder goes away
    assert not (tmp_path / "fresh").exists()
    again = claim_run_dir(tmp_path / "fresh", True, [])  # nothing to resume: a fresh run
    assert again.path == tmp_path / "fresh" and not again.resumed
    again.release()


def test_claim_is_exclusive_and_a_default_folder_moves_on(tmp_path):
    first = claim_run_dir(tmp_path / "run", False, [])
    # the same folder, claimed at the same moment (still empty but for the lock)
    with pytest.raises(UsageError, match="being written by another run"):
        claim_run_dir(tmp_path / "run", False, [])
    second = claim_run_dir(tmp_path / "run", False, [], unique=True)
    assert second.path == tmp_path / "run-2"
    (first.path / "metrics.json").write_text("{}")
    first.release(failed=True)  # it wrote something: kept
    assert (tmp_path / "run" / "metrics.json").is_file()
    second.release()


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time; from prefixtune.runfolder import claim_run_dir; "
        f"c = claim_run_dir({str(out)!r}, False, []); "
        "open(c.path / 'checkpoint.safetensors', 'w').close(); print('held', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="being written by another process"):
            claim_run_dir(out, True, [])
    finally:
        proc.kill()
        proc.wait()
    resumed = claim_run_dir(out, True, [])  # kill -9 released it
    assert resumed.resumed and resumed.path == out
    resumed.release()


def test_checkpoint_round_trips_without_pickle(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    param = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones(4)
    opt.step()
    state = {
        "step": 7,
        "trainable": {"p": param.detach().clone()},
        "optimizer": opt.state_dict(),
        "best": {"loss": math.inf, "step": 0, "params": None},
        "rng": [rng_state()],
        "config": {"a": [1, 2.5, "x", None, True]},
    }
    save_checkpoint(tmp_path, state)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    loaded = load_checkpoint(tmp_path)
    assert loaded["step"] == 7 and loaded["best"]["loss"] == math.inf
    assert torch.equal(loaded["trainable"]["p"], param.detach())
    assert loaded["config"] == state["config"]
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(opt2.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])
    set_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert not (tmp_path / "checkpoint.safetensors").read_bytes().startswith(b"\x80")  # no pickle
    mode = (tmp_path / "checkpoint.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask()  # 0644 as config.yaml, not mkstemp's 0600


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 10, os.urandom(2000), b"{not safetensors", "truncated"]
)
def test_a_bad_checkpoint_is_one_line(tmp_path, content):
    if content == "truncated":
        save_checkpoint(tmp_path, {"step": 1, "t": torch.zeros(1000)})
        data = (tmp_path / "checkpoint.safetensors").read_bytes()
        content = data[: len(data) // 2]
    (tmp_path / "checkpoint.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as err:
        load_checkpoint(tmp_path)
    assert "\n" not in str(err.value)


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 1, "x": Payload()}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="pickled checkpoint of an older prefixtune"):
        load_checkpoint(run)
    # a pickle under the new name is just a corrupt file
    (run / "checkpoint.pt").rename(run / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run)
    assert not marker.exists()


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / "prefix").mkdir()
    stale = [tmp_path / ".checkpoint.safetensors.abc123.tmp", tmp_path / "prefix" / ".x.q.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("keep")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.txt"]


def test_json_files_are_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "a": None,
        "b": [None, 1.5],
        "c": {"d": None},
    }
    log = JsonlLogger(tmp_path)
    log.log({"step": 1, "split": "dev", "loss": math.nan})
    log.close()
    assert "NaN" not in (tmp_path / "losses.jsonl").read_text()


def test_jsonl_logger_drops_records_after_the_resumed_step(tmp_path):
    log = JsonlLogger(tmp_path)
    for step in (1, 2, 3):
        log.log({"step": step, "split": "train", "loss": 1.0})
    log.close()
    with open(tmp_path / "losses.jsonl", "a") as f:
        f.write('{"step": 4, "spl')  # cut by kill -9
    JsonlLogger(tmp_path, resume_step=2).close()
    lines = (tmp_path / "losses.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_wandb_group_and_tags_name_the_ablation(tmp_path):
    cfg = compose_cfg([*TINY, "prefix.length=7", "prefix.mode=infix", "logger=wandb"])
    group, tags, name = wandb_names(cfg)
    assert group == "e2e-tiny-gpt2-prefix"
    assert {"prefix.length:7", "prefix.mode:infix", "prefix.init:random"} <= set(tags)
    assert "L7" in name


def test_wandb_logger_run_writes_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    from prefixtune.train import train

    overrides = ["logger=wandb", "logger.wandb.mode=offline"]
    train(compose_cfg([*TINY, *overrides], tmp_path / "run"), overrides)
    assert (tmp_path / "run" / "wandb_id.txt").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert torch.isfinite(
        torch.tensor(json.loads((tmp_path / "run" / "metrics.json").read_text())["dev_loss"])
    )


def test_best_parameters_live_on_disk_next_to_the_state(tmp_path):
    from prefixtune.checkpoint import TrainState, best_params, load_state, save_state, write_best

    params = {"w": torch.arange(4.0)}
    state = TrainState(step=6, best_loss=1.5, best_step=4, trainable=params, config={"seed": 1})
    save_state(tmp_path, state)
    with pytest.raises(CheckpointError, match="best parameters, of step 4"):
        best_params(tmp_path, load_state(tmp_path))  # no best.safetensors
    write_best(tmp_path, {"w": torch.ones(4)}, step=2)
    with pytest.raises(CheckpointError, match="holds the parameters of step 2"):
        best_params(tmp_path, load_state(tmp_path))
    write_best(tmp_path, {"w": torch.ones(4)}, step=4)
    assert torch.equal(best_params(tmp_path, load_state(tmp_path))["w"], torch.ones(4))
    # the best step is the current one, or none improved: the model's own parameters count
    assert best_params(tmp_path, TrainState(step=4, best_loss=1.0, best_step=4)) is None
    assert best_params(tmp_path, TrainState(step=4)) is None
    loaded = load_state(tmp_path)
    assert (loaded.step, loaded.best_step, loaded.best_loss) == (6, 4, 1.5)
    assert torch.equal(loaded.trainable["w"], params["w"])
