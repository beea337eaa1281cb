"""generate()'s KV cache, with each row's prefix stored in front of its real tokens.

Concatenating [P; K] inside attention (attention.py) is free when a whole sequence runs at once,
but while decoding it would copy every layer's whole cache at every step, a cost the base model
does not pay (measured in docs/prefix_engine.md). So generate() hands transformers this cache: a
layer writes its rows' prefix once, when it first stores tokens, then grows as transformers'
own DynamicLayer does, and attention receives [P; K] with nothing to concatenate. The prefix is
taken from the batch running at that moment and stored per row, so beam search's expansion and
reordering move it along with its row.

This is not PEFT's way: the prefix never enters through `past_key_values`, and the layer reports
only real tokens as its length, so positions, masks and `cache_position` are the real tokens'.
The model's forward, the encoder's self-attention and generate(use_cache=False) keep the
concatenation in attention.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import (
    DynamicCache,
    DynamicLayer,
    EncoderDecoderCache,
    get_layer_types_and_kwargs,
)

from .architecture import CROSS, DECODER, SELF, Slot
from .attention import PrefixState
from .config import PrefixError


class PrefixedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values start with the prefix of each row."""

    def __init__(self, state: PrefixState, slot: Slot) -> None:
        super().__init__()
        self.state, self.slot = state, slot
        self.prefix_length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        active = self.state.active
        if active is None or self.slot.kind not in active.cached:
            raise RuntimeError("a prefixed cache is filled only by its PrefixModel")
        key, value = active.key_values(self.slot, key_states.shape[0])
        # the first update's concatenation makes these rows real (contiguous) tensors
        self.keys, self.values = key.to(key_states.dtype), value.to(value_states.dtype)
        self.prefix_length = key.shape[2]

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.shape[-2] - self.prefix_length


class PrefixedCache(DynamicCache):
    """A DynamicCache of PrefixedLayers, one per layer of one stream (kind)."""

    def __init__(self, state: PrefixState, kind: str, layers: int) -> None:
        # DynamicCache's own __init__ builds DynamicLayers; set the layers directly instead
        super(DynamicCache, self).__init__(
            layers=[PrefixedLayer(state, Slot(kind, i)) for i in range(layers)]
        )
        self.kind = kind


def _prefixed(cache) -> list[PrefixedCache]:
    if isinstance(cache, EncoderDecoderCache):
        return _prefixed(cache.self_attention_cache) + _prefixed(cache.cross_attention_cache)
    return [cache] if isinstance(cache, PrefixedCache) else []


def cached_kinds(cache, lengths: dict[str, int]) -> frozenset[str]:
    """The streams whose keys/values `cache` hands to attention with the prefix in front,
    checking that it holds prefixes as long as the batch's (`lengths`: kind -> L)."""
    kinds = []
    for part in _prefixed(cache):
        held = {layer.prefix_length for layer in part.layers if layer.is_initialized}
        if held - {lengths[part.kind]}:
            raise PrefixError(
                f"this cache holds a prefix of length {held.pop()} but the batch's prefix has "
                f"length {lengths[part.kind]}; continue a cache with the prefix= that filled it"
            )
        kinds.append(part.kind)
    return frozenset(kinds)


def prefixed_cache(model) -> DynamicCache | EncoderDecoderCache | None:
    """The cache for one generate() call of a PrefixModel, or None where this model's cache is
    not a plain stack of full-attention DynamicLayers (sliding windows, shared or linear
    layers): those keep transformers' own cache, with the prefix concatenated in attention."""
    config = model.base.config.get_text_config(decoder=True)
    types, _ = get_layer_types_and_kwargs(config)
    if any(t != "full_attention" for t in types):
        return None
    if model.is_encoder_decoder:
        layers = model.shapes[DECODER][0]
        return EncoderDecoderCache(
            PrefixedCache(model.state, DECODER, layers), PrefixedCache(model.state, CROSS, layers)
        )
    return PrefixedCache(model.state, SELF, model.shapes[SELF][0])
