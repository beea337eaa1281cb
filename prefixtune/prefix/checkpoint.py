"""The tiny prefix checkpoint: the projected P as safetensors plus a small JSON config.

Loading never unpickles anything: safetensors holds raw tensors and the config is JSON. Every
way a prefix folder can be wrong (missing, not a folder, a file that is empty, not UTF-8, not
JSON, with missing, unknown or mistyped keys, tensors of the wrong names, dtype or shape) is a
one-line PrefixError that names the file and the key; nothing else escapes.

A prefix also records its base model: `base_model` ({"name", "id", "revision", "local"}, never a
machine's absolute path) and `base_fingerprint`, a hash of a fixed sample of the base weights.
Loading a prefix into a base whose fingerprint differs is refused unless the caller passes
allow_other_base=True. The layout is documented in docs/prefix_engine.md.

This module reads a PrefixCore (core.py) and never the reverse: PrefixModel (model.py) calls it,
passing its memoised base fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors.torch import load_file, save
from torch import nn

from .config import PrefixConfig, PrefixError, PrefixMode
from .core import EMBEDDING, PrefixCore
from .files import atomic_write, write_text

log = logging.getLogger(__name__)

FORMAT = "prefixtune-prefix/1"
WEIGHTS, CONFIG = "prefix.safetensors", "prefix_config.json"
# Top-level keys of prefix_config.json. base_model was a string (name_or_path) before it became
# a dict; base_fingerprint is new. Both stay optional so that older prefixes load.
REQUIRED_KEYS = ("format", "prefix_config", "model_type", "hidden_size", "streams")
OPTIONAL_KEYS = ("base_model", "base_fingerprint")
BASE_MODEL_KEYS = ("name", "id", "revision", "local")
# The prefix config keys that decide the tensors' names and shapes: never left to defaults.
REQUIRED_CONFIG_KEYS = ("length", "mode")
FLOAT_DTYPES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
}
FINGERPRINT_SCHEME = "v1"
_FINGERPRINT = re.compile(r"^([a-z0-9]+):([0-9a-f]{16,64})$")
_SLICE = 4096  # elements per sampled slice of a tensor (first, middle, last)
_SAMPLED_MATRICES = 5  # besides the input embeddings, evenly spread over the >= 2-D parameters


# ---------------------------------------------------------------------- the base model
def base_fingerprint(base: nn.Module) -> str | None:
    """A stable hash of a frozen base model's weights, as "v1:<32 hex digits>" (sha256).

    Hashed: every parameter's name and shape, and the first, middle and last 4096 values of the
    input embeddings and of 5 weight matrices spread evenly over the model, rounded to bfloat16
    and taken on the CPU. So it is the same for two loads of the same weights, on any device and
    in float32 or bfloat16 (a prefix trained on a float32 base may run on a bfloat16 copy), and
    differs for other weights of the same shapes; it costs a few milliseconds. None when the
    weights cannot be read (e.g. on the meta device)."""
    params = list(base.named_parameters())
    if not params:
        return None
    digest = hashlib.sha256(f"prefixtune-base-fingerprint/{FINGERPRINT_SCHEME}\n".encode())
    for name, p in params:
        digest.update(f"{name} {tuple(p.shape)}\n".encode())
    try:
        with torch.no_grad():
            for name, p in _sampled(base, params):
                digest.update(f"{name}\n".encode())
                digest.update(_sample_bytes(p))
    except (NotImplementedError, RuntimeError):  # meta tensors, unreadable storage
        return None
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()[:32]}"


def _sampled(
    base: nn.Module, params: list[tuple[str, nn.Parameter]]
) -> list[tuple[str, nn.Parameter]]:
    embeddings = None
    get = getattr(base, "get_input_embeddings", None)
    if callable(get):
        module = get()
        embeddings = getattr(module, "weight", None) if module is not None else None
    picked = [(n, p) for n, p in params if p is embeddings]
    matrices = [(n, p) for n, p in params if p.dim() >= 2 and p is not embeddings]
    if matrices:
        last = len(matrices) - 1
        spots = sorted(
            {round(i * last / (_SAMPLED_MATRICES - 1)) for i in range(_SAMPLED_MATRICES)}
        )
        picked += [matrices[i] for i in spots]
    return picked or params[:1]


def _sample_bytes(p: torch.Tensor) -> bytes:
    flat = p.detach()
    flat = flat.view(-1) if flat.is_contiguous() else flat.reshape(-1)
    n = flat.numel()
    if n > 3 * _SLICE:
        mid = (n - _SLICE) // 2
        flat = torch.cat([flat[:_SLICE], flat[mid : mid + _SLICE], flat[-_SLICE:]])
    values = flat.to(device="cpu", dtype=torch.float32).to(torch.bfloat16)
    return values.view(torch.int16).numpy().astype("<i2").tobytes()


def base_origin(base: nn.Module) -> dict:
    """The base model's name, hub id and revision as a prefix records them: from the
    `_prefixtune_origin` dict that prefixtune's loader sets, else from `config.name_or_path`;
    a local folder is recorded by its last path component (with local=true), never by its
    absolute path."""
    origin = getattr(base, "_prefixtune_origin", None)
    config = getattr(base, "config", None)
    revision = getattr(config, "_commit_hash", None)
    if isinstance(origin, Mapping):
        ident, local = _model_id(origin.get("id") or origin.get("name"))
        name = origin.get("name")
        revision = origin.get("revision") or revision
        local = bool(origin.get("local", False)) or local
    else:
        name = None
        ident, local = _model_id(getattr(config, "name_or_path", None))
    return {
        "name": str(name) if name else None,
        "id": ident,
        "revision": str(revision) if revision else None,
        "local": local,
    }


def _model_id(value: object) -> tuple[str | None, bool]:
    """(id, is a local folder) for a hub id or a path: a path is kept as its last component."""
    if not value:
        return None, False
    text = str(value)
    windows = PureWindowsPath(text)
    looks_local = (
        os.path.isabs(text)
        or bool(windows.drive)
        or text.startswith((".", "~"))
        or "\\" in text
        or text.count("/") > 1  # a hub id is "name" or "owner/name"
    )
    if not looks_local:
        return text, False
    last = windows.name if "\\" in text or windows.drive else PurePosixPath(text).name
    return (last or None), True


def _describe(base_model: dict) -> str:
    ident = base_model.get("id") or base_model.get("name")
    text = repr(ident) if ident else "an unnamed model"
    if base_model.get("revision"):
        text += f" at revision {base_model['revision']}"
    return text


# ---------------------------------------------------------------------- saving
def _signature(model: PrefixCore) -> dict:
    return {
        "model_type": model.base.config.model_type,
        "hidden_size": model.hidden_size,
        "streams": {kind: list(shape) for kind, shape in model.shapes.items()},
    }


def save_prefix(
    model: PrefixCore,
    folder: str | Path,
    dtype: torch.dtype | None = None,
    *,
    fingerprint: str | None,
) -> Path:
    """Write P (not P' or the MLP) and the JSON that describes it, `fingerprint` being the base's
    (base_fingerprint). float32 by default so a round trip is exact; pass dtype=torch.bfloat16
    to halve the size."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise PrefixError(f"a prefix is saved as {sorted(FLOAT_DTYPES.values())}, not {dtype}")
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
        "base_model": base_origin(model.base),
        "base_fingerprint": fingerprint,
        **_signature(model),
    }
    weights = save(tensors, metadata={"format": FORMAT})
    atomic_write(folder / WEIGHTS, lambda f: f.write(weights), mode="wb")
    write_text(folder / CONFIG, json.dumps(meta, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------- reading
@dataclass
class SavedPrefix:
    """What prefix_config.json says, checked: the config, the base model and the shapes."""

    config: PrefixConfig
    base_model: dict
    base_fingerprint: str | None
    model_type: str
    hidden_size: int
    streams: dict[str, list[int]]


def _folder(folder: object) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise PrefixError(f"a prefix folder is a path, got {type(folder).__name__}")
    path = Path(folder)
    if not path.exists():
        raise PrefixError(f"prefix folder {path} is missing (no such directory)")
    if not path.is_dir():
        raise PrefixError(f"{path} is a file, not a prefix folder (with {CONFIG} and {WEIGHTS})")
    return path


def _load_json(path: Path) -> object:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PrefixError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrefixError(
            f"{path} is corrupted: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    if not text.strip():
        raise PrefixError(f"{path} is corrupted: the file is empty")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise PrefixError(
            f"{path} is corrupted: not JSON ({e.msg}, line {e.lineno} column {e.colno})"
        ) from None
    except _DuplicateKey as e:
        raise PrefixError(f"{path} is corrupted: key {e.args[0]!r} appears twice") from None
    except RecursionError:
        raise PrefixError(f"{path} is corrupted: JSON nested too deeply") from None


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(meta: object, path: Path) -> SavedPrefix:
    """Every key of prefix_config.json, checked for presence and type; one line per mistake."""
    if not isinstance(meta, dict):
        raise PrefixError(
            f"{path} is not a prefix config: it holds a JSON {_json_type(meta)}, not an object"
        )
    if "format" not in meta:
        raise PrefixError(f"{path} is not a prefix config: key 'format' is missing")
    if meta["format"] != FORMAT:
        raise PrefixError(
            f"{path} is not a {FORMAT} prefix config: format is {_short(meta['format'])}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise PrefixError(f"{path} is corrupted: key {missing[0]!r} is missing")
    unknown = sorted(k for k in meta if k not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise PrefixError(
            f"{path}: unknown key {unknown[0]!r}; valid: {sorted(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )

    saved = meta["prefix_config"]
    if not isinstance(saved, dict):
        raise PrefixError(f"{path}: prefix_config must be an object, got {_short(saved)}")
    for key in REQUIRED_CONFIG_KEYS:
        if key not in saved:
            raise PrefixError(f"{path}: prefix_config is missing key {key!r}")
    try:
        config = PrefixConfig.from_dict(saved)
    except PrefixError as e:
        raise PrefixError(f"{path}: {e}") from None

    model_type = meta["model_type"]
    if not isinstance(model_type, str) or not model_type:
        raise PrefixError(
            f"{path}: model_type must be a non-empty string, got {_short(model_type)}"
        )
    hidden = meta["hidden_size"]
    if not _is_int(hidden) or hidden < 1:
        raise PrefixError(f"{path}: hidden_size must be a positive integer, got {_short(hidden)}")
    streams = meta["streams"]
    if not isinstance(streams, dict) or not streams:
        raise PrefixError(
            f"{path}: streams must be an object of stream: [layers, kv_heads, head_dim], "
            f"got {_short(streams)}"
        )
    for kind, shape in streams.items():
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(_is_int(n) and n >= 1 for n in shape)
        ):
            raise PrefixError(
                f"{path}: streams[{kind!r}] must be [layers, kv_heads, head_dim] (3 positive "
                f"integers), got {_short(shape)}"
            )
    return SavedPrefix(
        config=config,
        base_model=_check_base_model(meta.get("base_model"), path),
        base_fingerprint=_check_fingerprint(meta.get("base_fingerprint"), path),
        model_type=model_type,
        hidden_size=hidden,
        streams=streams,
    )


def _check_base_model(value: object, path: Path) -> dict:
    """base_model as a dict: the old string form (name_or_path) or the new object."""
    if value is None or isinstance(value, str):  # prefixes saved before base_model was a dict
        ident, local = _model_id(value)
        return {"name": None, "id": ident, "revision": None, "local": local}
    if not isinstance(value, dict):
        raise PrefixError(f"{path}: base_model must be an object, got {_short(value)}")
    unknown = sorted(k for k in value if k not in BASE_MODEL_KEYS)
    if unknown:
        raise PrefixError(
            f"{path}: unknown key base_model.{unknown[0]}; valid: {list(BASE_MODEL_KEYS)}"
        )
    for key in ("name", "id", "revision"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise PrefixError(
                f"{path}: base_model.{key} must be a string or null, got {_short(value[key])}"
            )
    if not isinstance(value.get("local", False), bool):
        raise PrefixError(
            f"{path}: base_model.local must be true or false, got {_short(value['local'])}"
        )
    return {k: value.get(k, False if k == "local" else None) for k in BASE_MODEL_KEYS}


def _check_fingerprint(value: object, path: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise PrefixError(
            f"{path}: base_fingerprint must look like '{FINGERPRINT_SCHEME}:<hex digits>', "
            f"got {_short(value)}"
        )
    return value


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def read_meta(folder: str | Path) -> SavedPrefix:
    """prefix_config.json of a prefix folder, with every key checked (see _check_meta)."""
    folder = _folder(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise PrefixError(f"{folder} is not a prefix checkpoint: {CONFIG} is missing")
    return _check_meta(_load_json(path), path)


def read_config(folder: str | Path) -> dict:
    """The saved PrefixConfig as a dict (checked; keys the file leaves out take defaults)."""
    return read_meta(folder).config.to_dict()


# ---------------------------------------------------------------------- loading
def check_base(
    folder: Path,
    saved: SavedPrefix,
    base: nn.Module,
    fingerprint: Callable[[], str | None],
    allow_other_base: bool = False,
) -> None:
    """Refuse a prefix trained on other base weights (unless allow_other_base, then warn).
    `fingerprint()` gives the base's fingerprint; it is called only when there is one to check."""
    if saved.base_fingerprint is None:  # saved before fingerprints existed
        return
    ours = fingerprint()
    if ours is None:
        log.warning("cannot fingerprint this base model; loading %s without checking it", folder)
        return
    scheme = saved.base_fingerprint.split(":", 1)[0]
    if scheme != FINGERPRINT_SCHEME:
        log.warning(
            "prefix in %s has a base fingerprint of another scheme (%s); not checked",
            folder,
            scheme,
        )
        return
    if saved.base_fingerprint == ours:
        return
    theirs, mine = _describe(saved.base_model), _describe(base_origin(base))
    what = (
        f"another copy of {theirs} with different weights"
        if theirs == mine
        else f"{mine}, whose weights differ"
    )
    message = (
        f"prefix in {folder} was trained on base model {theirs} (fingerprint "
        f"{saved.base_fingerprint}), but this base is {what} (fingerprint {ours})"
    )
    if not allow_other_base:
        raise PrefixError(f"{message}; pass allow_other_base=True to load it anyway")
    log.warning("%s; loading it anyway (allow_other_base=True)", message)


def load_prefix(
    folder: str | Path,
    model: PrefixCore,
    *,
    fingerprint: Callable[[], str | None],
    allow_other_base: bool = False,
) -> tuple[PrefixConfig, dict]:
    """Read a prefix and check that it fits `model` (whose base fingerprint `fingerprint()`
    gives, see check_base); every failure is a one-line PrefixError."""
    saved = read_meta(folder)
    folder = Path(folder)
    config = saved.config
    expected = _signature(model)
    found = {
        "model_type": saved.model_type,
        "hidden_size": saved.hidden_size,
        "streams": saved.streams,
    }
    if found != expected:
        raise PrefixError(
            f"prefix in {folder} was trained for {saved.model_type} with "
            f"{saved.streams} (layers, kv_heads, head_dim), hidden {saved.hidden_size}; "
            f"this model is {expected['model_type']} with {expected['streams']}, "
            f"hidden {expected['hidden_size']}"
        )
    try:
        config.check_model(model.is_encoder_decoder, saved.model_type)
    except PrefixError as e:
        raise PrefixError(f"prefix in {folder}: {e}") from None
    check_base(folder, saved, model.base, fingerprint, allow_other_base)
    path = folder / WEIGHTS
    if not path.is_file():
        raise PrefixError(f"{folder} is not a prefix checkpoint: {WEIGHTS} is missing")
    try:
        tensors = load_file(path)
    except Exception as e:  # whatever the parser raises on a bad file: one line
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise PrefixError(f"{path} is corrupted: {reason}") from None
    width = {EMBEDDING: model.hidden_size}
    width.update({kind: model.width(kind) for kind in model.shapes})
    wanted = [EMBEDDING] if config.mode == PrefixMode.embedding else list(model.kinds)
    if sorted(tensors) != sorted(wanted):
        raise PrefixError(f"{path} holds {sorted(tensors)}, expected {wanted}")
    for key, t in tensors.items():
        if t.dtype not in FLOAT_DTYPES:
            raise PrefixError(
                f"{path}: tensor {key!r} has dtype {str(t.dtype).removeprefix('torch.')}; a "
                f"prefix is floating point ({', '.join(FLOAT_DTYPES.values())})"
            )
        if tuple(t.shape) != (config.length, width[key]):
            raise PrefixError(
                f"{path}: {key} has shape {tuple(t.shape)}, expected {(config.length, width[key])}"
            )
        if not torch.isfinite(t).all():
            raise PrefixError(f"{path}: {key} holds NaN or inf values")
    return config, {k: t.float() for k, t in tensors.items()}
