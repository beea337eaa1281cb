"""Batched generation: exactly one output per input, returned in dataset order.

Every model generates through the engine's own continuous-batching beam search
(prefix/decoding.py): a pool of `max_rows` beam rows, an input leaving as soon as it is done
and a queued one joining at once, with the same outputs as transformers' beam search. A model
without a prefix (the fine-tuning baselines) is wrapped in a PrefixModel for the call, its rows
carrying no prefix at all (decoding.NO_PREFIX), so that both sides of a prefix vs fine-tuning
comparison are decoded by the same code at the same speed; a family the search does not handle
(T5's relative positions) uses transformers' generate() on length-sorted batches of
``max_rows // num_beams`` inputs. With several processes each one takes every world_size-th
input and rank 0 reassembles them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from prefixtune.collate import Collator
from prefixtune.prefix import PrefixConfig, PrefixError, PrefixModel
from prefixtune.prefix.decoding import NO_PREFIX, beam_search, search_settings


@torch.no_grad()
def generate_outputs(
    model: torch.nn.Module,
    collator: Collator,
    sources: list[str],
    *,
    max_rows: int,
    num_beams: int,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    prefixes: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    desc: str = "generate",
    show_progress: bool = True,
) -> list[tuple[int, str]]:
    """This process's share of the outputs as (index, text); merge shares with merge_outputs.

    ``max_rows``: beam rows in flight at once (inputs x num_beams); ``prefixes``: one prefix
    name per source (mixed-prefix generation), None for the model's own prefix."""
    mine = list(range(rank, len(sources), world_size))
    model.eval()
    settings: dict[str, Any] = dict(
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        length_penalty=length_penalty,
        early_stopping=True,
        eos_token_id=collator.eos,
        pad_token_id=collator.pad,
    )
    if collator.encoder_decoder:
        settings["decoder_start_token_id"] = collator.decoder_start
    bar = tqdm(total=len(mine), desc=desc, disable=not show_progress, unit="input")
    try:
        if not isinstance(model, PrefixModel) and prefixes is not None:
            raise ValueError("per-input prefixes need a PrefixModel")
        with _searchable(model, settings) as searchable:
            if searchable is None:
                texts = _transformers_generate(
                    model, collator, [sources[i] for i in mine], max_rows, device, bar, settings
                )
                return list(zip(mine, texts, strict=True))
            if searchable is not model:
                names: str | list[str | None] | None = NO_PREFIX
            else:
                names = None if prefixes is None else [prefixes[i] for i in mine]
            outputs = beam_search(
                searchable,
                [collator.encode_source(sources[i]) for i in mine],
                prefix=names,
                max_rows=max_rows,
                progress=lambda _: bar.update(1),
                **settings,
            )
        texts = [decode_until_eos(collator, ids) for ids in outputs]
        return list(zip(mine, texts, strict=True))
    finally:
        bar.close()


@contextlib.contextmanager
def _searchable(model: torch.nn.Module, settings: dict[str, Any]) -> Iterator[PrefixModel | None]:
    """The model as beam_search takes it: a PrefixModel as it is; any other model wrapped for
    the call (a throwaway prefix that no row uses), then unwrapped with its parameters'
    requires_grad as they were; None where the search does not handle the model."""
    if isinstance(model, PrefixModel):
        yield model
        return
    trainable = [p.requires_grad for p in model.parameters()]

    def unwrap(wrapped: PrefixModel) -> None:
        wrapped.unwrap()
        for p, flag in zip(model.parameters(), trainable, strict=True):
            p.requires_grad_(flag)

    try:
        wrapped = PrefixModel(model, PrefixConfig(length=1, reparam=False))
    except PrefixError:  # a family the prefix engine does not wire
        yield None
        return
    try:
        search_settings(wrapped, **{"decoder_start_token_id": None, **settings})
    except PrefixError:  # T5, or generation-config options the search does not apply
        unwrap(wrapped)
        yield None
        return
    try:
        yield wrapped
    finally:
        unwrap(wrapped)


def _transformers_generate(model, collator, sources, max_rows, device, bar, settings) -> list[str]:
    """transformers' generate() on length-sorted batches (models without a prefix)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    size = max(1, max_rows // settings["num_beams"])
    texts: list[str] = [""] * len(sources)
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        batch = collator.generation_batch([sources[i] for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(**batch, **settings, do_sample=False)
        if not collator.encoder_decoder:
            out = out[:, batch["input_ids"].shape[1] :]
        for i, row in zip(idx, out.tolist(), strict=True):
            texts[i] = decode_until_eos(collator, row)
        bar.update(len(idx))
    return texts


def decode_until_eos(collator: Collator, ids: list[int]) -> str:
    """Cut at the first eos after any start token; one line of text."""
    if collator.encoder_decoder and ids and ids[0] == collator.decoder_start:
        ids = ids[1:]
    if collator.eos in ids:
        ids = ids[: ids.index(collator.eos)]
    text = collator.tok.decode(ids, skip_special_tokens=True)
    return " ".join(text.split())


def merge_outputs(shares: list[list[tuple[int, str]]], n: int) -> list[str]:
    """Put every process's (index, text) pairs back in dataset order; checks none is missing."""
    texts: list[str | None] = [None] * n
    for share in shares:
        for i, text in share:
            texts[i] = text
    missing = [i for i, t in enumerate(texts) if t is None]
    if missing:
        raise RuntimeError(f"generation lost {len(missing)} of {n} outputs")
    return [t for t in texts if t is not None]
