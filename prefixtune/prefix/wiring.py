"""Wiring a base model's attention to a PrefixState, and running the frozen LM through it.

attach() tags every prefixed attention module (architecture.attention_slots) with the shared
PrefixState and its slot and switches the base to the prefix attention function
(attention.ATTN_IMPLEMENTATION); detach() undoes both, so that another PrefixModel may wrap the
base. While nothing is active or captured (state.active and state.capture None) a wired base
computes exactly what it did before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .architecture import Slot, attention_slots, is_encoder_decoder, kinds_of
from .attention import ATTN_IMPLEMENTATION, PrefixState
from .config import PrefixError


@dataclass
class Wiring:
    """A base model whose attention modules read `state`."""

    base: nn.Module
    state: PrefixState
    slots: dict[Slot, nn.Module]
    own_attention: str  # the base's attention implementation before attach()


def attach(base: nn.Module, state: PrefixState) -> Wiring:
    """Tag the base's attention modules with `state`; a base already wired is refused."""
    slots = attention_slots(base)
    if any(getattr(module, "_prefixtune", None) is not None for module in slots.values()):
        raise PrefixError(
            "this base model is already wrapped by a PrefixModel; call .unwrap() first"
        )
    own = base.config._attn_implementation
    base.set_attn_implementation(ATTN_IMPLEMENTATION)
    for slot, module in slots.items():
        module._prefixtune = (state, slot)
    return Wiring(base, state, slots, own)


def detach(wiring: Wiring) -> nn.Module:
    """Undo attach(); returns the base."""
    for module in wiring.slots.values():
        module._prefixtune = None
    wiring.base.set_attn_implementation(wiring.own_attention)
    return wiring.base


@contextlib.contextmanager
def attached(base: nn.Module) -> Iterator[Wiring]:
    """The base wired to a fresh PrefixState for the duration of a `with` block."""
    wiring = attach(base, PrefixState())
    try:
        yield wiring
    finally:
        detach(wiring)


def capture(wiring: Wiring, input_ids=None, inputs_embeds=None) -> dict[str, torch.Tensor]:
    """Run the frozen LM without any prefix and return its keys/values per stream,
    as (layers, 2, 1, kv_heads, T, head_dim) tensors (Llama's keys after RoPE, as cached)."""
    state, base = wiring.state, wiring.base
    state.capture, active = {}, state.active
    state.active = None
    try:
        inputs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds}
        if is_encoder_decoder(base):
            inputs["decoder_input_ids"] = input_ids
        base.base_model(**inputs, use_cache=False)
        captured = state.capture
    finally:
        state.capture, state.active = None, active
    out = {}
    for kind in kinds_of(base):
        layers = sorted(s.layer for s in captured if s.kind == kind)
        out[kind] = torch.stack(
            [torch.stack(captured[Slot(kind, i)]) for i in layers]
        )  # (layers, 2, 1, heads, T, head_dim)
    return out


def kv_shapes(wiring: Wiring) -> dict[str, tuple[int, int, int]]:
    """Each stream's (layers, kv_heads, head_dim), from a probe pass of one token."""
    device = next(wiring.base.parameters()).device
    probe = capture(wiring, torch.zeros(1, 1, dtype=torch.long, device=device))
    return {kind: (len(kv), kv.shape[3], kv.shape[5]) for kind, kv in probe.items()}
