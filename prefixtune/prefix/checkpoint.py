"""The tiny prefix checkpoint: the projected P as safetensors plus a small JSON config.

Loading never unpickles anything: safetensors holds raw tensors and the config is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..checkpoint import atomic_write, write_text
from .config import PrefixConfig, PrefixError

if TYPE_CHECKING:
    from .model import PrefixModel

FORMAT = "prefixtune-prefix/1"
WEIGHTS, CONFIG = "prefix.safetensors", "prefix_config.json"


def _signature(model: PrefixModel) -> dict:
    return {
        "model_type": model.base.config.model_type,
        "hidden_size": model.hidden_size,
        "streams": {kind: list(shape) for kind, shape in model.shapes.items()},
    }


def save_prefix(model: PrefixModel, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write P (not P' or the MLP). float32 by default so a round trip is exact; pass
    dtype=torch.bfloat16 to halve the size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {
            k: t.detach().to(dtype or t.dtype).contiguous().cpu()
            for k, t in model.prefix_tensors().items()
        }
    meta = {
        "format": FORMAT,
        "prefix_config": model.config.to_dict(),
        "base_model": getattr(model.base.config, "name_or_path", "") or "",
        **_signature(model),
    }
    weights = save(tensors, metadata={"format": FORMAT})
    atomic_write(folder / WEIGHTS, lambda f: f.write(weights), mode="wb")
    write_text(folder / CONFIG, json.dumps(meta, indent=2) + "\n")
    return folder


def _read_meta(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise PrefixError(f"{folder} is not a prefix checkpoint: {CONFIG} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrefixError(f"{path} is corrupted: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PrefixError(f"{path} is not a {FORMAT} prefix config")
    return meta


def read_config(folder: str | Path) -> dict:
    """The saved PrefixConfig as a dict."""
    return dict(_read_meta(Path(folder))["prefix_config"])


def load_prefix(folder: str | Path, model: PrefixModel) -> tuple[PrefixConfig, dict]:
    """Read a prefix and check that it fits `model`; every failure is a one-line PrefixError."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        config = PrefixConfig.from_dict(meta["prefix_config"])
    except (KeyError, TypeError) as e:
        raise PrefixError(f"{folder / CONFIG} is corrupted: {e}") from None
    expected = _signature(model)
    saved = {k: meta.get(k) for k in expected}
    if saved != expected:
        raise PrefixError(
            f"prefix in {folder} was trained for {meta.get('model_type')} with "
            f"{saved['streams']} (layers, kv_heads, head_dim), hidden {saved['hidden_size']}; "
            f"this model is {expected['model_type']} with {expected['streams']}, "
            f"hidden {expected['hidden_size']}"
        )
    path = folder / WEIGHTS
    if not path.is_file():
        raise PrefixError(f"{folder} is not a prefix checkpoint: {WEIGHTS} is missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise PrefixError(f"{path} is corrupted: {str(e).splitlines()[0]}") from None
    width = {"embedding": model.hidden_size}
    width.update({kind: model.width(kind) for kind in model.shapes})
    wanted = ["embedding"] if config.mode == "embedding" else list(model.kinds)
    if sorted(tensors) != sorted(wanted):
        raise PrefixError(f"{path} holds {sorted(tensors)}, expected {wanted}")
    for key, t in tensors.items():
        if tuple(t.shape) != (config.length, width[key]):
            raise PrefixError(
                f"{path}: {key} has shape {tuple(t.shape)}, expected {(config.length, width[key])}"
            )
        if not torch.isfinite(t).all():
            raise PrefixError(f"{path}: {key} holds NaN or inf values")
    return config, {k: t.float() for k, t in tensors.items()}
