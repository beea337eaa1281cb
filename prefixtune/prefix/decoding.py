"""Continuous-batching beam search over prefixed keys/values, token-identical to transformers'.

Why: evaluation (beam 5) dominates every experiment. PrefixModel.generate (transformers' beam
search) runs batches of 10 inputs x 5 beams, at which a CPU decoding forward costs twice as much
per row as at hundreds of rows, prefills every prompt once per beam, and keeps finished inputs
in the batch until its longest one is done.

The pool. Inputs wait in a queue sorted by cached length (prefix + prompt), longest first, and
run in a pool of at most max_rows // num_beams inputs, num_beams consecutive rows each. An input
leaves the pool the step its search is done; queued inputs join as soon as an eighth of the pool
is free (joining is a prefill forward, cheaper per row in groups), prefilled once each (not per
beam) in groups of at most 2 x max_rows padded tokens per forward. Every step runs one forward
of the base model over all rows, then one search step (decoding_beams.py) for all inputs, each
at its own step, new inputs at their first. The search state stays on the model's device; once
per step the host learns which inputs are done and which beam each new beam continues (one
small transfer), and from that plans the cache's cell copies.

The cache (decoding_cache.py) holds every row's keys/values as [its prefix; its prompt; its
generated tokens] from column 0, with no padding inside a row; a decoding step passes the model
an explicit 4D mask (column < the row's length), explicit position ids, and asks for the last
position's logits only. The prefix is just the first L columns of a row: P (or, for an
embedding-only prefix, the frozen LM's keys/values of it) as if it were past tokens, so rows
with prefixes of any length and mode mix freely, and during decoding the base model runs as it
is, with no prefix active. Positions are PrefixModel's: a decoder-only row's real tokens take
positions L, L+1, ... (an infix shifts only the prompt's last token and what follows, and that
is exactly the row's cached length); a BART decoder's are 0, 1, ... per row, fed through a hook
on its position embedding (BART's decoder takes no position ids and would use one for all).
Beam reordering copies only the cells that differ: a beam taking over another beam's history
gets that beam's generated columns (its prefix and prompt columns are the same); an input taking
over a finished input's rows gets all its columns.

Prompts are prefilled the way PrefixModel.forward/generate run them: the prefix active in
attention (state.active, concatenated there), left padding for decoder-only (right padding
for the encoder), positions from PrefixModel._positions, an infix seen from the prompt's last
token on. BART: the encoder runs once per input with its encoder prefix, then the decoder start
token with the decoder and cross prefixes; the cross-attention keys/values (cross prefix in
front) are kept per row and read through transformers' EncoderDecoderCache (`is_updated`). Each
prefix's keys/values are computed once per call (PrefixModel._entry).

Same as transformers: the search math, step for step (decoding_beams.py), in float32, and every
row's attention over the same columns with the same values. What differs is only which masked
columns pad a row and how many rows share a GEMM, which can move logits in their last bits and
so, rarely, flip a near-tie between two beams. Verified in tests/test_decoding.py against
PrefixModel.generate token for token on tiny GPT-2, Llama (grouped-query attention) and BART
with mixed prefixes, infix and embedding-only prefixes, and on the real SmolLM2-135M with E2E
inputs; scripts/bench_eval.py compares whole evaluation runs.

The pool is also a step-able object (`Pool`) for a server (prefixtune/serve/): inputs are added
while it runs (`add`, with their own prefix, and for one beam their own token limit and
`Sampling`), `step` runs one forward and returns the inputs done, `cancel` frees an input's
rows, and a `watch` callback sees every one-beam input's new token each step (streaming, stop
strings). Its cache grows when a wider input arrives. beam_search is that pool given all its
inputs at once.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.modeling_outputs import BaseModelOutput

from .architecture import CROSS, DECODER, SELF
from .attention import ActiveBatch
from .config import PrefixError, PrefixMode
from .decoding_beams import Beams, Sampling, Search
from .decoding_cache import RowCache
from .model import DEFAULT, PrefixModel

# Beam rows in flight, tuned on the 2-core CPU with SmolLM2-135M (docs/results/bench_eval/): a
# decoding forward costs 5-6 ms per row at 50 rows, 3.5 at 300, 3.2 at 500 (no better above), and
# the cache takes 46 KB per row and column (E2E rows: up to 126 columns), 2.3 GB at 400 rows. A
# GPU wants far more rows (thousands) for its GEMMs to fill: pass max_rows.
DEFAULT_MAX_ROWS = 400
JOIN_FRACTION = 8  # queued inputs join once this fraction of the pool is free
NO_PREFIX = "<no prefix>"  # Pool.add's name for a row with no prefix at all (the base model)

# Generation-config settings that add logits processors beam_search does not apply, with the
# values that add none.
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "remove_invalid_values": (None, False),
    "renormalize_logits": (None, False),
    "max_time": (None,),
    "stop_strings": (None,),
}


@torch.no_grad()
def beam_search(
    model: PrefixModel,
    inputs: Sequence[Sequence[int]],
    *,
    prefix: str | Sequence[str | None] | None = None,
    num_beams: int = 5,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: bool | str = True,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    progress: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Beam search (greedy for num_beams=1) for every input, with continuous batching.

    The same outputs as ``model.generate(..., num_beams=num_beams, do_sample=False, ...)`` with
    the same settings, token for token (see the module docstring for the one caveat).

    inputs: tokenised prompts (decoder-only) or encoder inputs (encoder-decoder), unpadded.
    prefix: one prefix name for all inputs or one per input; None is the model's own prefix.
    max_rows: beam rows in flight at once (memory: their KV cache; speed: bigger GEMMs).
    progress: called with each input's index as soon as its search is done.

    Returns each input's new tokens, in input order: for decoder-only what follows the prompt,
    for encoder-decoder what follows the decoder start token. A hypothesis that ended with eos
    includes the eos token (prefixtune.generate.decode_until_eos cuts there); one that reached
    max_new_tokens has max_new_tokens tokens. Padding is never included. The model runs in the
    mode it is in (eval() for deterministic outputs).
    """
    search, pad, start = search_settings(
        model,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        decoder_start_token_id=decoder_start_token_id,
    )
    if max_rows < num_beams:
        raise PrefixError(f"max_rows={max_rows} holds no input of num_beams={num_beams} rows")
    if any(len(ids) == 0 for ids in inputs):
        raise PrefixError("beam_search got an empty input")
    if prefix is None or isinstance(prefix, str):
        names = [prefix or DEFAULT] * len(inputs)
    else:
        names = [name or DEFAULT for name in prefix]
        if len(names) != len(inputs):
            raise PrefixError(f"got {len(names)} prefix names for {len(inputs)} inputs")
    if not inputs:
        return []
    capacity = min(max_rows // num_beams, len(inputs))
    pool = Pool(model, search, pad=pad, start=start, capacity=capacity, max_rows=max_rows)
    for i, (ids, name) in enumerate(zip(inputs, names, strict=True)):
        pool.add(i, [int(t) for t in ids], name)
    pool.sort_queue()
    results: list[list[int]] = [[] for _ in inputs]
    while pool:
        for i, tokens in pool.step():
            results[i] = tokens
            if progress is not None:
                progress(i)
    return results


def search_settings(
    model: PrefixModel,
    *,
    num_beams,
    max_new_tokens,
    min_new_tokens,
    length_penalty,
    early_stopping,
    eos_token_id,
    pad_token_id,
    decoder_start_token_id,
) -> tuple[Search, int, int | None]:
    """The search settings, completed from the base's generation config as generate() would."""
    config = model.base.generation_config
    if num_beams < 1 or max_new_tokens < 1 or min_new_tokens < 0:
        raise PrefixError("beam_search needs num_beams >= 1, max_new_tokens >= 1, min >= 0")
    if early_stopping not in (True, False, "never"):
        raise PrefixError(f"early_stopping must be True, False or 'never', not {early_stopping!r}")
    types, _ = get_layer_types_and_kwargs(model.base.config.get_text_config(decoder=True))
    if any(t != "full_attention" for t in types):
        raise PrefixError("beam_search needs full-attention layers; use PrefixModel.generate")
    if model.is_encoder_decoder and not hasattr(model.base.get_decoder(), "embed_positions"):
        raise PrefixError(f"beam_search does not support {model.base.config.model_type}")
    refused = [
        name for name, neutral in _NEUTRAL.items() if getattr(config, name, None) not in neutral
    ]
    forced_bos = getattr(config, "forced_bos_token_id", None)
    if forced_bos is not None and not model.is_encoder_decoder:
        refused.append("forced_bos_token_id")
    if refused:
        raise PrefixError(
            f"beam_search does not apply the generation config's {', '.join(refused)}; "
            "use PrefixModel.generate"
        )
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    forced_eos = getattr(config, "forced_eos_token_id", None)
    forced_eos = (
        () if forced_eos is None else (forced_eos,) if isinstance(forced_eos, int) else forced_eos
    )
    search = Search(
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        length_penalty=float(length_penalty),
        early_stopping=early_stopping if num_beams > 1 else True,
        eos=eos,
        forced_bos=(forced_bos,) if forced_bos is not None else (),
        forced_eos=tuple(forced_eos),
    )
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    pad = pad if pad is not None else (eos[0] if eos else 0)
    start = None
    if model.is_encoder_decoder:
        start = decoder_start_token_id
        for source in (config, model.base.config):
            if start is None:
                start = getattr(source, "decoder_start_token_id", None)
        if start is None:
            raise PrefixError("an encoder-decoder model needs decoder_start_token_id")
    return search, pad, start


class _Prefixes:
    """The keys/values of every prefix a pool uses, computed once each (PrefixModel._entry)."""

    def __init__(self, model: PrefixModel) -> None:
        self.model, self.kinds = model, model.kinds
        self.kv, self.length, self.infix = {}, {}, {}

    def add(self, name: str) -> None:
        if name in self.kv:
            return
        if name == NO_PREFIX:  # zero columns: the model's own prefix's keys/values, none kept
            _, kv = self.model._entry(DEFAULT)
            self.kv[name] = {kind: t[..., :0, :] for kind, t in kv.items()}
            self.length[name], self.infix[name] = 0, False
            return
        config, kv = self.model._entry(name)
        self.kv[name], self.length[name] = kv, config.length
        self.infix[name] = config.mode == PrefixMode.infix

    def forget(self, name: str) -> None:
        """Drop a prefix's keys/values (rows already prefilled keep theirs in the cache)."""
        for table in (self.kv, self.length, self.infix):
            table.pop(name, None)

    def active(self, names: list[str], device: torch.device) -> ActiveBatch:
        """The prefixes of a group of rows as PrefixModel._batch lays them out: one shared row,
        or one row each padded to the group's longest (key_mask hides the padding)."""
        if len(set(names)) == 1:
            return ActiveBatch(kv=dict(self.kv[names[0]]))
        lengths = [self.length[name] for name in names]
        longest = max(lengths)
        kv = {
            kind: torch.cat(
                [F.pad(self.kv[n][kind], (0, 0, 0, longest - self.length[n])) for n in names],
                dim=2,
            )
            for kind in self.kinds
        }
        key_mask = None
        if len(set(lengths)) > 1:
            key_mask = (
                torch.arange(longest, device=device) < torch.tensor(lengths, device=device)[:, None]
            )
        return ActiveBatch(kv=kv, key_mask=key_mask)


def _row_cells(
    prefix: torch.Tensor, tokens: torch.Tensor, lengths: list[int], spans: list[tuple[int, int]]
) -> torch.Tensor:
    """One layer's cells of new rows, [prefix; tokens] from column 0 without padding.

    prefix: (2, 1 or rows, kv_heads, Lg, head_dim), row i's first lengths[i] columns real;
    tokens: (rows, 2, kv_heads, W, head_dim), row i's real columns span[i] = (first, count).
    Returns (rows, width, 2, kv_heads, head_dim), width the longest row; columns past a row's
    end repeat its column 0 (finite values: attention masks them, but reads them)."""
    rows, longest = tokens.shape[0], prefix.shape[3]
    prefix = prefix.expand(2, rows, *prefix.shape[2:]).permute(1, 3, 0, 2, 4)
    both = torch.cat([prefix.to(tokens.dtype), tokens.permute(0, 3, 1, 2, 4)], dim=1)
    n = torch.tensor(lengths)[:, None]
    first, count = (torch.tensor(x)[:, None] for x in zip(*spans, strict=True))
    column = torch.arange(int((n + count).max()))[None, :]
    real = torch.where(column < n + count, longest + first + column - n, 0)
    index = torch.where(column < n, column, real).to(both.device)
    return both[torch.arange(rows, device=both.device)[:, None], index]


class Pool:
    """The inputs being decoded, their rows' caches and search state (see the module doc).

    Inputs are keyed by any hashable the caller picks. capacity: inputs in the pool at once
    (capacity x num_beams rows); max_rows sizes the prefill forwards. watch (one beam only):
    called after every step with (key, new token) for each input in the pool; it returns the
    keys to finish now (their tokens so far are their result)."""

    def __init__(
        self,
        model: PrefixModel,
        search: Search,
        *,
        pad: int,
        start: int | None,
        capacity: int,
        max_rows: int,
        watch: Callable[[list[tuple[Hashable, int]]], set] | None = None,
    ) -> None:
        if watch is not None and search.num_beams != 1:
            raise PrefixError("a pool watches new tokens only with num_beams=1")
        self.model, self.base = model, model.base
        self.search, self.pad, self.start, self.watch = search, pad, start, watch
        self.inputs: dict[Hashable, list[int]] = {}
        self.names: dict[Hashable, str] = {}
        self.limits: dict[Hashable, int] = {}  # inputs that stop before search.max_new_tokens
        self.sampling: dict[Hashable, Sampling] = {}
        self.cancelled: set[Hashable] = set()
        self.device = model.device
        self.beams_per_input = search.num_beams
        self.encoder_decoder = model.is_encoder_decoder
        self.prefixes = _Prefixes(model)
        self.beams = Beams(search, self.device)
        self.capacity = capacity
        self.prefill_tokens = 2 * max_rows  # padded prompt tokens per prefill forward
        own = DECODER if self.encoder_decoder else SELF
        self.cache = RowCache(model.shapes[own][0])
        self.cross = RowCache(model.shapes[CROSS][0]) if self.encoder_decoder else None
        if self.encoder_decoder:
            self.both = EncoderDecoderCache(self.cache, self.cross)
            self.both.is_updated = {i: True for i in range(len(self.cross.layers))}
            hidden = self.base.get_input_embeddings().embedding_dim
            self.no_encoder = self.base.get_input_embeddings().weight.new_zeros(1, 1, hidden)
        self.queue: deque[Hashable] = deque()
        # the widest row of the inputs added (its last generated token is never fed back), and
        # the widest cross-attention row: the buffers' widths
        self.widest = self.widest_cross = 0
        # per slot (input in the pool), in pool order: the input, its shared columns (prefix +
        # prompt, or decoder prefix + start token), the generated tokens already in the cache,
        # and (encoder-decoder) its cross-attention columns
        self.slots: list[int] = []
        self.shared: list[int] = []
        self.fed: list[int] = []
        self.crossed: list[int] = []

    def _cached_length(self, i: Hashable) -> int:
        return self.prefixes.length[self.names[i]] + len(self.inputs[i])

    def __bool__(self) -> bool:
        return bool(self.queue or self.slots)

    def add(
        self,
        key: Hashable,
        ids: list[int],
        name: str,
        *,
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        """Queue an input (unpadded token ids) with its prefix name (NO_PREFIX: none); for one
        beam, its own token limit (at most the search's) and sampling (None: greedy)."""
        if not ids:
            raise PrefixError("the pool got an empty input")
        if key in self.inputs:
            raise PrefixError(f"the pool already has an input {key!r}")
        limit = self.search.max_new_tokens
        if self.beams_per_input > 1 and (max_new_tokens is not None or sampling is not None):
            raise PrefixError("per-input token limits and sampling need num_beams=1")
        if max_new_tokens is not None and max_new_tokens < limit:
            limit = self.limits[key] = max(1, max_new_tokens)
        if sampling is not None:
            self.sampling[key] = sampling
        self.prefixes.add(name)
        self.inputs[key], self.names[key] = ids, name
        cached = self._cached_length(key)  # prefix + prompt, or + encoder input
        if self.encoder_decoder:  # the decoder's row: its prefix + the start token
            self.widest = max(self.widest, self.prefixes.length[name] + 1 + limit)
            self.widest_cross = max(self.widest_cross, cached)
        else:
            self.widest = max(self.widest, cached + limit)
        self.queue.append(key)

    def sort_queue(self) -> None:
        """Longest cached length first (beam_search's order: the widest prefills first)."""
        self.queue = deque(sorted(self.queue, key=lambda i: -self._cached_length(i)))

    def cancel(self, key: Hashable) -> None:
        """Drop an input: at once if queued, at the next step's end if in the pool."""
        if key in self.queue:
            self.queue.remove(key)
            self._forget(key)
        elif key in self.inputs:
            self.cancelled.add(key)

    def forget_prefix(self, name: str) -> None:
        """Drop a prefix's keys/values; queued inputs using it must have been cancelled."""
        self.prefixes.forget(name)

    def _forget(self, key: Hashable) -> None:
        for table in (self.inputs, self.names, self.limits, self.sampling):
            table.pop(key, None)
        self.cancelled.discard(key)

    def step(self) -> list[tuple[Hashable, list[int]]]:
        """One forward of the pool (decoding its rows, prefilling joiners) and one search step;
        returns the inputs done, with their new tokens (cancelled ones are not returned)."""
        beams = self.beams_per_input
        logits = []
        if self.slots:
            logits.append(self._decode())
        if self._room():
            new = self._join()
            logits.append(new[:, None].expand(-1, beams, -1))
        if not logits:
            return []
        source, done = self.beams.advance(torch.cat(logits) if len(logits) > 1 else logits[0])
        return self._settle(source, done)

    # ------------------------------------------------------------------ joining
    def _room(self) -> bool:
        free = self.capacity - len(self.slots)
        if not self.queue or free == 0:
            return False
        return not self.slots or free >= max(1, self.capacity // JOIN_FRACTION)

    def _join(self) -> torch.Tensor:
        """Prefill queued inputs into the free slots; returns their first logits (inputs, V)."""
        free = self.capacity - len(self.slots)
        group = [self.queue.popleft() for _ in range(min(free, len(self.queue)))]
        group.sort(key=lambda i: -self._cached_length(i))  # stable: beam_search's is sorted
        sampling = [self.sampling.get(i) for i in group]
        logits = []
        while group:
            width = len(self.inputs[group[0]])  # the longest (the queue is sorted)
            size = max(1, min(len(group), self.prefill_tokens // width))
            chunk, group = group[:size], group[size:]
            logits.append(self._prefill(chunk))
        self.beams.join(sum(len(x) for x in logits), sampling)
        return torch.cat(logits)

    def _prefill(self, chunk: list[Hashable]) -> torch.Tensor:
        model, device = self.model, self.device
        seqs = [self.inputs[i] for i in chunk]
        names = [self.names[i] for i in chunk]
        lengths = [self.prefixes.length[name] for name in names]
        rows, width = len(chunk), max(map(len, seqs))
        ids = torch.full((rows, width), self.pad, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        left = not self.encoder_decoder  # as Collator.generation_batch pads
        for row, seq in enumerate(seqs):
            at = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, at], mask[row, at] = torch.tensor(seq), 1
        ids, mask = ids.to(device), mask.to(device)
        active = self.prefixes.active(names, device)
        if self.encoder_decoder:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            start = torch.full((rows, 1), self.start, dtype=torch.long, device=device)
            with model._active(active):
                out = self.base(
                    input_ids=ids,
                    attention_mask=mask,
                    decoder_input_ids=start,
                    cache=cache,
                    use_cache=True,
                )
            own, cross = cache.self_attention_cache, cache.cross_attention_cache
            self._write(self.cache, own, active.kv[DECODER], lengths, [(0, 1)] * rows)
            spans = [(0, len(seq)) for seq in seqs]
            self._write(self.cross, cross, active.kv[CROSS], lengths, spans)
            self.shared += [n + 1 for n in lengths]
            self.crossed += [n + len(seq) for n, seq in zip(lengths, seqs, strict=True)]
        else:
            infix = [self.prefixes.infix[name] for name in names]
            last = torch.full((rows,), width - 1, device=device)
            active.infix_start = model._infix_start(infix, rows, last)
            shift = torch.tensor(lengths, device=device)
            positions = model._positions(mask, shift, active.infix_start)
            cache = DynamicCache()
            with model._active(active):
                out = self.base(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            spans = [(width - len(seq), len(seq)) for seq in seqs]
            self._write(self.cache, cache, active.kv[SELF], lengths, spans)
            self.shared += [n + len(seq) for n, seq in zip(lengths, seqs, strict=True)]
        self.slots += chunk
        self.fed += [0] * rows
        return out.logits[:, -1].float()

    def _write(self, rows: RowCache, filled, prefix: torch.Tensor, lengths, spans) -> None:
        """Copy new inputs' prefix and prompt keys/values (from the prefill's cache `filled`)
        into their rows, after the rows already in the pool, one layer at a time (the first
        write allocates the rows for the whole call, as wide as its widest row)."""
        first = len(self.slots) * self.beams_per_input
        columns = self.widest_cross if rows is self.cross else self.widest
        for i, (kv, layer) in enumerate(zip(prefix, filled.layers, strict=True)):
            cells = _row_cells(kv, torch.stack((layer.keys, layer.values), dim=1), lengths, spans)
            if not rows.allocated:
                rows.allocate(self.capacity * self.beams_per_input, columns, cells)
            elif i == 0 and rows.columns_held < columns:  # a wider input than any before
                rows.widen(columns)
            rows.write(i, first, self.beams_per_input, cells)

    # ------------------------------------------------------------------ decoding
    def _decode(self) -> torch.Tensor:
        """One forward of every row in the pool on its newest token; (slots, beams, V)."""
        beams, device = self.beams_per_input, self.device
        rows = len(self.slots) * beams
        length = [n + fed for n, fed in zip(self.shared, self.fed, strict=True)]
        width = max(length) + 1
        columns = torch.tensor(length, device=device).repeat_interleave(beams)
        self.cache.prepare(rows, width, columns)
        mask = _visible(columns + 1, width)
        tokens = self.beams.last_tokens()[:, None]
        if self.encoder_decoder:
            crossed = torch.tensor(self.crossed, device=device).repeat_interleave(beams)
            self.cross.prepare(rows, max(self.crossed))
            positions = torch.tensor(self.fed, device=device).repeat_interleave(beams) + 1
            encoder = BaseModelOutput(last_hidden_state=self.no_encoder.expand(rows, 1, -1))
            with self._decoder_positions(positions):
                out = self.base(
                    attention_mask=_visible(crossed, max(self.crossed)),
                    decoder_input_ids=tokens,
                    decoder_attention_mask=mask,
                    encoder_outputs=encoder,
                    cache=self.both,
                    use_cache=True,
                )
        else:
            out = self.base(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=columns[:, None],  # a row's cached length is its next position
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.fed = [fed + 1 for fed in self.fed]
        return out.logits[:, -1].float().view(len(self.slots), beams, -1)

    @contextlib.contextmanager
    def _decoder_positions(self, positions: torch.Tensor) -> Iterator[None]:
        """Per-row decoder positions for BART-like decoders, which compute one position for all
        rows from the cache length: the position embedding gets `positions` as its position_ids
        (it returns (1, rows, hidden) for them) and its output is turned into (rows, 1, hidden)."""
        module = self.base.get_decoder().embed_positions

        def before(module, args, kwargs):
            if "position_ids" not in kwargs:
                raise PrefixError("this decoder's position embedding takes no position_ids")
            return args, {**kwargs, "position_ids": positions}

        def after(module, args, output):
            return output.transpose(0, 1)

        hooks = [
            module.register_forward_pre_hook(before, with_kwargs=True),
            module.register_forward_hook(after),
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    # ------------------------------------------------------------------ leaving
    def _settle(self, source: torch.Tensor, done: torch.Tensor) -> list[tuple[Hashable, list[int]]]:
        """Collect the done inputs, move the pool's last inputs into their slots, and give each
        beam the cache of the beam it continues."""
        parts = [done[:, None].to(source.dtype), source]
        if self.watch is not None:
            parts.append(self.beams.last_tokens()[:, None])
        host = torch.cat(parts, dim=1).cpu()  # one sync
        done, source = host[:, 0].bool().tolist(), host[:, 1 : 1 + self.beams_per_input]
        if self.watch is not None:
            stop = self.watch(list(zip(self.slots, host[:, -1].tolist(), strict=True)))
            done = [d or key in stop for d, key in zip(done, self.slots, strict=True)]
        if self.limits or self.cancelled:  # a row's tokens so far: the ones fed back, + 1
            done = [
                d or key in self.cancelled or fed + 1 >= self.limits.get(key, fed + 2)
                for d, key, fed in zip(done, self.slots, self.fed, strict=True)
            ]
        finished = [slot for slot, d in enumerate(done) if d]
        results = []
        if finished:
            for slot, tokens in zip(finished, self.beams.result(finished), strict=True):
                key = self.slots[slot]
                if key not in self.cancelled:
                    results.append((key, tokens))
                self._forget(key)
        kept = len(done) - len(finished)
        tail = [slot for slot in range(kept, len(done)) if not done[slot]]
        order = [slot if not done[slot] else tail.pop() for slot in range(kept)]
        self._move(order, source)
        for name in ("slots", "shared", "fed", "crossed"):
            values = getattr(self, name)
            if values:
                setattr(self, name, [values[slot] for slot in order])
        if order != list(range(len(done))):
            self.beams.select(torch.tensor(order, dtype=torch.long, device=self.device), order)
        return results

    def _move(self, order: list[int], source: torch.Tensor) -> None:
        """Cell copies for the new layout: slot s continues old slot order[s]; its beam j
        continues that slot's beam source[order[s], j]."""
        if not order:
            return
        beams, cpu = self.beams_per_input, torch.device("cpu")  # built on the host, then sent
        old = torch.tensor(order, device=cpu)
        slots = torch.arange(len(order), device=cpu)
        moved = (old != slots)[:, None].expand(-1, beams)
        beam = torch.arange(beams, device=cpu)
        own = source[old]
        shared = torch.tensor(self.shared, device=cpu)[old]
        fed = torch.tensor(self.fed, device=cpu)[old]
        first = torch.where(moved, 0, shared[:, None])
        count = torch.where(moved | (own != beam), (shared + fed)[:, None] - first, 0)
        destination = slots[:, None] * beams + beam
        self._copy(self.cache, destination, old[:, None] * beams + own, first, count)
        if self.cross is not None:
            crossed = torch.tensor(self.crossed, device=cpu)[old][:, None]
            everything = torch.where(moved, crossed, 0)
            source_rows = old[:, None] * beams + beam  # a slot's beams share its encoder
            self._copy(self.cross, destination, source_rows, torch.zeros_like(first), everything)

    def _copy(self, rows: RowCache, destination, source, first, count) -> None:
        """Copy count[r] columns from first[r] on of row source[r] to row destination[r]."""
        count = count.flatten()
        total = int(count.sum())
        if total == 0:
            return
        start = torch.cumsum(count, 0) - count
        column = torch.arange(total, device=count.device)
        column -= start.repeat_interleave(count, output_size=total)
        column += first.flatten().repeat_interleave(count, output_size=total)
        columns = rows.columns_held
        cells = [
            (r.flatten().repeat_interleave(count, output_size=total) * columns + column).to(
                self.device
            )
            for r in (destination, source)
        ]
        rows.move(*cells)


def _visible(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """The (rows, 1, 1, width) attention mask of rows holding lengths[r] columns each."""
    return (torch.arange(width, device=lengths.device) < lengths[:, None])[:, None, None]
