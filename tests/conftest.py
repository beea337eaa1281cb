"""Shared test helpers: the real configs composed and shrunk, and the data/offline model paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from prefixtune.cli import CONF_DIR
from prefixtune.config import register_configs
from prefixtune.data import default_data_root

REPO = Path(__file__).resolve().parents[1]
# The official release files. The tests need them (CI has them in the same place): a missing
# folder fails the run at once rather than skipping the tests that would have caught a bug.
DATA_ROOT = default_data_root()
if not (DATA_ROOT / "SHA256SUMS").is_file():
    raise pytest.UsageError(
        f"the official data is not at {DATA_ROOT} (no SHA256SUMS there): put ../shared/data "
        "beside the repository, or set PREFIXTUNE_DATA_ROOT"
    )
SCORING = DATA_ROOT / "scoring"

# A few steps on a few examples: seconds on a CPU.
TINY = [
    f"data.root={DATA_ROOT}",
    "debug=tiny",
    "train.max_steps=4",
    "train.max_train_examples=16",
    "train.max_dev_examples=4",
    "train.batch_size=2",
    "train.eval_every=2",
    "eval.max_examples=3",
    "eval.batch_size=3",
    "eval.num_beams=2",
    "eval.max_new_tokens=6",
    "eval.min_new_tokens=0",
    "prefix.reparam_dim=16",
    "prefix.reparam_hidden=16",
]

register_configs()

# PREFIXTUNE_TEST_DEVICE=cuda builds the tests' tensors and tiny models on that device, to check
# the accelerator code paths on a machine that has one (CI has none and runs on the CPU).
if os.environ.get("PREFIXTUNE_TEST_DEVICE"):
    torch.set_default_device(os.environ["PREFIXTUNE_TEST_DEVICE"])


# Tiny random models for the prefix engine's unit tests (seconds on a CPU).
VOCAB = 120


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A tiny random GPT-2 (2 layers, 4 heads of 8)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=128,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(
    config=LlamaConfig, model=LlamaForCausalLM, seed: int = 0, **extra
) -> LlamaForCausalLM:
    """A tiny Llama (or a model of the same family: Mistral, ...) with grouped-query attention."""
    torch.manual_seed(seed)
    cfg = config(
        **extra,
        num_hidden_layers=2,
        hidden_size=48,
        intermediate_size=64,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return model(cfg).eval()


def tiny_bart(seed: int = 0) -> BartForConditionalGeneration:
    """A tiny random BART (2 + 2 layers)."""
    torch.manual_seed(seed)
    cfg = BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=128,
        init_std=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(cfg).eval()


def tiny_t5(seed: int = 0, **extra) -> T5ForConditionalGeneration:
    """A tiny random T5 (2 + 2 layers, relative position bias; extra= e.g. the gated-GELU
    feed-forward of Flan-T5: feed_forward_proj="gated-gelu")."""
    torch.manual_seed(seed)
    cfg = T5Config(
        **extra,
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    # T5's own init with its tied embeddings makes a random model repeat the token it was fed;
    # small embeddings and larger matrices give outputs that depend on the input (and prefix)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(std=0.1 if name == "shared.weight" else 0.5)
    return model


def compose_cfg(overrides: list[str], output_dir: Path | str | None = None) -> DictConfig:
    """The real conf/ composed with overrides, as Hydra would give it to train()."""
    extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra])


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180):
    """The real entry point in a subprocess (python train.py ...)."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)
