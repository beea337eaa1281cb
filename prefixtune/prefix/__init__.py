"""The prefix engine: trainable prefixes for frozen transformers LMs, in training and generate().

from prefixtune.prefix import PrefixConfig, PrefixModel
model = PrefixModel(base, PrefixConfig(length=10), tokenizer=tok)
"""

from .attention import ATTN_IMPLEMENTATION
from .config import PrefixConfig, PrefixError, PrefixInit, PrefixMode
from .model import DEFAULT, PrefixModel

__all__ = [
    "ATTN_IMPLEMENTATION",
    "DEFAULT",
    "PrefixConfig",
    "PrefixError",
    "PrefixInit",
    "PrefixMode",
    "PrefixModel",
]
