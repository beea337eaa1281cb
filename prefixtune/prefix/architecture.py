"""Where a prefix enters a transformers model: the attention modules of each stream.

A decoder-only LM has one stream ("self"). An encoder-decoder has three, with a separate prefix
each, as in the paper's BART code: encoder self-attention ("encoder"), decoder self-attention
("decoder") and decoder cross-attention ("cross").

Which modules those are is not guessed from attribute names (GPT-2's `attn`, Llama's
`self_attn`, Falcon's `self_attention`, GPT-Neo's `attn.attention`, T5's `SelfAttention` and
`EncDecAttention`, ...): a probe pass records the modules that call transformers'
attention-function registry (wiring.py), and `assign_slots` maps them onto the layers found
here. A layer without such a call (a state-space or linear-attention layer) is refused, since a
prefix there would have no keys/values to join.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import PrefixError

SELF, ENCODER, DECODER, CROSS = "self", "encoder", "decoder", "cross"
_LAYER_LISTS = ("layers", "h", "layer", "block", "blocks")  # what transformers calls its blocks


@dataclass(frozen=True)
class Slot:
    """One attention module that receives prefix keys/values."""

    kind: str
    layer: int


@dataclass(frozen=True)
class Call:
    """One call of the attention function in a probe pass: who made it, with how many keys."""

    module: nn.Module
    key_length: int
    unsupported: tuple[str, ...] = ()  # arguments the prefix attention cannot honour


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def family(model: nn.Module) -> str:
    """The model's family as transformers names it (config.model_type), for messages."""
    return str(getattr(model.config, "model_type", None) or type(model).__name__)


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The transformer blocks of a transformers model, each stack bottom to top: one stack for a
    decoder-only LM, [encoder blocks, decoder blocks] for an encoder-decoder (so [-1] is always
    the stack that produces the output). A PrefixError when a stack cannot be found."""
    if is_encoder_decoder(model):
        return [_layers(model, [model.get_encoder()]), _layers(model, [model.get_decoder()])]
    # the text decoder first (a multimodal model's base also holds a vision tower), then the base
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return [_layers(model, [decoder, model.base_model])]


def _layers(model: nn.Module, stacks: list) -> nn.ModuleList:
    """The block list of the first of `stacks` that has one: an attribute of the stack (GPT-2's
    `h`, Llama's and BART's `layers`, T5's `block`), else the first such list inside it (e.g.
    OPT's `decoder.layers`)."""
    stacks = [s for s in stacks if isinstance(s, nn.Module)]
    for stack in stacks:
        for name in _LAYER_LISTS:
            layers = getattr(stack, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
        for name, module in stack.named_modules():
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _LAYER_LISTS:
                return module
    where = type(stacks[-1]).__name__ if stacks else type(model).__name__
    raise PrefixError(
        f"model type {family(model)!r} is not supported: cannot find the transformer layers of "
        f"{where}"
    )


# The per-layer kinds (config.layer_types) that are attention a prefix can join.
_ATTENTION_LAYERS = {"full_attention", "sliding_attention", "chunked_attention", "attention"}


def assign_slots(
    model: nn.Module, calls: list[Call], encoder_length: int = 0
) -> dict[Slot, nn.Module]:
    """Map every attention module that called the registry in a probe pass (`calls`, in call
    order) to its slot: one self-attention per decoder-only layer; per encoder-decoder layer,
    one encoder self-attention, or a decoder self-attention plus a cross-attention (the call
    whose keys are the `encoder_length` encoder positions). A PrefixError naming the family
    when a layer does not have exactly those."""
    name = family(model)
    if not calls:
        _refuse_hybrid(model)
        raise PrefixError(
            f"model type {name!r} is not supported: its attention does not go through "
            "transformers' attention-function registry (ALL_ATTENTION_FUNCTIONS)"
        )
    for call in calls:
        if call.unsupported:
            raise PrefixError(
                f"model type {name!r} is not supported: its attention takes "
                f"{', '.join(call.unsupported)}, which the prefix attention (SDPA over [P; K]) "
                "does not implement"
            )
    stacks = layer_stacks(model)
    kinds = [(ENCODER,), (DECODER, CROSS)] if is_encoder_decoder(model) else [(SELF,)]
    slots: dict[Slot, nn.Module] = {}
    for stack, stack_kinds in zip(stacks, kinds, strict=True):
        owner = {id(m): i for i, layer in enumerate(stack) for m in layer.modules()}
        per_layer: list[list[Call]] = [[] for _ in stack]
        for call in calls:
            if id(call.module) in owner:
                per_layer[owner[id(call.module)]].append(call)
        without = [i for i, c in enumerate(per_layer) if not c]
        if without:
            _refuse_hybrid(model)
            raise PrefixError(
                f"model type {name!r} is not supported: its layers {without} of {len(stack)} "
                "have no attention through transformers' registry (state-space, recurrent or "
                "linear-attention layers), so a prefix has no keys/values to join there"
            )
        for i, layer_calls in enumerate(per_layer):
            if stack_kinds == (DECODER, CROSS):
                cross = [c for c in layer_calls if c.key_length == encoder_length]
                own = [c for c in layer_calls if c.key_length != encoder_length]
                found = {DECODER: own, CROSS: cross}
            else:
                found = {stack_kinds[0]: layer_calls}
            for kind, kind_calls in found.items():
                modules = list({id(c.module): c.module for c in kind_calls}.values())
                if len(modules) != 1:
                    raise PrefixError(
                        f"model type {name!r} is not supported: layer {i} has {len(modules)} "
                        f"{kind} attention modules (one is expected)"
                    )
                if len(kind_calls) != 1:  # e.g. DiffLlama: two calls on halves of the values
                    raise PrefixError(
                        f"model type {name!r} is not supported: layer {i} calls its {kind} "
                        f"attention {len(kind_calls)} times per forward (differential or "
                        "split attention), so one prefix per layer does not fit it"
                    )
                slots[Slot(kind, i)] = modules[0]
    if len({id(m) for m in slots.values()}) != len(slots):
        raise PrefixError(f"model type {name!r} is not supported: layers share attention modules")
    return slots


def _refuse_hybrid(model: nn.Module) -> None:
    """Where some layers have no attention call, name the kinds of layer the config lists that
    are not attention (a hybrid's Mamba, linear-attention or convolution layers), if any."""
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    other = sorted({str(k) for k in getattr(text, "layer_types", None) or []} - _ATTENTION_LAYERS)
    if other:
        raise PrefixError(
            f"model type {family(model)!r} is not supported: it is a hybrid whose "
            f"{'/'.join(other)} layers (state-space, recurrent, convolution or linear attention) "
            "have no keys/values for a prefix"
        )


def kinds_of(model: nn.Module) -> tuple[str, ...]:
    """The model's prefix streams, in the order of their (encoder-decoder: three) prefixes."""
    if is_encoder_decoder(model):
        return (ENCODER, DECODER, CROSS)
    return (SELF,)
