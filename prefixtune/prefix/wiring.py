"""Wiring a base model's attention to a PrefixState, and running the frozen LM through it.

attach() switches the base to the prefix attention function (attention.ATTN_IMPLEMENTATION),
finds the prefixed attention modules by a probe pass (the modules that call that function,
mapped to layers by architecture.assign_slots) and tags each with the shared PrefixState and its
slot; detach() undoes both, so that another PrefixModel may wrap the base. While nothing is
active or captured (state.active and state.capture None) a wired base computes exactly what it
did before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import attention
from .architecture import Call, Slot, assign_slots, family, is_encoder_decoder, kinds_of
from .attention import ATTN_IMPLEMENTATION, PrefixState
from .config import PrefixError, check_family

_PROBE_ENCODER, _PROBE_DECODER = 3, 2  # probe lengths: cross-attention has the encoder's keys


@dataclass
class Wiring:
    """A base model whose attention modules read `state`."""

    base: nn.Module
    state: PrefixState
    slots: dict[Slot, nn.Module]
    own_attention: str  # the base's attention implementation before attach()


def attach(base: nn.Module, state: PrefixState) -> Wiring:
    """Tag the base's attention modules with `state`; a base already wired is refused, and so
    is a family the prefix cannot enter (config.check_family, then the probe pass)."""
    if any(getattr(module, "_prefixtune", None) is not None for module in base.modules()):
        raise PrefixError(
            "this base model is already wrapped by a PrefixModel; call .unwrap() first"
        )
    check_family(family(base), is_encoder_decoder(base))
    own = base.config._attn_implementation
    try:
        base.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, ImportError) as exc:
        # transformers' reason, first sentence (the rest is advice about its own backends)
        why = (str(exc).split(". ")[0].splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise PrefixError(
            f"model type {family(base)!r} is not supported: it cannot switch to the prefix "
            f"attention function ({why})"
        ) from None
    try:
        slots = _probe(base)
    except BaseException:
        base.set_attn_implementation(own)
        raise
    for slot, module in slots.items():
        module._prefixtune = (state, slot)
    base._prefixtune_state = state
    return Wiring(base, state, slots, own)


def _probe(base: nn.Module) -> dict[Slot, nn.Module]:
    """One tiny forward pass that records which modules call the prefix attention function."""
    device = next(base.parameters()).device
    calls: list[Call] = []
    attention._recorder = calls
    try:
        with torch.no_grad():
            if is_encoder_decoder(base):
                base.base_model(
                    input_ids=torch.zeros(1, _PROBE_ENCODER, dtype=torch.long, device=device),
                    decoder_input_ids=torch.zeros(
                        1, _PROBE_DECODER, dtype=torch.long, device=device
                    ),
                    use_cache=False,
                )
            else:
                ids = torch.zeros(1, _PROBE_DECODER, dtype=torch.long, device=device)
                base.base_model(input_ids=ids, use_cache=False)
    finally:
        attention._recorder = None
    return assign_slots(base, calls, encoder_length=_PROBE_ENCODER)


def detach(wiring: Wiring) -> nn.Module:
    """Undo attach(); returns the base."""
    for module in wiring.slots.values():
        module._prefixtune = None
    wiring.base._prefixtune_state = None
    wiring.base.set_attn_implementation(wiring.own_attention)
    return wiring.base


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Gradient (activation) checkpointing of a frozen base, with or without a PrefixModel on it
    (before or after wrapping): each layer's activations are recomputed in backward instead of
    kept.

    Non-reentrant checkpointing (use_reentrant=False), because the layers' inputs do not require
    grad (the base is frozen): the prefix keys/values enter inside each layer, read from the
    wired PrefixState, and non-reentrant checkpointing tracks such tensors. The recomputation
    runs in backward, after forward() has cleared the state's active batch, so the checkpoint's
    context_fn puts back the batch that was active when the layer ran forward; without it the
    recomputed layer would have no prefix and its gradients would be wrong."""

    def contexts():
        state = getattr(base, "_prefixtune_state", None)
        active = None if state is None else state.active
        return contextlib.nullcontext(), _restored(state, active)

    kwargs = {"use_reentrant": False, "context_fn": contexts}
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def _restored(state: PrefixState | None, active) -> Iterator[None]:
    if state is None:
        yield
        return
    before = state.active
    state.active = active
    try:
        yield
    finally:
        state.active = before


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
