"""The prefix engine on every decoder-only family of transformers that it supports: a tiny random
model of each (2 layers, hidden size 32, vocabulary 120), its cached generate() against full
recomputation, a mixed-prefix batch against separate runs, PEFT's forward where PEFT's prefix
tuning handles the family; the families it refuses, each with a one-line reason; T5 and
Flan-T5; gradient checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import VOCAB, tiny_bart, tiny_gpt2, tiny_llama, tiny_t5
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from prefixtune.prefix import PrefixConfig, PrefixError, PrefixModel
from prefixtune.prefix.config import UNSUPPORTED_DECODER_ONLY, UNSUPPORTED_FAMILIES, check_family
from prefixtune.prefix.model import StoredPrefix
from prefixtune.prefix.wiring import enable_gradient_checkpointing

ATOL = 1e-5

# The same small sizes for every family, under whichever of these names its config uses.
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 128,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "shared_expert_intermediate_size": 32,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "rotary_dim": 4,
    "ffn_dim": 64,
    "n_inner": 64,
    "d_ff": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "is_decoder": True,  # BERT-style models as causal LMs
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "initializer_range": 0.2,
}

# Supported: a tiny model of each passes every test below (transformers 5.24).
SUPPORTED = [
    "afmoe",
    "apertus",
    "apertus1p5_text",
    "arcee",
    "aria_text",
    "beam",
    "bert",
    "bert-generation",
    "biogpt",
    "bitnet",
    "camembert",
    "codegen",
    "cohere",
    "cohere2",
    "cohere2_moe",
    "ctrl",
    "cwm",
    "data2vec-text",
    "dots1",
    "electra",
    "ernie",
    "ernie4_5",
    "ernie4_5_moe",
    "exaone",
    "exaone4",
    "exaone_moe",
    "falcon_h1",
    "flex_olmo",
    "fuyu",
    "gemma",
    "gemma3_text",
    "glm",
    "glm4",
    "glm4_moe",
    "gpt-sw3",
    "gpt2",
    "gpt_bigcode",
    "gpt_neox",
    "gptj",
    "granite",
    "granitemoe",
    "granitemoeshared",
    "helium",
    "hunyuan_v1_dense",
    "hunyuan_v1_moe",
    "hy_v3",
    "hyperclovax",
    "inkling_text",
    "internlm3",
    "iquestcoder",
    "jais2",
    "kolibri1",
    "laguna",
    "lfm2",
    "llama",
    "llama4_text",
    "mellum",
    "minimax_m2",
    "minimax_m3_vl_text",
    "ministral",
    "ministral3",
    "mistral",
    "mixtral",
    "modernbert-decoder",
    "moshi",
    "nanochat",
    "nemotron",
    "olmo",
    "olmo2",
    "olmo3",
    "olmoe",
    "opt",
    "persimmon",
    "phi",
    "phi3",
    "phimoe",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "roberta",
    "roberta-prelayernorm",
    "sarvam_moe",
    "seed_oss",
    "smollm3",
    "solar_open",
    "stablelm",
    "starcoder2",
    "xlm-roberta",
    "xlm-roberta-xl",
]
# Where PEFT's prefix tuning runs on the family, its logits equal ours; PEFT itself fails
# on these three (its own error), so they are compared with recomputation only.
PEFT_FAILS = {"falcon_h1", "gpt_bigcode", "inkling_text"}
PEFT_TOO = [family for family in SUPPORTED if family not in PEFT_FAILS]
# Refused by the engine, with (a part of) the reason it gives.
REFUSED = {
    "bart": "ignores position_ids",
    "big_bird": "does not go through transformers' attention-function registry",
    "bigbird_pegasus": "cannot switch to the prefix attention function",
    "blenderbot-small": "ignores position_ids",
    "bloom": "does not go through transformers' attention-function registry",
    "cpmant": "does not go through transformers' attention-function registry",
    "deepseek_v4": "cannot switch to the prefix attention function",
    "diffllama": "calls its self attention 2 times per forward",
    "falcon": "does not go through transformers' attention-function registry",
    "falcon_mamba": "a recurrent / state-space model",
    "flint": "cannot switch to the prefix attention function",
    "gemma2": "cannot switch to the prefix attention function",
    "gpt_neox_japanese": "does not go through transformers' attention-function registry",
    "gpt_oss": "cannot switch to the prefix attention function",
    "granite_swa": "cannot switch to the prefix attention function",
    "granitemoe_swa": "cannot switch to the prefix attention function",
    "hy_v4": "cannot switch to the prefix attention function",
    "jamba": "it is a hybrid whose",
    "kimi_linear": "it is a hybrid whose",
    "lara_mini": "it is a hybrid whose",
    "lfm3": "it is a hybrid whose",
    "mamba": "a recurrent / state-space model",
    "marian": "ignores position_ids",
    "mbart": "ignores position_ids",
    "megatron-bert": "does not go through transformers' attention-function registry",
    "mimo_v2_flash": "cannot switch to the prefix attention function",
    "minimax": "it is a hybrid whose",
    "mpt": "does not go through transformers' attention-function registry",
    "mvp": "does not go through transformers' attention-function registry",
    "nemotron_h": "it is a hybrid whose",
    "openai-gpt": "does not go through transformers' attention-function registry",
    "pegasus": "ignores position_ids",
    "prophetnet": "does not go through transformers' attention-function registry",
    "qwen3_5_moe_text": "it is a hybrid whose",
    "qwen3_5_text": "it is a hybrid whose",
    "qwen3_next": "it is a hybrid whose",
    "qwen4_exp_text": "it is a hybrid whose",
    "recurrent_gemma": "a hybrid of recurrent blocks and local attention",
    "rembert": "does not go through transformers' attention-function registry",
    "roformer": "does not go through transformers' attention-function registry",
    "rwkv": "a recurrent / state-space model",
    "trocr": "does not go through transformers' attention-function registry",
    "vaultgemma": "cannot switch to the prefix attention function",
    "xglm": "does not go through transformers' attention-function registry",
    "xlm": "does not go through transformers' attention-function registry",
    "xlstm": "a recurrent / state-space model",
}


def tiny_config(model_type: str) -> dict:
    """The TINY sizes that `model_type`'s config has (its own names or their aliases)."""
    default = AutoConfig.for_model(model_type)
    text = default.get_text_config(decoder=True)
    keys = set(text.to_dict()) | set(type(text).attribute_map) | set(default.to_dict())
    kwargs = {k: v for k, v in TINY.items() if k in keys}
    layer_types = text.to_dict().get("layer_types")
    if layer_types:  # a per-layer list (full / sliding attention, ...) for 2 layers
        kwargs["layer_types"] = layer_types[:2]
    return kwargs


def tiny(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **tiny_config(model_type))
    return AutoModelForCausalLM.from_config(config).eval()


def randomized(model: PrefixModel, seed: int) -> PrefixModel:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.copy_(torch.randn_like(p))
    return model


def direct(length: int) -> PrefixConfig:
    return PrefixConfig(length=length, reparam=False)


IDS = torch.tensor([[0, 0, 5, 9, 14], [8, 30, 4, 11, 12]])
MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # the first row left-padded


def test_the_lists_cover_transformers_causal_lms():
    assert set(SUPPORTED) <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert set(PEFT_TOO) <= set(SUPPORTED) and not set(SUPPORTED) & set(REFUSED)
    assert {"gpt2", "llama", "opt", "qwen2", "mistral", "gemma"} <= set(SUPPORTED)


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_family_cached_generate_and_mixed_batch(model_type):
    model = randomized(PrefixModel(tiny(model_type), direct(3)), seed=1)
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    cached = model.generate(input_ids=IDS, attention_mask=MASK, **kw)
    full = model.generate(input_ids=IDS, attention_mask=MASK, use_cache=False, **kw)
    plain = model.base.generate(input_ids=IDS, attention_mask=MASK, **kw)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, plain)  # the prefix is used
    # a second prefix, of another length, for the second row of a mixed batch
    other = randomized(PrefixModel(tiny(model_type), direct(2)), seed=2)
    model.stored["b"] = StoredPrefix(other.config, other.prefix_tensors())
    names = ["default", "b"]
    with torch.no_grad():
        together = model(input_ids=IDS, attention_mask=MASK, prefix=names).logits
        for i, (name, real) in enumerate(zip(names, (3, 5), strict=True)):
            alone = model(input_ids=IDS[i : i + 1, 5 - real :], prefix=name).logits[0]
            torch.testing.assert_close(together[i, 5 - real :], alone, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("model_type", PEFT_TOO)
def test_family_logits_equal_peft(model_type):
    from peft import PrefixTuningConfig, get_peft_model

    base = tiny(model_type)
    model = randomized(PrefixModel(copy.deepcopy(base), direct(3)), seed=1)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    peft_model = get_peft_model(
        base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    ).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.prefix_tensors()["self"])
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits
        ours = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("model_type", REFUSED)
def test_refused_family_is_one_line_naming_it(model_type):
    base = tiny(model_type)
    with pytest.raises(PrefixError) as err:
        PrefixModel(base, direct(2))
    message = str(err.value)
    assert message.startswith(f"model type {model_type!r} is not supported: ")
    assert REFUSED[model_type] in message and "\n" not in message
    # the base is left as it was, usable and free for another wrapper
    assert all(getattr(m, "_prefixtune", None) is None for m in base.modules())
    assert getattr(base, "_prefixtune_state", None) is None


def test_known_refusals_come_before_any_model_is_run():
    known = [(t, {}) for t in UNSUPPORTED_FAMILIES]
    known += [(t, {"is_encoder_decoder": False}) for t in UNSUPPORTED_DECODER_ONLY]
    for model_type, extra in known:
        with pytest.raises(PrefixError, match=f"^model type '{model_type}' is not supported: "):
            PrefixModel(_Unrunnable(model_type, **extra), direct(2))
    # the encoder-decoder models of those families are not refused
    check_family("bart", is_encoder_decoder=True)


def test_a_hybrid_with_layers_without_attention_names_their_kind():
    """LFM2's default config is attention only (supported above); its released models mix in
    convolution layers, which have no keys/values: refused, naming them."""
    config = AutoConfig.for_model(
        "lfm2", **{**tiny_config("lfm2"), "layer_types": ["conv", "full_attention"]}
    )
    base = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(PrefixError, match="'lfm2' is not supported: it is a hybrid whose conv"):
        PrefixModel(base, direct(2))
    assert base.config._attn_implementation != "prefixtune_sdpa"  # switched back


class _Unrunnable(torch.nn.Module):
    """Only a config: wrapping it must fail on the family, not on the missing model."""

    def __init__(self, model_type: str, **extra) -> None:
        super().__init__()
        self.config = AutoConfig.for_model(model_type, **extra)


# ---------------------------------------------------------------------- T5 and Flan-T5
T5S = {"t5": tiny_t5, "flan-t5": lambda: tiny_t5(feed_forward_proj="gated-gelu")}


@pytest.mark.parametrize("name", T5S)
def test_t5_has_three_prefixes_and_generate_uses_them(name):
    model = randomized(PrefixModel(T5S[name](), PrefixConfig(length=3, reparam=False)), seed=3)
    assert model.kinds == ("encoder", "decoder", "cross")
    assert model.shapes == {kind: (2, 4, 8) for kind in model.kinds}
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    for beams in (1, 3):
        kw = dict(max_new_tokens=6, min_new_tokens=6, num_beams=beams, do_sample=False)
        cached = model.generate(input_ids=ids, attention_mask=mask, **kw)
        full = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        plain = model.base.generate(input_ids=ids, attention_mask=mask, **kw)
        assert torch.equal(cached, full) and not torch.equal(cached, plain)


def test_t5_prefix_columns_get_no_position_bias():
    """With zero keys and values in every prefix slot, a prefix adds, at every query, one
    attention column of score q.0 + bias = bias and value 0. With no bias on the prefix columns
    that column has score 0 for every query; the result must equal eager attention computed by
    hand over [0; K] with the model's own bias on the real columns and none on the prefix."""
    base = tiny_t5()
    ids = torch.randint(3, VOCAB, (1, 5))
    dec = torch.randint(3, VOCAB, (1, 3))
    model = PrefixModel(copy.deepcopy(base), PrefixConfig(length=1, reparam=False))
    with torch.no_grad():
        for encoder in model.encoders.values():
            encoder.p.zero_()
        ours = model(input_ids=ids, decoder_input_ids=dec).logits
        # the same by hand: eager T5 attention with one extra zero key/value column, bias 0
        hand = _t5_with_zero_column(base, ids, dec)
    torch.testing.assert_close(ours, hand, atol=1e-4, rtol=1e-4)


def _t5_with_zero_column(base, ids, dec):
    """T5's forward where every attention gets one extra key/value column of zeros, scored 0
    (its bias) before the softmax: eager attention patched into T5's own module."""
    from transformers.models.t5 import modeling_t5

    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        bias = kw.get("position_bias")
        scores = query @ key.transpose(2, 3)
        if bias is not None:
            scores = scores + bias
        if attention_mask is not None:
            scores = scores + attention_mask
        zero = scores.new_zeros(*scores.shape[:-1], 1)
        weights = torch.cat([zero, scores], -1).softmax(-1)[..., 1:]
        return (weights @ value).transpose(1, 2).contiguous(), weights

    copy_ = copy.deepcopy(base)
    copy_.set_attn_implementation("eager")
    original = modeling_t5.eager_attention_forward
    modeling_t5.eager_attention_forward = eager
    try:
        return copy_(input_ids=ids, decoder_input_ids=dec).logits
    finally:
        modeling_t5.eager_attention_forward = original


def test_t5_mixed_prefix_batch_equals_separate_runs():
    model = randomized(PrefixModel(tiny_t5(), direct(3)), seed=4)
    other = randomized(PrefixModel(tiny_t5(), direct(5)), seed=5)
    model.stored["b"] = StoredPrefix(other.config, other.prefix_tensors())
    ids = torch.randint(3, VOCAB, (2, 6))
    dec = torch.randint(3, VOCAB, (2, 4))
    names = ["b", "default"]
    kw = dict(max_new_tokens=5, min_new_tokens=5, num_beams=2, do_sample=False)
    with torch.no_grad():
        together = model(input_ids=ids, decoder_input_ids=dec, prefix=names).logits
    gen = model.generate(input_ids=ids, prefix=names, **kw)
    for i, name in enumerate(names):
        with torch.no_grad():
            alone = model(input_ids=ids[i : i + 1], decoder_input_ids=dec[i : i + 1], prefix=name)
        torch.testing.assert_close(together[i], alone.logits[0], atol=ATOL, rtol=1e-4)
        assert torch.equal(gen[i], model.generate(input_ids=ids[i : i + 1], prefix=name, **kw)[0])


# ---------------------------------------------------------------------- gradient checkpointing
CHECKPOINTED = {"gpt2": tiny_gpt2, "llama": tiny_llama, "bart": tiny_bart, "t5": tiny_t5}


def _prefix_grads(build, checkpointed: bool) -> tuple[float, list[torch.Tensor], int]:
    """The loss, the prefix parameters' gradients, and how often layer 0's attention ran."""
    base = build()
    model = PrefixModel(base, PrefixConfig(length=3, reparam_dim=8, reparam_hidden=16))
    if checkpointed:
        enable_gradient_checkpointing(base)
    calls = []
    first = next(iter(model.slots.values()))
    first.register_forward_hook(lambda *args: calls.append(1))
    model.train()  # with the base's dropout: checkpointing replays the same masks
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 6))
    labels = ids[:, :4].contiguous() if model.is_encoder_decoder else ids
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return loss.item(), [p.grad for p in model.encoders.parameters()], len(calls)


@pytest.mark.parametrize("arch", CHECKPOINTED)
def test_gradient_checkpointing_gives_the_same_prefix_gradients(arch):
    loss, grads, calls = _prefix_grads(CHECKPOINTED[arch], checkpointed=False)
    loss_c, grads_c, calls_c = _prefix_grads(CHECKPOINTED[arch], checkpointed=True)
    assert calls == 1 and calls_c == 2  # the layer really is recomputed in backward
    assert loss_c == pytest.approx(loss, abs=1e-6)
    for g, g_c in zip(grads, grads_c, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g_c, g, atol=1e-6, rtol=1e-5)
