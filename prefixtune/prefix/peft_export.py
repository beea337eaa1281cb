"""Export a trained prefix as a PEFT prefix-tuning adapter folder.

PEFT keeps P as an embedding table `prompt_embeddings` of shape (L, layers * 2 * kv_heads *
head_dim) with the same layout as ours (per token: layer 0 key, layer 0 value, layer 1 key, ...),
so `peft.PeftModel.from_pretrained(base, folder)` gives the same logits. Written by hand (not with
peft) so that the library does not depend on PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from .config import PrefixError, PrefixMode
from .core import PrefixCore


def export_peft(model: PrefixCore, folder: str | Path) -> Path:
    """Write `model`'s own prefix to `folder` as adapter_model.safetensors + adapter_config.json."""
    if model.is_encoder_decoder or model.config.mode != PrefixMode.prefix:
        raise PrefixError(
            "PEFT export covers decoder-only models with prefix.mode=prefix (PEFT has no "
            "encoder prefix, infix or embedding-only prefix tuning)"
        )
    (kind,) = model.kinds
    layers, heads, head_dim = model.shapes[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = model.prefix_tensors()[kind].detach().float().contiguous().cpu()
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(model.base.config, "name_or_path", None) or None,
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": model.config.length,
        "token_dim": heads * head_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": heads,
        "num_layers": layers,
        "encoder_hidden_size": heads * head_dim,
        "prefix_projection": False,
    }
    save_file({"prompt_embeddings": p}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
