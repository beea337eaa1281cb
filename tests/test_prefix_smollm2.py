"""The prefix engine on the real SmolLM2-135M (Llama, grouped-query attention, 30 layers)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefixtune.config import model_preset
from prefixtune.models import gguf_to_safetensors
from prefixtune.prefix import PrefixConfig, PrefixModel


@pytest.fixture(scope="module")
def smollm2():
    preset = model_preset("smollm2-135m")
    folder = gguf_to_safetensors(preset.gguf_package, preset.gguf_file, preset.name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_smollm2_logits_match_peft_and_generate_uses_the_prefix(smollm2):
    from peft import PrefixTuningConfig, get_peft_model

    base, tok = smollm2
    model = PrefixModel(base, PrefixConfig(length=5, reparam=False))
    torch.manual_seed(0)
    with torch.no_grad():
        model.encoders["self"].p.normal_(0, 1)
    ids = tok(["name : The Eagle | food : French"], return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad():
            ours = model(input_ids=ids).logits
            plain = base(input_ids=ids).logits
        out = model.generate(
            input_ids=ids,
            max_new_tokens=1,
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    finally:
        model.unwrap()
    assert (ours - plain).abs().max() > 1.0
    # generate()'s first step really uses the prefix (PEFT's silently does not)
    torch.testing.assert_close(out.logits[0], ours[:, -1], atol=1e-4, rtol=1e-4)
    peft_model = get_peft_model(
        base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.prefix_tensors()["self"])
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_smollm2_init_from_text_gives_the_texts_next_token_distribution(smollm2):
    base, tok = smollm2
    text = "table-to-text:"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    config = PrefixConfig(length=n, init="text", init_text=text)  # with the MLP (k = h = 512)
    model = PrefixModel(base, config, tokenizer=tok)
    try:
        x = tok(" name : Aromi", add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ours = model(input_ids=x).logits[0, -1].log_softmax(-1)
            full = torch.cat(
                [tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"], x], 1
            )
            real = base(input_ids=full).logits[0, -1].log_softmax(-1)
    finally:
        model.unwrap()
    assert model.init_residual < 1e-4
    torch.testing.assert_close(ours.exp(), real.exp(), atol=1e-4, rtol=1e-3)
