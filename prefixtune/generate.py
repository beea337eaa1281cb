"""Batched generation: exactly one output per input, returned in dataset order.

Inputs are sorted by length so each batch pads little, then put back in their original order;
with several processes each one takes every world_size-th input and rank 0 reassembles them.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from prefixtune.collate import Collator


@torch.no_grad()
def generate_outputs(
    model: torch.nn.Module,
    collator: Collator,
    sources: list[str],
    *,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    desc: str = "generate",
    show_progress: bool = True,
) -> list[tuple[int, str]]:
    """This process's share of the outputs as (index, text); merge shares with merge_outputs."""
    mine = list(range(rank, len(sources), world_size))
    mine.sort(key=lambda i: len(sources[i]), reverse=True)
    results: list[tuple[int, str]] = []
    model.eval()
    eos = collator.eos
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not show_progress, unit="batch"):
        batch = collator.generation_batch([sources[i] for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        kwargs: dict[str, Any] = dict(
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            length_penalty=length_penalty,
            do_sample=False,
            early_stopping=True,
            eos_token_id=eos,
            pad_token_id=collator.pad,
        )
        if collator.encoder_decoder:
            kwargs["decoder_start_token_id"] = collator.decoder_start
        out = model.generate(**batch, **kwargs)
        if not collator.encoder_decoder:
            out = out[:, batch["input_ids"].shape[1] :]
        for i, row in zip(idx, out.tolist(), strict=True):
            results.append((i, decode_until_eos(collator, row)))
    return results


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
