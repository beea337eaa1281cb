"""Small pieces: collation (loss on y only), generation order, atomic checkpoints, loggers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_ROOT, TINY, compose_cfg

from prefixtune.checkpoint import atomic_write, choose_run_dir
from prefixtune.collate import IGNORE, Collator
from prefixtune.errors import UsageError
from prefixtune.generate import generate_outputs, merge_outputs
from prefixtune.loggers import JsonlLogger, ablation
from prefixtune.models import load_model


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
    assert (row[: len(a.source)] == IGNORE).all()
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
                batch_size=3,
                num_beams=2,
                max_new_tokens=4,
                show_progress=False,
            )
        ],
        4,
    )
    single = [
        generate_outputs(
            model, col, [s], batch_size=1, num_beams=2, max_new_tokens=4, show_progress=False
        )[0][1]
        for s in sources
    ]
    assert full == single
    shares = [
        generate_outputs(
            model,
            col,
            sources,
            batch_size=2,
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


def test_choose_run_dir_refuses_used_folders(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        choose_run_dir(tmp_path / "used", False, [])
    assert choose_run_dir(tmp_path / "fresh", False, []) == tmp_path / "fresh"
    assert choose_run_dir(tmp_path / "fresh", True, []) == tmp_path / "fresh"  # nothing to resume


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
    group, tags, name = ablation(cfg)
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
