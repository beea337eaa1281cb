"""Tokenisation and batching for training (x -> y with loss on y only) and for generation.

Decoder-only: the training text is ``x <eos> y <eos>`` (GPT-2: ``x <|endoftext|> y
<|endoftext|>``, the paper's format) with labels only on ``y <eos>``; the generation prompt is
``x <eos>``, left-padded. Encoder-decoder: x (+ eos) goes to the encoder, ``y <eos>`` to the
decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from prefixtune.prefix import IGNORE_INDEX


@dataclass
class Encoded:
    """One (x, y) pair as token ids: source ends with eos, target ends with eos."""

    source: list[int]
    target: list[int]


class Collator:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        encoder_decoder: bool,
        max_source_tokens: int,
        max_target_tokens: int,
        decoder_start_token_id: int | None = None,
    ) -> None:
        self.tok = tokenizer
        self.encoder_decoder = encoder_decoder
        self.max_source = max_source_tokens
        self.max_target = max_target_tokens
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.decoder_start = (
            decoder_start_token_id if decoder_start_token_id is not None else self.eos
        )

    def _ids(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if ids and self.tok.bos_token_id is not None and ids[0] == self.tok.bos_token_id:
            ids = ids[1:]
        return ids

    def encode_source(self, source: str) -> list[int]:
        """x cut to max_source_tokens - 1, then eos (XSum: 512 tokens, as in the paper)."""
        return self._ids(source)[: self.max_source - 1] + [self.eos]

    def encode(self, source: str, target: str) -> Encoded:
        target_ids = self._ids(" " + target.strip())[: self.max_target - 1] + [self.eos]
        return Encoded(self.encode_source(source), target_ids)

    def train_batch(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        """Right-padded batch with labels (an infix's place follows from the labels: see
        PrefixModel.forward)."""
        if self.encoder_decoder:
            input_ids, mask = self._pad([it.source for it in items], left=False)
            labels, _ = self._pad([it.target for it in items], left=False, value=IGNORE_INDEX)
            dec_in = [[self.decoder_start] + it.target[:-1] for it in items]
            decoder_input_ids, decoder_mask = self._pad(dec_in, left=False)
            return {
                "input_ids": input_ids,
                "attention_mask": mask,
                "decoder_input_ids": decoder_input_ids,
                "decoder_attention_mask": decoder_mask,
                "labels": labels,
            }
        seqs = [it.source + it.target for it in items]
        input_ids, mask = self._pad(seqs, left=False)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, it in enumerate(items):
            start = len(it.source)
            labels[row, start : start + len(it.target)] = torch.tensor(it.target)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def generation_batch(self, sources: list[str]) -> dict[str, torch.Tensor]:
        """Prompts ``x <eos>``: left-padded for decoder-only, right-padded for the encoder."""
        ids = [self.encode_source(s) for s in sources]
        input_ids, mask = self._pad(ids, left=not self.encoder_decoder)
        return {"input_ids": input_ids, "attention_mask": mask}

    def target_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """How many tokens the model's mean loss averages over (to weight dev batches)."""
        labels = batch["labels"]
        if self.encoder_decoder:
            return int((labels != IGNORE_INDEX).sum())
        return int((labels[:, 1:] != IGNORE_INDEX).sum())

    def _pad(
        self, seqs: list[list[int]], *, left: bool, value: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.pad if value is None else value
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), value, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            if left:
                ids[row, width - len(s) :] = torch.tensor(s)
                mask[row, width - len(s) :] = 1
            else:
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
        return ids, mask
