"""Where a prefix enters a transformers model: the attention modules of each stream.

A decoder-only LM has one stream ("self"). An encoder-decoder has three, with a separate prefix
each, as in the paper's BART code: encoder self-attention ("encoder"), decoder self-attention
("decoder") and decoder cross-attention ("cross").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import PrefixError

SELF, ENCODER, DECODER, CROSS = "self", "encoder", "decoder", "cross"


@dataclass(frozen=True)
class Slot:
    """One attention module that receives prefix keys/values."""

    kind: str
    layer: int


def _layers(stack: nn.Module) -> nn.ModuleList:
    for name in ("layers", "h", "layer", "block"):
        layers = getattr(stack, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise PrefixError(f"cannot find the transformer layers of {type(stack).__name__}")


def _attn(layer: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise PrefixError(
        f"cannot find the attention module ({'/'.join(names)}) of {type(layer).__name__}"
    )


def attention_slots(model: nn.Module) -> dict[Slot, nn.Module]:
    """Map every prefixed attention module of `model` to its slot."""
    config = model.config
    slots: dict[Slot, nn.Module] = {}
    if getattr(config, "is_encoder_decoder", False):
        if config.model_type == "t5" or "t5" in config.model_type:
            raise PrefixError(f"model type {config.model_type!r} is not supported (T5 attention)")
        for i, layer in enumerate(_layers(model.get_encoder())):
            slots[Slot(ENCODER, i)] = _attn(layer, ("self_attn",))
        for i, layer in enumerate(_layers(model.get_decoder())):
            slots[Slot(DECODER, i)] = _attn(layer, ("self_attn",))
            slots[Slot(CROSS, i)] = _attn(layer, ("encoder_attn", "cross_attn"))
    else:
        for i, layer in enumerate(_layers(model.base_model)):
            slots[Slot(SELF, i)] = _attn(layer, ("self_attn", "attn", "attention"))
    return slots


def kinds_of(model: nn.Module) -> tuple[str, ...]:
    if getattr(model.config, "is_encoder_decoder", False):
        return (ENCODER, DECODER, CROSS)
    return (SELF,)
