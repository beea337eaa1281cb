"""The prefix engine: trainable prefixes for frozen transformers LMs, in training and generate().

from prefixtune.prefix import PrefixConfig, PrefixModel
model = PrefixModel(base, PrefixConfig(length=10), tokenizer=tok)

A standalone library: it imports nothing of prefixtune outside this package. Its layers, each
importing only the ones above it (docs/prefix_engine.md has the module table):

  config         PrefixConfig, PrefixMode, PrefixInit, PrefixError (no torch)
  architecture   the attention modules and layer stacks of a transformers model
  attention      the attention function that puts P in front of the keys/values
  cache          generate()'s KV cache with each row's P stored once
  encoder        P and its reparameterisation P = MLP(P')
  wiring         attach / detach a PrefixState to a base, capture its keys/values
  core           PrefixCore: the nn.Module (forward, generate, mixed batches), no I/O
  files          atomic file writes
  checkpoint     save / load / check a prefix folder, the base fingerprint (reads a PrefixCore)
  peft_export    a PEFT adapter folder (reads a PrefixCore)
  model          PrefixModel(PrefixCore): the public model, with save / load / export methods
"""

from .attention import ATTN_IMPLEMENTATION
from .config import PrefixConfig, PrefixError, PrefixInit, PrefixMode
from .model import DEFAULT, IGNORE_INDEX, PrefixModel

__all__ = [
    "ATTN_IMPLEMENTATION",
    "DEFAULT",
    "IGNORE_INDEX",
    "PrefixConfig",
    "PrefixError",
    "PrefixInit",
    "PrefixMode",
    "PrefixModel",
]
