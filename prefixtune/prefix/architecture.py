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
_LAYER_LISTS = ("layers", "h", "layer", "block")  # what transformers models call their blocks


@dataclass(frozen=True)
class Slot:
    """One attention module that receives prefix keys/values."""

    kind: str
    layer: int


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The transformer blocks of a transformers model, each stack bottom to top: one stack for a
    decoder-only LM, [encoder blocks, decoder blocks] for an encoder-decoder (so [-1] is always
    the stack that produces the output). A PrefixError when a stack cannot be found."""
    if is_encoder_decoder(model):
        return [_layers(model.get_encoder()), _layers(model.get_decoder())]
    return [_layers(model.base_model)]


def _layers(stack: nn.Module) -> nn.ModuleList:
    """The block list of one stack: an attribute of the stack (GPT-2's `h`, Llama's and BART's
    `layers`), else the first such list inside it (e.g. OPT's `decoder.layers`)."""
    for name in _LAYER_LISTS:
        layers = getattr(stack, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    for name, module in stack.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _LAYER_LISTS:
            return module
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
    if is_encoder_decoder(model):
        if config.model_type == "t5" or "t5" in config.model_type:
            raise PrefixError(f"model type {config.model_type!r} is not supported (T5 attention)")
        encoder, decoder = layer_stacks(model)
        for i, layer in enumerate(encoder):
            slots[Slot(ENCODER, i)] = _attn(layer, ("self_attn",))
        for i, layer in enumerate(decoder):
            slots[Slot(DECODER, i)] = _attn(layer, ("self_attn",))
            slots[Slot(CROSS, i)] = _attn(layer, ("encoder_attn", "cross_attn"))
    else:
        (stack,) = layer_stacks(model)
        for i, layer in enumerate(stack):
            slots[Slot(SELF, i)] = _attn(layer, ("self_attn", "attn", "attention"))
    return slots


def kinds_of(model: nn.Module) -> tuple[str, ...]:
    """The model's prefix streams, in the order of their (encoder-decoder: three) prefixes."""
    if is_encoder_decoder(model):
        return (ENCODER, DECODER, CROSS)
    return (SELF,)
