"""The prefix engine's model, without any I/O: a frozen LM with trainable prefixes, its
forward, generate() and mixed-prefix batches. Saving, loading and export are in model.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import is_encoder_decoder, kinds_of
from .attention import ActiveBatch, PrefixState
from .cache import cached_kinds, prefixed_cache
from .config import PrefixConfig, PrefixError, PrefixInit, PrefixMode
from .encoder import PrefixEncoder
from .wiring import attach, capture, detach, kv_shapes

DEFAULT = "default"  # the name of the model's own (trainable) prefix
EMBEDDING = "embedding"  # the encoder key of an embedding-only prefix
IGNORE_INDEX = -100  # a label that is not predicted (PyTorch's cross-entropy default)


@dataclass
class StoredPrefix:
    """A frozen prefix held as P: one (L, width) matrix per stream (or the input vectors)."""

    config: PrefixConfig
    tensors: dict[str, torch.Tensor]


class Entry(NamedTuple):
    """One prefix as a batch uses it."""

    config: PrefixConfig
    kv: dict[str, torch.Tensor]  # stream (Slot.kind) -> (layers, 2, 1, kv_heads, L, head_dim)


class BatchPrefixes(NamedTuple):
    """The prefixes of one batch, as forward() and generate() hand them to attention."""

    active: ActiveBatch
    lengths: torch.Tensor  # each row's prefix length (one value when all rows share it)
    infix: list[bool]  # which rows' prefixes are infixes


class PrefixCore(nn.Module):
    """A frozen causal or encoder-decoder LM with trainable prefixes (see PrefixModel).

    `forward` and `generate` take `prefix=` as one name for the whole batch or one name per
    row, so rows with different prefixes (even of different lengths or modes) share one
    forward pass and one generate call.
    """

    def __init__(self, base: nn.Module, config: PrefixConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        self.config = _checked(config or PrefixConfig(), base)
        self.base = base
        self.is_encoder_decoder = is_encoder_decoder(base)
        base.requires_grad_(False)
        self.state = PrefixState()
        self._row_lengths: dict[tuple, torch.Tensor] = {}  # see _lengths
        self.stored: dict[str, StoredPrefix] = {}
        self._wiring = attach(base, self.state)  # refuses a base already wrapped
        self.slots = self._wiring.slots
        self._position_offset = _position_offset(base)
        try:
            self.kinds = kinds_of(base)
            self.shapes = kv_shapes(self._wiring)  # kind -> (layers, kv_heads, head_dim)
            self.hidden_size = base.get_input_embeddings().embedding_dim
            self.encoders = self._build_encoders()
            self.init_residual = self._initialise(tokenizer)
        except BaseException:
            self.unwrap()  # a failed construction leaves the base free
            raise

    def _build_encoders(self) -> nn.ModuleDict:
        """One PrefixEncoder per stream (one for the input vectors of an embedding prefix)."""
        config = self.config
        L, k, h = config.length, config.reparam_dim, config.reparam_hidden
        if config.mode == PrefixMode.embedding:
            widths = {EMBEDDING: self.hidden_size}
        else:
            widths = {kind: self.width(kind) for kind in self.kinds}
        return nn.ModuleDict(
            {name: PrefixEncoder(L, w, config.reparam, k, h) for name, w in widths.items()}
        ).to(self.device)

    def _initialise(self, tokenizer) -> float | None:
        """init=text: fit P to the LM's activations on init_text; returns the residual (None for
        init=random, whose P keeps the encoders' random values)."""
        if self.config.init != PrefixInit.text:
            return None
        if tokenizer is None:
            raise PrefixError("prefix.init=text needs the model's tokenizer")
        return self.init_from_text(tokenizer, self.config.init_text)

    def unwrap(self) -> nn.Module:
        """Detach from the base model (which another PrefixModel may then wrap) and return it."""
        return detach(self._wiring)

    # ------------------------------------------------------------------ shapes and names
    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def width(self, kind: str) -> int:
        layers, heads, head_dim = self.shapes[kind]
        return layers * 2 * heads * head_dim

    @property
    def prefix_names(self) -> list[str]:
        return [DEFAULT, *self.stored]

    def prefix_tensors(self, name: str = DEFAULT) -> dict[str, torch.Tensor]:
        """The projected P of a prefix: what a checkpoint stores."""
        if name == DEFAULT:
            return {key: enc() for key, enc in self.encoders.items()}
        return self._stored(name).tensors

    def parameter_counts(self) -> dict:
        """Stored (P only) and trainable (P' + MLP, or P) parameters, also as % of the base."""
        base = sum(p.numel() for p in self.base.parameters())
        stored = sum(enc.length * enc.width for enc in self.encoders.values())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return parameter_summary(base, stored, trainable)

    # ------------------------------------------------------------------ the LM's own activations
    def _capture(self, input_ids=None, inputs_embeds=None) -> dict[str, torch.Tensor]:
        """Run the frozen LM without any prefix and return its keys/values per stream,
        as (layers, 2, 1, kv_heads, T, head_dim) tensors (see wiring.capture)."""
        return capture(self._wiring, input_ids=input_ids, inputs_embeds=inputs_embeds)

    def _kv_from_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """P -> key/values per stream, (layers, 2, 1, kv_heads, L, head_dim)."""
        if EMBEDDING in tensors:  # embedding-only: the frozen LM computes the keys/values
            return self._capture(inputs_embeds=tensors[EMBEDDING][None])
        out = {}
        for kind, p in tensors.items():
            layers, heads, head_dim = self.shapes[kind]
            length = p.shape[0]
            kv = p.view(length, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)
            out[kind] = kv.unsqueeze(2)
        return out

    @torch.no_grad()
    def init_from_text(self, tokenizer, text: str) -> float:
        """Set P to the frozen LM's activations on `text` (see PrefixConfig.init_text for how a
        token count other than L is handled). Returns the worst relative residual of the fit."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise PrefixError(f"prefix.init_text {text!r} has no tokens")
        L = self.config.length
        ids = (ids * (L // len(ids) + 1))[:L]
        ids = torch.tensor([ids], device=self.device)
        if EMBEDDING in self.encoders:
            targets = {EMBEDDING: self.base.get_input_embeddings()(ids)[0]}
        else:
            captured = self._capture(ids)
            targets = {kind: _flatten(kv) for kind, kv in captured.items()}
        return max(self.encoders[key].fit(t) for key, t in targets.items())

    # ------------------------------------------------------------------ a batch of prefixes
    def _stored(self, name: str) -> StoredPrefix:
        if name not in self.stored:
            raise PrefixError(f"unknown prefix {name!r}; this model has {self.prefix_names}")
        return self.stored[name]

    def _entry(self, name: str) -> Entry:
        if name == DEFAULT:
            return Entry(self.config, self._kv_from_tensors(self.prefix_tensors()))
        stored = self._stored(name)
        return Entry(stored.config, self._kv_from_tensors(stored.tensors))

    def _batch(self, prefix: str | Sequence[str] | None, batch: int) -> BatchPrefixes:
        """The ActiveBatch for `prefix`, each row's prefix length, and which rows are infix."""
        names = [prefix or DEFAULT] if prefix is None or isinstance(prefix, str) else list(prefix)
        if len(names) not in (1, batch):
            raise PrefixError(f"got {len(names)} prefix names for a batch of {batch} rows")
        entries = {name: self._entry(name) for name in dict.fromkeys(names)}
        lengths = [entries[n].config.length for n in names]
        infix = [entries[n].config.mode == PrefixMode.infix for n in names]
        if len(entries) == 1:
            kv = next(iter(entries.values())).kv
            if self.training and self.config.dropout > 0:
                kv = {
                    k: F.dropout(v.expand(-1, -1, batch, -1, -1, -1), self.config.dropout)
                    for k, v in kv.items()
                }
            active = ActiveBatch(kv=kv)
        else:
            longest = max(lengths)
            kv = {}
            for kind in self.kinds:
                rows = []
                for name in names:
                    t = entries[name].kv[kind]
                    rows.append(F.pad(t, (0, 0, 0, longest - t.shape[4])))
                kv[kind] = torch.cat(rows, dim=2)
            key_mask = None
            if len(set(lengths)) > 1:
                key_mask = (
                    torch.arange(longest, device=self.device)[None, :]
                    < self._lengths(lengths)[:, None]
                )
            active = ActiveBatch(kv=kv, key_mask=key_mask)
        return BatchPrefixes(active, self._lengths(lengths), infix)

    def _lengths(self, lengths: list[int]) -> torch.Tensor:
        """Each row's prefix length as a tensor on the model's device, kept for the next call:
        building it from a list is a host-to-device copy, which on a GPU first waits for every
        kernel already queued (the previous step's), once per forward."""
        key = (self.device, *lengths)
        if key not in self._row_lengths:
            if len(self._row_lengths) >= 64:  # mixed batches vary; keep the memo small
                self._row_lengths.clear()
            self._row_lengths[key] = torch.tensor(lengths, device=self.device)
        return self._row_lengths[key]

    @contextlib.contextmanager
    def _active(self, active: ActiveBatch) -> Iterator[None]:
        self.state.active = active
        try:
            yield
        finally:
            self.state.active = None

    def _positions(
        self,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor,
        infix_start: torch.Tensor | None,
    ) -> torch.Tensor:
        """Real tokens take positions L, L+1, ... as if P were real past tokens (as in the paper's
        code and PEFT); with an infix only the tokens after it are shifted. Left padding is skipped.
        RoBERTa-style models count from padding_idx + 1 (_position_offset).
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0) + self._position_offset
        shift = lengths[:, None].expand_as(positions)
        if infix_start is not None:
            index = torch.arange(positions.shape[1], device=positions.device)
            shift = shift * (index[None, :] >= infix_start[:, None])
        return positions + shift

    def _infix_start(
        self, infix: list[bool], batch: int, start: torch.Tensor
    ) -> torch.Tensor | None:
        if not any(infix):
            return None
        rows = torch.tensor(infix, device=start.device)
        if rows.numel() == 1:
            rows = rows.expand(batch)
        return torch.where(rows, start, torch.zeros_like(start))

    # ------------------------------------------------------------------ forward and generate
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        prefix: str | Sequence[str] | None = None,
        infix_start: torch.Tensor | None = None,
        **kwargs,
    ):
        """The base model's forward with the prefix in every attention.

        Infix: the infix sits before the separator that ends x, so the separator and y attend to
        it; `infix_start` (the separator's index per row) defaults to one before the first
        label that is not -100.
        """
        ref = input_ids if input_ids is not None else kwargs["inputs_embeds"]
        batch, length = ref.shape[:2]
        active, lengths, infix = self._batch(prefix, batch)
        if any(infix):
            if infix_start is None:
                if labels is None:
                    raise PrefixError("an infix prefix needs labels or infix_start")
                infix_start = ((labels != IGNORE_INDEX).long().argmax(-1) - 1).clamp_min(0)
            active.infix_start = self._infix_start(infix, batch, infix_start)
        if not self.is_encoder_decoder and "position_ids" not in kwargs:
            lengths = lengths.expand(batch) if lengths.numel() == 1 else lengths
            mask = attention_mask
            if mask is None:  # every token is real (and so are the cached ones)
                # The base still gets None: a mask of ones would cost transformers a device
                # sync to find out that it can skip it (a stall on a GPU, for every forward).
                cache = _cache(kwargs)
                past = 0 if cache is None else cache.get_seq_length()
                mask = torch.ones(batch, past + length, dtype=torch.long, device=ref.device)
            positions = self._positions(mask, lengths, active.infix_start)
            kwargs["position_ids"] = positions[:, -length:]  # the mask may cover cached tokens
        active.cached = _cached_kinds(active, kwargs)  # e.g. a cache generate() returned
        with self._active(active):
            return self.base(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        prefix: str | Sequence[str] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """transformers' generate() (greedy, sampling, beam search, KV cache on) with the prefix.

        P is computed once per call. Decoder-only prompts must be left-padded; an infix goes
        before the prompt's last token (the separator).
        """
        batch, length = input_ids.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        active, lengths, infix = self._batch(prefix, batch)
        start = torch.full((batch,), length - 1, device=input_ids.device)
        active.infix_start = self._infix_start(infix, batch, start)
        if not self.is_encoder_decoder:
            lengths = lengths.expand(batch) if lengths.numel() == 1 else lengths
            kwargs["position_ids"] = self._positions(attention_mask, lengths, active.infix_start)
        config = kwargs.get("generation_config") or self.base.generation_config
        if kwargs.get("use_cache", config.use_cache) and _cache(kwargs) is None:
            cache = prefixed_cache(self)  # P stored once per row, not copied at every step
            if cache is not None:
                kwargs["cache"] = cache
        active.cached = _cached_kinds(active, kwargs)
        with self._active(active):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def parameter_summary(base: int, stored: int, trainable: int) -> dict:
    """Counts of stored and trainable parameters, each also as a percentage of the base model."""
    return {
        "base": base,
        "stored": stored,
        "trainable": trainable,
        "stored_pct": 100.0 * stored / base,
        "trainable_pct": 100.0 * trainable / base,
    }


def _checked(config: PrefixConfig, base: nn.Module) -> PrefixConfig:
    """`config`, validated and fit for `base` (PrefixConfig.check_model)."""
    config.validate()
    config.check_model(is_encoder_decoder(base), base.config.model_type)
    return config


def _position_offset(base: nn.Module) -> int:
    """Where the model's own position ids start: RoBERTa and the models built like it (XLM-R,
    CamemBERT, ...) number real tokens from padding_idx + 1, reserving the positions up to the
    padding index; explicit position_ids must do the same. Every other family starts at 0."""
    for module in base.modules():
        if hasattr(module, "create_position_ids_from_input_ids") and isinstance(
            getattr(module, "padding_idx", None), int
        ):
            return module.padding_idx + 1
    return 0


def _cache(kwargs: dict):
    """The cache a caller passed, under its new name or the old one."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _cached_kinds(active: ActiveBatch, kwargs: dict) -> frozenset[str]:
    lengths = {kind: kv.shape[4] for kind, kv in active.kv.items()}
    return cached_kinds(_cache(kwargs), lengths)


def _flatten(kv: torch.Tensor) -> torch.Tensor:
    """(layers, 2, 1, heads, L, head_dim) -> P's layout (L, layers * 2 * heads * head_dim)."""
    layers, two, _, heads, length, head_dim = kv.shape
    return kv[:, :, 0].permute(3, 0, 1, 2, 4).reshape(length, layers * two * heads * head_dim)
