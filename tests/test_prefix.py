"""The prefix engine on tiny random GPT-2, Llama (grouped-query attention) and BART models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import VOCAB, tiny_bart, tiny_gpt2, tiny_llama

from prefixtune.prefix import PrefixConfig, PrefixError, PrefixModel

ATOL = 1e-5


DECODERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
ALL = {**DECODERS, "bart": tiny_bart}


def direct(length=4, **kw) -> PrefixConfig:
    return PrefixConfig(length=length, reparam=False, **kw)


def small(length=4, **kw) -> PrefixConfig:
    return PrefixConfig(length=length, reparam_dim=16, reparam_hidden=24, **kw)


def randomize(model: PrefixModel, seed: int, scale: float = 1.0) -> PrefixModel:
    """Give a prefix values big enough to change the model's outputs."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# ---------------------------------------------------------------------- against PEFT
def peft_logits(base, prefix: torch.Tensor, ids, mask):
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(
        base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix.shape[0])
    ).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prefix)
        return peft_model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", DECODERS)
def test_logits_equal_peft_prefix_tuning(arch):
    base = DECODERS[arch]()
    model = randomize(PrefixModel(copy.deepcopy(base), direct(5)), seed=1)
    ids = torch.randint(3, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        plain = base(input_ids=ids, attention_mask=mask).logits
    theirs = peft_logits(base, model.prefix_tensors()["self"].detach(), ids, mask)
    assert (ours - plain).abs().max() > 1e-2  # the prefix matters
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", DECODERS)
def test_peft_export_loads_in_peft_with_same_logits(arch, tmp_path):
    from peft import PeftModel

    base = DECODERS[arch]()
    model = randomize(PrefixModel(copy.deepcopy(base), small(3)), seed=2)
    model.export_peft(tmp_path / "adapter")
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-5)


# ---------------------------------------------------------------------- generate()
GENERATE = {
    "greedy": dict(do_sample=False, num_beams=1),
    "beam": dict(do_sample=False, num_beams=4, length_penalty=0.8, num_return_sequences=2),
    "sample": dict(do_sample=True, top_k=20, num_beams=1),
}


def _inputs(arch):
    if arch == "bart":
        ids = torch.randint(3, VOCAB, (2, 6))
        return ids, torch.ones_like(ids)
    return left_padded([[5, 9, 14, 3, 7, 22], [8, 30, 4]])


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("search", GENERATE)
def test_generate_with_cache_equals_full_recomputation(arch, search):
    model = randomize(PrefixModel(ALL[arch](), small(3)), seed=3)
    ids, mask = _inputs(arch)
    kw = dict(max_new_tokens=8, min_new_tokens=8, **GENERATE[search])
    runs = []
    for gen, use_cache in (
        (model.generate, True),
        (model.generate, False),
        (model.base.generate, True),
    ):
        torch.manual_seed(0)  # the same draws when sampling
        runs.append(gen(input_ids=ids, attention_mask=mask, use_cache=use_cache, **kw))
    cached, full, plain = runs
    assert torch.equal(cached, full)
    assert not torch.equal(cached, plain)  # the prefix is really used in generate()


@pytest.mark.parametrize("arch", DECODERS)
def test_generate_first_step_uses_the_prefix(arch):
    """The first step's scores equal our forward's last-token logits (PEFT's generate() on
    transformers 5 silently drops the prefix; ours must not)."""
    model = randomize(PrefixModel(DECODERS[arch](), direct(4)), seed=4)
    ids, mask = left_padded([[5, 9, 14, 3], [8, 30]])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=1,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(out.logits[0], logits, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", ALL)
def test_generate_cache_stores_each_rows_prefix_once(arch, tmp_path):
    """generate()'s own cache holds [P; K] per row, reports only real tokens as its length, and
    gives the same beams as transformers' DynamicCache (with which P is concatenated in
    attention at every step), for a mixed-prefix, left-padded batch."""
    from transformers import DynamicCache, EncoderDecoderCache

    from prefixtune.prefix.cache import PrefixedCache

    model = _bank(arch, tmp_path)
    names = ["b", "a"]  # lengths 5 and 2: padded to 5
    ids, mask = _inputs(arch)
    kw = dict(max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False)
    out = model.generate(
        input_ids=ids, attention_mask=mask, prefix=names, return_dict_in_generate=True, **kw
    )
    cache = out.past_key_values if out.get("cache") is None else out.cache
    theirs = DynamicCache()
    if arch == "bart":
        theirs = EncoderDecoderCache(DynamicCache(), DynamicCache())
        assert isinstance(cache.cross_attention_cache, PrefixedCache)
        cache = cache.self_attention_cache
    plain = model.generate(input_ids=ids, attention_mask=mask, prefix=names, cache=theirs, **kw)
    assert torch.equal(out.sequences, plain)
    assert isinstance(cache, PrefixedCache)
    real = out.sequences.shape[1] - 1  # the last token is never fed back
    assert cache.get_seq_length() == real
    layer = cache.layers[0]
    assert layer.keys.shape[2] == 5 + real
    stored = model.prefix_tensors("b")
    kind = "decoder" if arch == "bart" else "self"
    p = model._kv_from_tensors(stored)[kind][0, 0, 0]  # layer 0 keys: (heads, 5, head_dim)
    torch.testing.assert_close(layer.keys[0, :, :5], p)  # beam rows of input 0 hold "b"


@pytest.mark.parametrize("arch", DECODERS)
def test_forward_continues_from_the_cache_generate_returns(arch, tmp_path):
    model = randomize(PrefixModel(DECODERS[arch](), small(3)), seed=5)
    ids, mask = left_padded([[5, 9, 14, 3], [8, 30]])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
    )
    cache = out.past_key_values if out.get("cache") is None else out.cache
    seq = out.sequences
    whole = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1] :])], 1)
    with torch.no_grad():
        full = model(input_ids=seq, attention_mask=whole).logits[:, -1]
        step = model(input_ids=seq[:, -1:], attention_mask=whole, cache=cache).logits[:, -1]
    torch.testing.assert_close(step, full, atol=ATOL, rtol=1e-5)
    # no mask at all: the new token's position still counts the cached ones
    out = model.generate(input_ids=ids[:1], max_new_tokens=3, return_dict_in_generate=True)
    cache = out.past_key_values if out.get("cache") is None else out.cache
    with torch.no_grad():
        full = model(input_ids=out.sequences).logits[:, -1]
        step = model(input_ids=out.sequences[:, -1:], cache=cache).logits[:, -1]
    torch.testing.assert_close(step, full, atol=ATOL, rtol=1e-5)
    model.add_prefix("longer", _saved(arch, 5, tmp_path))
    with pytest.raises(PrefixError, match="holds a prefix of length 3 but the batch's prefix has"):
        model(input_ids=seq[:, -1:], attention_mask=whole, cache=cache, prefix="longer")


def test_sliding_window_models_keep_transformers_cache():
    from transformers import MistralConfig, MistralForCausalLM

    from prefixtune.prefix.cache import prefixed_cache

    mistral = tiny_llama(MistralConfig, MistralForCausalLM, sliding_window=4)
    model = randomize(PrefixModel(mistral, small(3)), seed=6)
    assert prefixed_cache(model) is None
    ids = torch.tensor([[5, 9, 14, 3, 7, 22, 8, 30]])
    kw = dict(max_new_tokens=6, min_new_tokens=6, num_beams=2, do_sample=False)
    cached = model.generate(input_ids=ids, **kw)
    assert torch.equal(cached, model.generate(input_ids=ids, use_cache=False, **kw))


def _saved(arch, length, tmp_path):
    folder = tmp_path / f"{arch}-{length}"
    randomize(PrefixModel(ALL[arch](), small(length)), seed=length).save_prefix(folder)
    return folder


# ---------------------------------------------------------------------- mixed batches
def _bank(arch, tmp_path):
    model = PrefixModel(ALL[arch](), small(4))
    for name, length, seed in (("a", 2, 10), ("b", 5, 11), ("c", 3, 12)):
        other = randomize(PrefixModel(ALL[arch](), small(length)), seed=seed)
        other.save_prefix(tmp_path / name)
        model.add_prefix(name, tmp_path / name)
    return model


@pytest.mark.parametrize("arch", ALL)
def test_mixed_prefix_batch_equals_separate_runs(arch, tmp_path):
    model = _bank(arch, tmp_path)
    rows = [[5, 9, 14, 3, 7, 22], [8, 30, 4], [11, 12, 13, 14], [40, 41]]
    names = ["a", "b", "a", "c"]
    kw = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, do_sample=False)
    if arch == "bart":
        ids = torch.randint(3, VOCAB, (4, 5))
        mask = torch.ones_like(ids)
        dec = torch.randint(3, VOCAB, (4, 3))
        together = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, prefix=names)
        gen = model.generate(input_ids=ids, attention_mask=mask, prefix=names, **kw)
        for i, name in enumerate(names):
            alone = model(input_ids=ids[i : i + 1], decoder_input_ids=dec[i : i + 1], prefix=name)
            torch.testing.assert_close(together.logits[i], alone.logits[0], atol=ATOL, rtol=1e-5)
            solo = model.generate(input_ids=ids[i : i + 1], prefix=name, **kw)
            assert torch.equal(gen[i], solo[0])
        return
    ids, mask = left_padded(rows)
    with torch.no_grad():
        together = model(input_ids=ids, attention_mask=mask, prefix=names).logits
    gen = model.generate(input_ids=ids, attention_mask=mask, prefix=names, **kw)
    width = ids.shape[1]
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        one = torch.tensor([row])
        with torch.no_grad():
            alone = model(input_ids=one, prefix=name).logits[0]
        torch.testing.assert_close(together[i, width - len(row) :], alone, atol=ATOL, rtol=1e-5)
        solo = model.generate(input_ids=one, prefix=name, **kw)[0]
        assert torch.equal(gen[i, width - len(row) :], solo)
    assert len({tuple(g.tolist()) for g in gen[:, width:]}) > 1


def test_unknown_prefix_name_is_a_clear_error(tmp_path):
    model = PrefixModel(tiny_gpt2(), small(2))
    with pytest.raises(PrefixError, match="unknown prefix 'nope'"):
        model(input_ids=torch.tensor([[4, 5]]), prefix=["default", "nope"][1])


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ALL)
def test_only_the_prefix_learns_and_the_loss_falls(arch):
    model = PrefixModel(ALL[arch](), small(4))
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    torch.manual_seed(0)
    # a tiny task: answer every input with the same sentence, which the random model does not know
    src = torch.randint(3, VOCAB, (8, 4))
    tgt = torch.tensor([[10, 20, 30, 40]]).repeat(8, 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(200):
        if arch == "bart":
            loss = model(input_ids=src, labels=tgt).loss
        else:
            ids = torch.cat([src, tgt], 1)
            labels = ids.clone()
            labels[:, :4] = -100
            loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == name.startswith("encoders."), name
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    after = model.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical base


def test_parameter_counts():
    model = PrefixModel(tiny_gpt2(), PrefixConfig(length=5, reparam_dim=16, reparam_hidden=24))
    counts = model.parameter_counts()
    width = 2 * 2 * 32  # layers * (key, value) * hidden
    assert counts["stored"] == 5 * width
    assert counts["trainable"] == 5 * 16 + (16 * 24 + 24) + (24 * width + width)
    assert counts["base"] == sum(p.numel() for p in model.base.parameters())
    assert counts["stored_pct"] == pytest.approx(100 * 5 * width / counts["base"])


# ---------------------------------------------------------------------- initialisation
class CharTokenizer:
    """Enough of a tokenizer for init_text: one token per character."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + ord(c) % (VOCAB - 3) for c in text]}


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("reparam", [True, False])
def test_init_from_text_reproduces_the_text(arch, reparam):
    text = "table-to-text:"
    tok = CharTokenizer()
    config = PrefixConfig(
        length=len(text),
        reparam=reparam,
        reparam_dim=16,
        reparam_hidden=32,
        init="text",
        init_text=text,
    )
    model = PrefixModel(DECODERS[arch](), config, tokenizer=tok)
    assert model.init_residual < 1e-4
    x = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        ours = model(input_ids=x).logits[0]
        real = model.base(input_ids=torch.cat([torch.tensor([tok(text)["input_ids"]]), x], 1))
    torch.testing.assert_close(ours, real.logits[0, len(text) :], atol=1e-4, rtol=1e-4)


def test_init_text_shorter_or_longer_than_the_prefix():
    tok = CharTokenizer()
    base = tiny_llama()
    for length, expect in ((5, "abcab"), (2, "ab")):
        model = PrefixModel(base, direct(length, init="text", init_text="abc"), tokenizer=tok)
        x = torch.tensor([[7, 8]])
        with torch.no_grad():
            ours = model(input_ids=x).logits[0]
            ids = torch.tensor([tok(expect)["input_ids"] + [7, 8]])
            real = model.base(input_ids=ids).logits[0, length:]
        torch.testing.assert_close(ours, real, atol=1e-4, rtol=1e-4)
        with pytest.raises(PrefixError, match="already wrapped"):
            PrefixModel(base, direct(length))
        model.unwrap()  # so the next model can wrap the base


# ---------------------------------------------------------------------- variants
def test_embedding_only_equals_prompt_tuning():
    model = randomize(PrefixModel(tiny_llama(), direct(3, mode="embedding")), seed=5, scale=0.1)
    x = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        ours = model(input_ids=x).logits[0]
        embeds = torch.cat(
            [model.prefix_tensors()["embedding"][None], model.base.get_input_embeddings()(x)], 1
        )
        prompt = model.base(inputs_embeds=embeds).logits[0, 3:]
    torch.testing.assert_close(ours, prompt, atol=ATOL, rtol=1e-5)
    assert model.parameter_counts()["stored"] == 3 * 48


@pytest.mark.parametrize("arch", DECODERS)
def test_infix_is_invisible_to_the_source(arch):
    model = randomize(PrefixModel(DECODERS[arch](), direct(3, mode="infix")), seed=6)
    src, tgt = [5, 9, 14, 2], [7, 22, 30]  # the separator (2) ends x and sees the infix
    ids = torch.tensor([src + tgt])
    labels = torch.tensor([[-100] * len(src) + tgt])
    with torch.no_grad():
        ours = model(input_ids=ids, labels=labels).logits[0]
        plain = model.base(input_ids=ids).logits[0]
    torch.testing.assert_close(ours[:3], plain[:3], atol=ATOL, rtol=1e-5)  # x is untouched
    assert (ours[3:] - plain[3:]).abs().max() > 1e-2  # y sees the infix
    # generation puts the infix before the prompt's last token, as in training
    gen = model.generate(
        input_ids=torch.tensor([src]),
        max_new_tokens=1,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    torch.testing.assert_close(gen.logits[0][0], ours[3], atol=ATOL, rtol=1e-5)


def test_unsupported_combination_is_one_line():
    with pytest.raises(
        PrefixError, match="needs a decoder-only model; bart is encoder-decoder"
    ) as e:
        PrefixModel(tiny_bart(), direct(2, mode="infix"))
    assert "\n" not in str(e.value)
    with pytest.raises(PrefixError, match="prefix.length must be >= 1"):
        PrefixConfig(length=0)
    with pytest.raises(PrefixError, match=r"not one of \['prefix', 'infix', 'embedding'\]"):
        PrefixConfig(mode="suffix")


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("arch", ALL)
def test_save_load_round_trip(arch, tmp_path):
    model = randomize(PrefixModel(ALL[arch](), small(3)), seed=7)
    model.save_prefix(tmp_path / "p")
    loaded = PrefixModel.from_prefix(ALL[arch](), tmp_path / "p")
    ids = torch.randint(3, VOCAB, (2, 5))
    kw = {"decoder_input_ids": ids[:, :3]} if arch == "bart" else {}
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, **kw).logits, loaded(input_ids=ids, **kw).logits)
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == ["prefix.safetensors", "prefix_config.json"]
    saved = json.loads((tmp_path / "p" / "prefix_config.json").read_text())
    assert saved["prefix_config"]["reparam"] is True and saved["prefix_config"]["length"] == 3


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    model = randomize(PrefixModel(tiny_gpt2(), small(3)), seed=8)
    model.save_prefix(tmp_path / "p")
    weights = tmp_path / "p" / "prefix.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(PrefixError, match="corrupted") as e:
        PrefixModel.from_prefix(tiny_gpt2(), tmp_path / "p")
    assert "\n" not in str(e.value)
    weights.write_bytes(good)
    with pytest.raises(PrefixError, match="was trained for gpt2") as e:
        PrefixModel.from_prefix(tiny_llama(), tmp_path / "p")
    assert "\n" not in str(e.value)
    (tmp_path / "p" / "prefix_config.json").write_text("{not json")
    with pytest.raises(PrefixError, match="corrupted"):
        PrefixModel.from_prefix(tiny_gpt2(), tmp_path / "p")
    with pytest.raises(PrefixError, match="is missing"):
        PrefixModel.from_prefix(tiny_gpt2(), tmp_path / "nowhere")


@pytest.mark.parametrize("arch", ALL)
def test_cpu_and_accelerator_attention_paths_agree(arch, monkeypatch):
    """The CPU path (one masked SDPA call with grouped heads) and the accelerator path (dummy
    queries and the causal flag when there is no padding, transformers' SDPA otherwise) must
    compute the same thing: forward, gradients and beam search."""
    from prefixtune.prefix import attention

    model = randomize(PrefixModel(ALL[arch](), small(3)), seed=4)
    ids = torch.randint(3, VOCAB, (3, 7))
    padded, padded_mask = _inputs(arch)
    kw = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.encoders.parameters()]
        with torch.no_grad():
            logits = model(input_ids=padded, attention_mask=padded_mask).logits
        generated = model.generate(input_ids=padded, attention_mask=padded_mask, **kw)
        return out.logits.detach(), grads, logits, generated

    cpu = run()
    monkeypatch.setattr(attention, "_cpu_kernels", lambda query: False)
    accelerator = run()
    torch.testing.assert_close(cpu[0], accelerator[0], atol=ATOL, rtol=1e-5)
    for a, b in zip(cpu[1], accelerator[1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(cpu[2], accelerator[2], atol=ATOL, rtol=1e-5)
    assert torch.equal(cpu[3], accelerator[3])
