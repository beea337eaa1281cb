"""Generation for models without a prefix (the fine-tuning baselines): prefixtune.generate wraps
them for our beam search, with the outputs of transformers' generate() and the model left as it
was (unwrapped, its trainable parameters still trainable)."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_ROOT, compose_cfg, tiny_t5

from prefixtune import generate
from prefixtune.collate import Collator
from prefixtune.generate import _searchable, _transformers_generate, generate_outputs
from prefixtune.models import load_model
from prefixtune.prefix import PrefixConfig, PrefixModel

SOURCES = [
    "name : The Eagle | food : French",
    "a",
    "name : Blue Spice | area : city centre | priceRange : high | near : Avalon",
    "food : Indian | customer rating : 5 out of 5",
    "b c d e f g",
    "name : Zizzi",
    "family friendly : yes | eatType : pub",
]


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-bart"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_model_without_prefix_decodes_as_transformers_does(preset, num_beams, monkeypatch):
    torch.manual_seed(0)  # a tiny preset's random weights come from the global generator
    model, tok = load_model(compose_cfg([f"model={preset}"]).model, DATA_ROOT)
    model.eval()
    if model.config.is_encoder_decoder:  # tiny random BART barely reads its input: make it
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "encoder" in name:  # the encoder and the cross-attention
                    p.mul_(4)
    col = Collator(
        tok,
        encoder_decoder=model.config.is_encoder_decoder,
        max_source_tokens=32,
        max_target_tokens=12,
    )
    model.requires_grad_(False)
    top = list(model.parameters())[-3:]  # as FT-top2 leaves it: some trainable, most frozen
    for p in top:
        p.requires_grad_(True)
    kw = dict(num_beams=num_beams, max_new_tokens=12, min_new_tokens=3, length_penalty=1.0)

    def not_this(*args, **kwargs):
        raise AssertionError("generated with transformers, not our beam search")

    monkeypatch.setattr(generate, "_transformers_generate", not_this)
    ours = [
        t for _, t in generate_outputs(model, col, SOURCES, max_rows=8, show_progress=False, **kw)
    ]
    settings = dict(
        num_beams=num_beams,
        max_new_tokens=12,
        min_new_tokens=3,
        length_penalty=1.0,
        early_stopping=True,
        eos_token_id=col.eos,
        pad_token_id=col.pad,
    )
    if col.encoder_decoder:
        settings["decoder_start_token_id"] = col.decoder_start
    with torch.no_grad():
        theirs = _transformers_generate(model, col, SOURCES, num_beams, "cpu", _NoBar(), settings)
    assert ours == theirs and len(set(ours)) > 2
    assert [p.requires_grad for p in model.parameters()].count(True) == len(top)
    assert all(p.requires_grad for p in top)
    PrefixModel(model, PrefixConfig(length=2)).unwrap()  # unwrapped: it can be wrapped again


def test_a_family_the_search_does_not_handle_falls_back_to_transformers():
    model = tiny_t5()  # relative position bias: beam_search refuses T5
    flags = [p.requires_grad for p in model.parameters()]
    settings = dict(num_beams=2, max_new_tokens=4, min_new_tokens=0, length_penalty=1.0,
                    early_stopping=True, eos_token_id=1, pad_token_id=0,
                    decoder_start_token_id=0)  # fmt: skip
    with _searchable(model, settings) as searchable:
        assert searchable is None
        assert [p.requires_grad for p in model.parameters()] == flags
        PrefixModel(model, PrefixConfig(length=2)).unwrap()  # already unwrapped here


class _NoBar:
    def update(self, n: int) -> None:
        pass
