"""A frozen transformers LM with trainable prefixes: forward, generate() and mixed batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import Slot, attention_slots, kinds_of
from .attention import ATTN_IMPLEMENTATION, ActiveBatch, PrefixState
from .cache import cached_kinds, prefixed_cache
from .config import PrefixConfig, PrefixError, PrefixInit, PrefixMode
from .encoder import PrefixEncoder

DEFAULT = "default"  # the name of the model's own (trainable) prefix
EMBEDDING = "embedding"  # the encoder key of an embedding-only prefix
IGNORE_INDEX = -100


@dataclass
class StoredPrefix:
    """A frozen prefix held as P: one (L, width) matrix per stream (or the input vectors)."""

    config: PrefixConfig
    tensors: dict[str, torch.Tensor]


class PrefixModel(nn.Module):
    """Wraps a frozen causal or encoder-decoder LM; only the prefix is trained.

    Several prefixes can live in one model (`add_prefix`); `forward` and `generate` take
    `prefix=` as one name for the whole batch or one name per row, so rows with different
    prefixes (even of different lengths or modes) share one forward pass and one generate call.
    """

    def __init__(self, base: nn.Module, config: PrefixConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        config = config or PrefixConfig()
        config.validate()
        self.config = config
        self.base = base
        self.is_encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
        if self.is_encoder_decoder and config.mode != PrefixMode.prefix.value:
            raise PrefixError(
                f"prefix.mode={config.mode} is only supported for decoder-only models; "
                f"{base.config.model_type} takes prefix.mode=prefix"
            )
        base.requires_grad_(False)
        self.state = PrefixState()
        self._row_lengths: dict[tuple, torch.Tensor] = {}  # see _lengths
        self.slots = attention_slots(base)
        for slot, module in self.slots.items():
            if getattr(module, "_prefixtune", None) is not None:
                raise PrefixError(
                    "this base model is already wrapped by a PrefixModel; call .unwrap() first"
                )
            module._prefixtune = (self.state, slot)
        self._base_attn = base.config._attn_implementation
        base.set_attn_implementation(ATTN_IMPLEMENTATION)
        self.kinds = kinds_of(base)
        probe = self._capture(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        # kind -> (layers, kv_heads, head_dim)
        self.shapes = {kind: (len(kv),) + (kv.shape[3], kv.shape[5]) for kind, kv in probe.items()}
        self.hidden_size = base.get_input_embeddings().embedding_dim
        L, k, h = config.length, config.reparam_dim, config.reparam_hidden
        if config.mode == PrefixMode.embedding.value:
            widths = {EMBEDDING: self.hidden_size}
        else:
            widths = {kind: self.width(kind) for kind in self.kinds}
        self.encoders = nn.ModuleDict(
            {name: PrefixEncoder(L, w, config.reparam, k, h) for name, w in widths.items()}
        ).to(self.device)
        self.stored: dict[str, StoredPrefix] = {}
        self._fingerprint: tuple[str | None] | None = None  # see base_fingerprint
        self.init_residual: float | None = None
        if config.init == PrefixInit.text.value:
            if tokenizer is None:
                raise PrefixError("prefix.init=text needs the model's tokenizer")
            self.init_residual = self.init_from_text(tokenizer, config.init_text)

    def unwrap(self) -> nn.Module:
        """Detach from the base model (which another PrefixModel may then wrap) and return it."""
        for module in self.slots.values():
            module._prefixtune = None
        self.base.set_attn_implementation(self._base_attn)
        return self.base

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
        as (layers, 2, 1, kv_heads, T, head_dim) tensors (Llama's keys after RoPE, as cached)."""
        self.state.capture, active = {}, self.state.active
        self.state.active = None
        try:
            inputs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds}
            if self.is_encoder_decoder:
                inputs["decoder_input_ids"] = input_ids
            self.base.base_model(**inputs, use_cache=False)
            captured = self.state.capture
        finally:
            self.state.capture, self.state.active = None, active
        out = {}
        for kind in self.kinds:
            layers = sorted(s.layer for s in captured if s.kind == kind)
            out[kind] = torch.stack(
                [torch.stack(captured[Slot(kind, i)]) for i in layers]
            )  # (layers, 2, 1, heads, T, head_dim)
        return out

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

    def _entry(self, name: str) -> tuple[PrefixConfig, dict[str, torch.Tensor]]:
        if name == DEFAULT:
            return self.config, self._kv_from_tensors(self.prefix_tensors())
        stored = self._stored(name)
        return stored.config, self._kv_from_tensors(stored.tensors)

    def _batch(
        self, prefix: str | Sequence[str] | None, batch: int
    ) -> tuple[ActiveBatch, torch.Tensor, list[bool]]:
        """The ActiveBatch for `prefix`, each row's prefix length, and which rows are infix."""
        names = [prefix or DEFAULT] if prefix is None or isinstance(prefix, str) else list(prefix)
        if len(names) not in (1, batch):
            raise PrefixError(f"got {len(names)} prefix names for a batch of {batch} rows")
        entries = {name: self._entry(name) for name in dict.fromkeys(names)}
        lengths = [entries[n][0].length for n in names]
        infix = [entries[n][0].mode == PrefixMode.infix.value for n in names]
        if len(entries) == 1:
            kv = next(iter(entries.values()))[1]
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
                    t = entries[name][1][kind]
                    rows.append(F.pad(t, (0, 0, 0, longest - t.shape[4])))
                kv[kind] = torch.cat(rows, dim=2)
            key_mask = None
            if len(set(lengths)) > 1:
                key_mask = (
                    torch.arange(longest, device=self.device)[None, :]
                    < self._lengths(lengths)[:, None]
                )
            active = ActiveBatch(kv=kv, key_mask=key_mask)
        return active, self._lengths(lengths), infix

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

    @staticmethod
    def _positions(
        attention_mask: torch.Tensor, lengths: torch.Tensor, infix_start: torch.Tensor | None
    ) -> torch.Tensor:
        """Real tokens take positions L, L+1, ... as if P were real past tokens (as in the paper's
        code and PEFT); with an infix only the tokens after it are shifted. Left padding is skipped.
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
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

    # ------------------------------------------------------------------ checkpoints
    @property
    def base_fingerprint(self) -> str | None:
        """A hash of a fixed sample of the frozen base's weights (not the prefix's), computed
        once per model; a saved prefix records it, and loading checks it (checkpoint.py)."""
        if self._fingerprint is None:
            from .checkpoint import base_fingerprint

            self._fingerprint = (base_fingerprint(self.base),)
        return self._fingerprint[0]

    def save_prefix(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        from .checkpoint import save_prefix

        return save_prefix(self, folder, dtype=dtype)

    def add_prefix(self, name: str, folder: str | Path, *, allow_other_base: bool = False) -> None:
        """Load a saved prefix next to the others, frozen, for mixed-prefix batches.

        A prefix trained on other base weights (its saved fingerprint differs) is refused;
        allow_other_base=True loads it anyway, with a warning."""
        from .checkpoint import load_prefix

        if name in self.prefix_names:
            raise PrefixError(f"a prefix named {name!r} is already loaded")
        config, tensors = load_prefix(folder, self, allow_other_base=allow_other_base)
        self.stored[name] = StoredPrefix(config, {k: t.to(self.device) for k, t in tensors.items()})

    @classmethod
    def from_prefix(
        cls, base: nn.Module, folder: str | Path, tokenizer=None, *, allow_other_base: bool = False
    ) -> PrefixModel:
        """A model whose own prefix is the saved P (held directly: the MLP is not kept).

        On any failure the base is left unwrapped, free for another PrefixModel."""
        from .checkpoint import read_config

        saved = read_config(folder)
        config = PrefixConfig.from_dict({**saved, "reparam": False, "init": "random"})
        model = cls(base, config, tokenizer)
        try:
            model.load_prefix(folder, allow_other_base=allow_other_base)
        except BaseException:
            model.unwrap()
            raise
        return model

    @torch.no_grad()
    def load_prefix(self, folder: str | Path, *, allow_other_base: bool = False) -> None:
        """Set the model's own prefix to a saved P (direct parameterisation only); see
        add_prefix for allow_other_base."""
        from .checkpoint import load_prefix

        config, tensors = load_prefix(folder, self, allow_other_base=allow_other_base)
        if (
            self.config.reparam
            or config.length != self.config.length
            or config.mode != self.config.mode
        ):
            raise PrefixError(
                "load_prefix needs a direct (reparam=false) prefix of the same length and mode; "
                f"this model has length={self.config.length}, mode={self.config.mode}, "
                f"reparam={self.config.reparam}, the prefix in {folder} length={config.length}, "
                f"mode={config.mode}"
            )
        for key, tensor in tensors.items():
            self.encoders[key].p.copy_(tensor)

    def export_peft(self, folder: str | Path) -> Path:
        from .peft_export import export_peft

        return export_peft(self, folder)


def parameter_summary(base: int, stored: int, trainable: int) -> dict:
    """Counts of stored and trainable parameters, each also as a percentage of the base model."""
    return {
        "base": base,
        "stored": stored,
        "trainable": trainable,
        "stored_pct": 100.0 * stored / base,
        "trainable_pct": 100.0 * trainable / base,
    }


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
