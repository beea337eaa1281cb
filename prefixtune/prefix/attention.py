"""How the prefix enters attention: concatenated to the keys/values inside the attention function.

We register our own function in transformers' attention registry (`AttentionInterface`) rather
than injecting the prefix through `past_key_values` as PEFT does. The encoder's self-attention
(which has no cache) is then handled like every other attention, and a batch can mix prefixes
of different lengths. The attention itself is one SDPA call over [P; K]: on the CPU PyTorch's,
given the mask and the grouped key/value heads directly; elsewhere transformers' own SDPA
function. generate() gives transformers a cache that stores P in front of each row's real tokens
(cache.py); for those streams the keys/values arrive as [P; K] and nothing is concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .architecture import Call, Slot

ATTN_IMPLEMENTATION = "prefixtune_sdpa"

# Keyword arguments of an attention call that this function honours or that change nothing
# here (SDPA reads the mask, not `sliding_window`; positions are already in the keys). Any other
# argument with a value (Gemma-2's `softcap`, gpt-oss's sink logits `s_aux`, ...) changes the
# attention in a way SDPA over [P; K] would silently drop, so the probe pass refuses the family.
_HONOURED = frozenset(
    {
        "dropout",
        "scaling",
        "is_causal",
        "position_bias",
        "sliding_window",
        "position_ids",
        "cache_position",
        "output_attentions",
        "use_cache",
        "layer_idx",
        "cache",
        "past_key_values",
        "head_mask",
    }
)
_recorder: list[Call] | None = None  # set by wiring's probe pass: who calls this function


@dataclass
class ActiveBatch:
    """The prefix of every row of the batch now running through the model.

    kv[kind] has shape (layers, 2, rows, kv_heads, L, head_dim), where rows is 1 (one prefix
    shared by all rows) or the batch size. Generation repeats rows for beams on the fly.
    """

    kv: dict[str, torch.Tensor]
    key_mask: torch.Tensor | None = None  # (rows, L) bool: False where a shorter prefix is padded
    infix_start: torch.Tensor | None = None  # (rows,) long: first token index that sees the infix
    cached: frozenset[str] = frozenset()  # kinds whose keys/values arrive with P (cache.py)
    _expanded: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)

    def rows(self, name: str, tensor: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
        """`tensor` with `batch` rows: a shared row is broadcast, B rows repeated for beams."""
        n = tensor.shape[dim]
        if n == batch:
            return tensor
        key = (name, batch)
        if key not in self._expanded:
            if n == 1:
                shape = list(tensor.shape)
                shape[dim] = batch
                out = tensor.expand(*shape)
            elif batch % n == 0:
                # generate() expands each input row into consecutive beams (repeat_interleave)
                out = tensor.repeat_interleave(batch // n, dim=dim)
            else:
                raise RuntimeError(f"prefix has {n} rows but the batch has {batch}")
            self._expanded[key] = out
        return self._expanded[key]

    def key_values(self, slot: Slot, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("layers", slot.kind, batch)
        if key not in self._expanded:
            # split once per forward: indexing the whole bank per layer would make autograd
            # zero-fill and add a bank-sized gradient 2 x layers times
            kv = self.rows(slot.kind, self.kv[slot.kind], batch, dim=2)
            self._expanded[key] = [layer.unbind(0) for layer in kv.unbind(0)]
        return self._expanded[key][slot.layer]

    def mask(
        self,
        slot: Slot,
        attention_mask: torch.Tensor | None,
        batch: int,
        q_len: int,
        kv_len: int,
        prefix_len: int,
        causal: bool,
        device: torch.device,
    ) -> torch.Tensor | None:
        """The model's mask with the prefix columns prepended; built once per forward and kind."""
        memo = self._masks.get(slot.kind)
        if memo is not None and memo[0] is attention_mask and memo[1] == (batch, q_len, kv_len):
            return memo[2]
        visible = None  # which prefix columns each query sees: (B, 1, q or 1, L)
        if self.key_mask is not None:
            visible = self.rows("key_mask", self.key_mask, batch, 0)[:, None, None, :]
        if self.infix_start is not None:
            start = self.rows("infix_start", self.infix_start, batch, 0)
            q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
            sees = (q_pos[None, :] >= start[:, None])[:, None, :, None]
            visible = sees if visible is None else visible & sees
        real = attention_mask
        if real is None and causal and q_len > 1:
            # transformers left causality to SDPA's is_causal; prefix columns need it explicit
            real = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
            real = real.tril(kv_len - q_len)[None, None]
        if real is None and visible is None:
            out = None
        else:
            if real is None:
                real = torch.ones(1, 1, 1, kv_len, dtype=torch.bool, device=device)
            if visible is None:
                visible = torch.ones(1, 1, 1, prefix_len, dtype=torch.bool, device=device)
            heads = real.shape[1]
            visible = visible.expand(batch, heads, q_len, prefix_len)
            if real.dtype != torch.bool:  # an additive float mask
                zero = torch.zeros((), dtype=real.dtype, device=device)
                low = torch.full((), torch.finfo(real.dtype).min, dtype=real.dtype, device=device)
                visible = torch.where(visible, zero, low)
            out = torch.cat([visible, real.expand(batch, heads, q_len, kv_len)], dim=-1)
        self._masks[slot.kind] = (attention_mask, (batch, q_len, kv_len), out)
        return out


class PrefixState:
    """Shared by the attention modules of one wrapped model: what the current call needs."""

    def __init__(self) -> None:
        self.active: ActiveBatch | None = None
        self.capture: dict[Slot, tuple[torch.Tensor, torch.Tensor]] | None = None


def _cpu_kernels(query: torch.Tensor) -> bool:
    """Which of the two fast paths below suits the device (the tests run both on the CPU)."""
    return query.device.type == "cpu"


def _prepend_queries(module, query, key, value, dropout, scaling, kwargs):
    """No padding, whole sequence at once (training, prefill) on an accelerator: prepending L
    dummy queries turns SDPA's top-left causal mask into "prefix + causal", so the fused
    unmasked kernels still run (they take no mask); the dummy rows are dropped."""
    batch, heads, _, head_dim = query.shape
    length = key.shape[2] - query.shape[2]
    query = torch.cat([query.new_zeros(batch, heads, length, head_dim), query], 2)
    kwargs["is_causal"] = True
    out, weights = sdpa_attention_forward(
        module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs
    )
    return out[:, length:], weights


def prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    if _recorder is not None:
        extra = tuple(sorted(k for k, v in kwargs.items() if v is not None and k not in _HONOURED))
        _recorder.append(Call(module, key.shape[2], extra))
    hook = getattr(module, "_prefixtune", None)
    if hook is not None:
        state, slot = hook
        if state.capture is not None:
            state.capture[slot] = (key, value)
        active = state.active
        if active is not None and slot.kind in active.kv:
            causal = kwargs.pop("is_causal", None)
            causal = getattr(module, "is_causal", True) if causal is None else causal
            batch, q_len = query.shape[0], query.shape[2]
            length = active.kv[slot.kind].shape[4]
            on_cpu = _cpu_kernels(query)
            bias = kwargs.pop("position_bias", None)
            if slot.kind in active.cached:  # generate()'s cache stores P in front of K
                kv_len = key.shape[2] - length
            else:
                kv_len = key.shape[2]
                prefix_key, prefix_value = active.key_values(slot, batch)
                key = torch.cat([prefix_key.to(key.dtype), key], dim=2)
                value = torch.cat([prefix_value.to(value.dtype), value], dim=2)
            plain = active.key_mask is None and active.infix_start is None and bias is None
            if not on_cpu and plain and attention_mask is None and causal and q_len == kv_len:
                return _prepend_queries(module, query, key, value, dropout, scaling, kwargs)
            attention_mask = active.mask(
                slot, attention_mask, batch, q_len, kv_len, length, causal, query.device
            )
            if bias is not None:
                attention_mask = _with_position_bias(attention_mask, bias, kv_len, length, key)
            if bias is not None or (on_cpu and q_len > 1):
                # PyTorch's CPU kernel takes a mask and grouped heads at once; transformers
                # would repeat the key/value heads whenever a mask is given (for one query it
                # packs the heads instead, which is as fast)
                out = F.scaled_dot_product_attention(
                    query,
                    key,
                    value,
                    attn_mask=attention_mask,
                    dropout_p=dropout,
                    scale=scaling,
                    enable_gqa=query.shape[1] != key.shape[1],
                )
                return out.transpose(1, 2).contiguous(), None
            kwargs["is_causal"] = False  # causality is in the mask now
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _with_position_bias(
    mask: torch.Tensor | None, bias: torch.Tensor, kv_len: int, length: int, key: torch.Tensor
) -> torch.Tensor:
    """T5's relative position bias for the real columns, none (zero) for the prefix columns, and
    the mask, as one additive float mask.

    The prefix columns get no bias: T5's bias is a function of the distance between a query's
    position and a key's position, and a prefix column has no position (it is not a token of the
    sequence). The paper's encoder-decoder is BART, whose positions are absolute and added to the
    token embeddings only, so its prefix columns get no position information either; zero bias
    is the same choice for T5. The real columns keep exactly the bias they had without a prefix.
    Where generate()'s cache stores [P; K], T5 computed the bias over L + T key positions as if
    P were the first L of them; the real key at index r has bias column r (its distance to the
    query counts real tokens only, since the cache reports real tokens as its length), so the
    first T columns are the real keys' bias."""
    bias = bias[..., :kv_len]
    zero = bias.new_zeros(*bias.shape[:-1], length)
    bias = torch.cat([zero, bias], dim=-1).to(key.dtype)
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        low = torch.finfo(key.dtype).min
        return torch.where(mask, bias, torch.full((), low, dtype=key.dtype, device=key.device))
    return bias + mask


AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
