"""Length limits of the paper (e.g. XSum articles truncated to 512 BPE tokens)."""

from __future__ import annotations

from .base import DataError


def truncate_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens of ``tokenizer`` (no special tokens).

    Text that already fits is returned unchanged. With a fast tokenizer the cut is made on
    the original string (character offsets), so nothing else in the kept part changes;
    otherwise the kept token ids are decoded.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise DataError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    if max_tokens == 0:
        return ""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= max_tokens:
            return text
        return text[: offsets[max_tokens - 1][1]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens])
