"""PrefixModel: the engine's model (core.py) with its checkpoints (checkpoint.py) and PEFT
export (peft_export.py). This module sits on top: it imports those, none of them imports it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint, peft_export
from .config import PrefixConfig, PrefixError
from .core import DEFAULT, EMBEDDING, IGNORE_INDEX, PrefixCore, StoredPrefix, parameter_summary

__all__ = [
    "DEFAULT",
    "EMBEDDING",
    "IGNORE_INDEX",
    "PrefixModel",
    "StoredPrefix",
    "parameter_summary",
]


class PrefixModel(PrefixCore):
    """Wraps a frozen causal or encoder-decoder LM; only the prefix is trained.

    Several prefixes can live in one model (`add_prefix`); `forward` and `generate` take
    `prefix=` as one name for the whole batch or one name per row, so rows with different
    prefixes (even of different lengths or modes) share one forward pass and one generate call.
    """

    _fingerprint: tuple[str | None] | None = None  # see base_fingerprint

    @property
    def base_fingerprint(self) -> str | None:
        """A hash of a fixed sample of the frozen base's weights (not the prefix's), computed
        once per model; a saved prefix records it, and loading checks it (checkpoint.py)."""
        if self._fingerprint is None:
            self._fingerprint = (checkpoint.base_fingerprint(self.base),)
        return self._fingerprint[0]

    def save_prefix(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write P (not P' or the MLP) to `folder`; see checkpoint.save_prefix."""
        return checkpoint.save_prefix(self, folder, dtype=dtype, fingerprint=self.base_fingerprint)

    def _read(self, folder: str | Path, allow_other_base: bool) -> tuple[PrefixConfig, dict]:
        return checkpoint.load_prefix(
            folder,
            self,
            fingerprint=lambda: self.base_fingerprint,
            allow_other_base=allow_other_base,
        )

    def add_prefix(self, name: str, folder: str | Path, *, allow_other_base: bool = False) -> None:
        """Load a saved prefix next to the others, frozen, for mixed-prefix batches.

        A prefix trained on other base weights (its saved fingerprint differs) is refused;
        allow_other_base=True loads it anyway, with a warning."""
        if name in self.prefix_names:
            raise PrefixError(f"a prefix named {name!r} is already loaded")
        config, tensors = self._read(folder, allow_other_base)
        self.stored[name] = StoredPrefix(config, {k: t.to(self.device) for k, t in tensors.items()})

    @classmethod
    def from_prefix(
        cls, base: nn.Module, folder: str | Path, tokenizer=None, *, allow_other_base: bool = False
    ) -> PrefixModel:
        """A model whose own prefix is the saved P (held directly: the MLP is not kept).

        On any failure the base is left unwrapped, free for another PrefixModel."""
        saved = checkpoint.read_config(folder)
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
        config, tensors = self._read(folder, allow_other_base)
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
        """A PEFT prefix-tuning adapter folder with the same logits; see peft_export.py."""
        return peft_export.export_peft(self, folder)
