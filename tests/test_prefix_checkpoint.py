"""Prefix checkpoints: every bad folder is one PrefixError line, and a prefix knows its base."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_bart, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
)

from prefixtune.prefix import PrefixConfig, PrefixError, PrefixModel
from prefixtune.prefix import checkpoint as ckpt

LENGTH = 3
GPT2_STREAMS = {"self": [2, 4, 8]}  # layers, kv_heads, head_dim of tiny_gpt2


def small(length: int = LENGTH, **kw) -> PrefixConfig:
    return PrefixConfig(length=length, reparam_dim=8, reparam_hidden=8, **kw)


def direct(length: int = LENGTH, **kw) -> PrefixConfig:
    return PrefixConfig(length=length, reparam=False, **kw)


def trained(base, config: PrefixConfig | None = None, seed: int = 1) -> PrefixModel:
    model = PrefixModel(base, config or small())
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.copy_(torch.randn_like(p))
    return model


@pytest.fixture
def folder(tmp_path) -> Path:
    """A good prefix folder for tiny_gpt2(seed=0)."""
    return trained(tiny_gpt2()).save_prefix(tmp_path / "p")


def read_json(folder: Path) -> dict:
    return json.loads((folder / ckpt.CONFIG).read_text())


def write_json(folder: Path, value: object) -> None:
    (folder / ckpt.CONFIG).write_text(json.dumps(value))


def edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = read_json(folder)
        change(meta)
        write_json(folder, meta)

    return apply


def setting(key: str, value: object, where: str | None = None) -> Callable[[Path], None]:
    return edit(lambda m: (m[where] if where else m).__setitem__(key, value))


def deleting(key: str, where: str | None = None) -> Callable[[Path], None]:
    return edit(lambda m: (m[where] if where else m).pop(key))


def weights_of(dtype: torch.dtype, name: str = "self") -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        p = load_file(folder / ckpt.WEIGHTS)["self"]
        save_file({name: p.to(dtype)}, folder / ckpt.WEIGHTS)

    return apply


def write_bytes(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return apply


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


# case: (how to break the folder, words the one-line message must hold, a JSON-only case)
BAD = {
    "no prefix_config": (deleting("prefix_config"), ["prefix_config.json", "'prefix_config'"]),
    "no streams": (deleting("streams"), ["prefix_config.json", "'streams'"]),
    "no hidden_size": (deleting("hidden_size"), ["prefix_config.json", "'hidden_size'"]),
    "no model_type": (deleting("model_type"), ["'model_type'"]),
    "no format": (deleting("format"), ["'format'"]),
    "other format": (setting("format", "prefixtune-prefix/9"), ["format", "prefix/9"]),
    "no length": (deleting("length", "prefix_config"), ["'length'"]),
    "a list": (lambda f: write_json(f, [1, 2]), ["prefix_config.json", "array"]),
    "a string": (lambda f: write_json(f, "prefix"), ["prefix_config.json", "string"]),
    "null": (lambda f: write_json(f, None), ["prefix_config.json", "null"]),
    "length abc": (setting("length", "abc", "prefix_config"), ["prefix.length", "'abc'"]),
    "length 2.5": (setting("length", 2.5, "prefix_config"), ["prefix.length", "2.5"]),
    "length true": (setting("length", True, "prefix_config"), ["prefix.length", "True"]),
    "length 0": (setting("length", 0, "prefix_config"), ["prefix.length", "0"]),
    "reparam yes": (setting("reparam", "yes", "prefix_config"), ["prefix.reparam", "'yes'"]),
    "dropout string": (setting("dropout", "0.1", "prefix_config"), ["prefix.dropout", "'0.1'"]),
    "mode number": (setting("mode", 3, "prefix_config"), ["prefix.mode", "3"]),
    "mode unknown": (setting("mode", "suffix", "prefix_config"), ["prefix.mode", "'suffix'"]),
    "init_text list": (setting("init_text", ["a"], "prefix_config"), ["prefix.init_text"]),
    "prefix_config list": (setting("prefix_config", [3]), ["prefix_config must be an object"]),
    "unknown config key": (setting("bogus", 1, "prefix_config"), ["bogus"]),
    "unknown top key": (setting("bogus", 1), ["bogus"]),
    "streams a list": (setting("streams", [[2, 4, 8]]), ["streams", "[[2, 4, 8]]"]),
    "streams empty": (setting("streams", {}), ["streams"]),
    "streams too short": (setting("streams", {"self": [2, 4]}), ["streams['self']", "[2, 4]"]),
    "streams a string": (setting("streams", {"self": [2, 4, "8"]}), ["streams['self']", '"8"']),
    "streams a bool": (setting("streams", {"self": [2, 4, True]}), ["streams['self']", "true"]),
    "hidden_size string": (setting("hidden_size", "32"), ["hidden_size", '"32"']),
    "hidden_size float": (setting("hidden_size", 32.0), ["hidden_size", "32.0"]),
    "model_type number": (setting("model_type", 2), ["model_type", "2"]),
    "base_model number": (setting("base_model", 5), ["base_model", "5"]),
    "base_model bad key": (setting("base_model", {"path": "/x"}), ["base_model.path"]),
    "base_model id number": (setting("base_model", {"id": 5}), ["base_model.id", "5"]),
    "fingerprint garbage": (setting("base_fingerprint", "zz"), ["base_fingerprint", '"zz"']),
    "fingerprint number": (setting("base_fingerprint", 7), ["base_fingerprint", "7"]),
    "invalid UTF-8": (write_bytes(ckpt.CONFIG, b'{"format": "\xff\xfe"}'), ["UTF-8", "0xff"]),
    "empty file": (write_bytes(ckpt.CONFIG, b""), ["prefix_config.json", "empty"]),
    "blank file": (write_bytes(ckpt.CONFIG, b" \n "), ["prefix_config.json", "empty"]),
    "not JSON": (write_bytes(ckpt.CONFIG, b"{not json"), ["prefix_config.json", "not JSON"]),
    "duplicate key": (
        write_bytes(ckpt.CONFIG, lambda b: b.replace(b'"format"', b'"streams": 1, "format"', 1)),
        ["'streams'", "twice"],
    ),
    "config missing": (remove(ckpt.CONFIG), ["prefix_config.json", "is missing"]),
    "config a folder": (
        lambda f: (remove(ckpt.CONFIG)(f), (f / ckpt.CONFIG).mkdir()),
        ["prefix_config.json", "is missing"],
    ),
}
# found when a prefix is loaded into a model (read_config reads only the JSON)
BAD_AT_LOAD = {
    "streams of another model": (setting("streams", {"self": [3, 4, 8]}), ["was trained for"]),
    "hidden of another model": (setting("hidden_size", 48), ["was trained for", "hidden 48"]),
    "weights missing": (remove(ckpt.WEIGHTS), ["prefix.safetensors", "is missing"]),
    "weights truncated": (
        write_bytes(ckpt.WEIGHTS, lambda b: b[: len(b) // 2]),
        ["prefix.safetensors", "corrupted"],
    ),
    "weights random": (
        write_bytes(ckpt.WEIGHTS, np.random.default_rng(0).bytes(600)),
        ["prefix.safetensors", "corrupted"],
    ),
    "weights empty": (write_bytes(ckpt.WEIGHTS, b""), ["prefix.safetensors", "corrupted"]),
    "weights int64": (weights_of(torch.int64), ["prefix.safetensors", "'self'", "int64"]),
    "weights int32": (weights_of(torch.int32), ["'self'", "int32"]),
    "weights uint8": (weights_of(torch.uint8), ["'self'", "uint8"]),
    "weights bool": (weights_of(torch.bool), ["'self'", "bool"]),
    "weights complex": (weights_of(torch.complex64), ["'self'", "complex64"]),
    "weights other name": (weights_of(torch.float32, "cross"), ["holds ['cross']"]),
    "weights NaN": (
        lambda f: save_file({"self": torch.full((LENGTH, 128), float("nan"))}, f / ckpt.WEIGHTS),
        ["self", "NaN"],
    ),
    "weights other shape": (
        lambda f: save_file({"self": torch.zeros(LENGTH + 1, 128)}, f / ckpt.WEIGHTS),
        ["self", "shape (4, 128)"],
    ),
}
PATHS = {
    "no such folder": (lambda f: f / "nowhere", ["nowhere", "no such directory"]),
    "a file": (lambda f: f / ckpt.WEIGHTS, ["prefix.safetensors", "is a file"]),
}


def _from_prefix(folder):
    PrefixModel.from_prefix(tiny_gpt2(), folder)


def _add_prefix(folder):
    PrefixModel(tiny_gpt2(), small(2)).add_prefix("other", folder)


def _load_prefix(folder):
    PrefixModel(tiny_gpt2(), direct()).load_prefix(folder)


def _read_config(folder):
    ckpt.read_config(folder)


LOADERS = {"from_prefix": _from_prefix, "add_prefix": _add_prefix, "load_prefix": _load_prefix}
READERS = {**LOADERS, "read_config": _read_config}


def _one_line_error(call, folder, words):
    with pytest.raises(PrefixError) as e:
        call(folder)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


@pytest.mark.parametrize("entry", READERS)
@pytest.mark.parametrize("case", BAD)
def test_bad_prefix_config_is_one_line(folder, case, entry):
    breaks, words = BAD[case]
    breaks(folder)
    _one_line_error(READERS[entry], folder, words)


@pytest.mark.parametrize("entry", LOADERS)
@pytest.mark.parametrize("case", BAD_AT_LOAD)
def test_bad_prefix_weights_are_one_line(folder, case, entry):
    breaks, words = BAD_AT_LOAD[case]
    breaks(folder)
    _one_line_error(LOADERS[entry], folder, words)


@pytest.mark.parametrize("entry", READERS)
@pytest.mark.parametrize("case", PATHS)
def test_bad_prefix_path_is_one_line(folder, case, entry):
    where, words = PATHS[case]
    _one_line_error(READERS[entry], where(folder), words)


def test_failed_from_prefix_leaves_the_base_free(folder):
    base = tiny_gpt2()
    (folder / ckpt.WEIGHTS).write_bytes(b"junk")
    with pytest.raises(PrefixError):
        PrefixModel.from_prefix(base, folder)
    PrefixModel(base, small())  # not "already wrapped"


def test_load_prefix_refuses_another_mode_or_an_encoder_decoder(tmp_path):
    embedding = trained(tiny_gpt2(), direct(mode="embedding")).save_prefix(tmp_path / "e")
    with pytest.raises(PrefixError, match="same length and mode"):
        PrefixModel(tiny_gpt2(), direct()).load_prefix(embedding)
    bart = trained(tiny_bart()).save_prefix(tmp_path / "b")
    meta = read_json(bart)
    meta["prefix_config"]["mode"] = "embedding"
    write_json(bart, meta)
    save_file({"embedding": torch.zeros(LENGTH, 32)}, bart / ckpt.WEIGHTS)
    with pytest.raises(PrefixError, match="encoder-decoder"):
        PrefixModel(tiny_bart(), small()).add_prefix("e", bart)


# ---------------------------------------------------------------------- types of PrefixConfig
@pytest.mark.parametrize(
    "key, value",
    [
        ("length", "abc"),
        ("length", 2.5),
        ("length", True),
        ("reparam_dim", "16"),
        ("reparam", "yes"),
        ("reparam", 1),
        ("dropout", "0.1"),
        ("dropout", False),
        ("mode", 3),
        ("init_text", None),
    ],
)
def test_prefix_config_checks_types(key, value):
    with pytest.raises(PrefixError) as e:
        PrefixConfig(**{key: value})
    assert f"prefix.{key}" in str(e.value) and repr(value) in str(e.value)
    assert "\n" not in str(e.value)
    config = PrefixConfig()
    setattr(config, key, value)  # changed after construction: validate() still catches it
    with pytest.raises(PrefixError, match=f"prefix.{key}"):
        config.validate()


def test_prefix_config_normalises_numbers():
    config = PrefixConfig(length=np.int64(4), dropout=0, reparam_dim=np.int32(8))
    assert type(config.length) is int and type(config.reparam_dim) is int
    assert type(config.dropout) is float
    assert json.dumps(config.to_dict())  # plain JSON
    with pytest.raises(PrefixError, match="must be a mapping, got list"):
        PrefixConfig.from_dict([("length", 3)])


def test_save_prefix_refuses_a_non_float_dtype(tmp_path):
    with pytest.raises(PrefixError, match="not torch.int64"):
        trained(tiny_gpt2()).save_prefix(tmp_path / "p", dtype=torch.int64)


# ---------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_floating_dtypes_load(tmp_path, dtype):
    model = trained(tiny_gpt2())
    if dtype is torch.bfloat16:  # the documented way
        folder = model.save_prefix(tmp_path / "p", dtype=dtype)
    else:
        folder = model.save_prefix(tmp_path / "p")
        weights_of(dtype)(folder)
    assert load_file(folder / ckpt.WEIGHTS)["self"].dtype == dtype
    loaded = PrefixModel.from_prefix(tiny_gpt2(), folder)
    expected = model.prefix_tensors()["self"].detach().to(dtype).float()
    assert torch.equal(loaded.prefix_tensors()["self"].detach(), expected)
    other = PrefixModel(tiny_gpt2(), small(2))
    other.add_prefix("p", folder)
    assert other.prefix_tensors("p")["self"].dtype == torch.float32


# ---------------------------------------------------------------------- the base fingerprint
@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_bart])
def test_fingerprint_identifies_the_base_weights(build):
    first = build(seed=0)
    again = build(seed=5)
    again.load_state_dict(first.state_dict())
    other = build(seed=1)
    fp = ckpt.base_fingerprint(first)
    assert re.fullmatch(r"v1:[0-9a-f]{32}", fp)
    assert ckpt.base_fingerprint(again) == fp
    assert ckpt.base_fingerprint(other) != fp
    assert ckpt.base_fingerprint(first.to(torch.bfloat16)) == fp  # same weights, half precision
    assert ckpt.base_fingerprint(first.float().train()) == fp


def test_fingerprint_ignores_the_prefix_and_is_memoised(monkeypatch):
    a = trained(tiny_gpt2(), seed=1)
    b = trained(tiny_gpt2(), small(5), seed=2)
    assert a.base_fingerprint == b.base_fingerprint == ckpt.base_fingerprint(tiny_gpt2())
    calls = []
    real = ckpt.base_fingerprint
    monkeypatch.setattr(ckpt, "base_fingerprint", lambda base: calls.append(1) or real(base))
    model = trained(tiny_gpt2())
    for _ in range(3):
        assert model.base_fingerprint == a.base_fingerprint
    assert len(calls) == 1


def test_fingerprint_sees_names_and_shapes():
    base = tiny_gpt2()
    fp = ckpt.base_fingerprint(base)
    with torch.no_grad():  # a value outside the sampled slices changes nothing ...
        base.transformer.h[0].ln_1.weight[3] += 1.0
    assert ckpt.base_fingerprint(base) == fp
    bigger = GPT2LMHeadModel(GPT2Config.from_dict({**base.config.to_dict(), "n_layer": 3}))
    bigger.load_state_dict(base.state_dict(), strict=False)  # ... another layer count does
    assert ckpt.base_fingerprint(bigger) != fp
    assert ckpt.base_fingerprint(torch.nn.Module()) is None


def test_prefix_for_another_base_is_refused_unless_allowed(folder, caplog):
    base = tiny_gpt2(seed=1)  # the same shapes, other weights
    base._prefixtune_origin = {"name": "gpt2-b", "id": "org/base-b", "revision": None}
    meta = read_json(folder)
    meta["base_model"] = {"name": "gpt2-a", "id": "org/base-a", "revision": "abc", "local": False}
    write_json(folder, meta)

    def refused(call) -> str:
        with pytest.raises(PrefixError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message
        assert "'org/base-a' at revision abc" in message and "'org/base-b'" in message
        assert "allow_other_base=True" in message
        return message

    for config, method in ((small(2), "add_prefix"), (direct(), "load_prefix")):
        model = PrefixModel(base, config)
        args = ("p", folder) if method == "add_prefix" else (folder,)
        refused(lambda: getattr(model, method)(*args))  # noqa: B023
        assert "p" not in model.stored
        model.unwrap()
    refused(lambda: PrefixModel.from_prefix(base, folder))
    PrefixModel(base, small()).unwrap()  # the failed from_prefix left the base free
    caplog.set_level(logging.WARNING, logger="prefixtune.prefix.checkpoint")
    model = PrefixModel(base, small(2))
    model.add_prefix("p", folder, allow_other_base=True)
    assert "org/base-a" in caplog.text and "loading it anyway" in caplog.text
    model.unwrap()
    caplog.clear()
    loaded = PrefixModel.from_prefix(base, folder, allow_other_base=True)
    assert "loading it anyway" in caplog.text
    expected = load_file(folder / ckpt.WEIGHTS)["self"]
    assert torch.equal(loaded.prefix_tensors()["self"].detach(), expected)


def test_same_weights_under_another_name_load_quietly(folder, caplog):
    base = tiny_gpt2()
    base._prefixtune_origin = {"name": "renamed", "id": "someone/else", "revision": "r2"}
    caplog.set_level(logging.WARNING)
    model = PrefixModel(base, small(2))
    model.add_prefix("p", folder)
    assert "p" in model.stored
    assert not [r for r in caplog.records if r.name.startswith("prefixtune")]


def test_prefix_saved_before_fingerprints_loads(tmp_path):
    """The format before base fingerprints: base_model a string (here a machine's cache path),
    no base_fingerprint key. It loads into any base of the right shape, without a check."""
    folder = tmp_path / "old"
    folder.mkdir()
    config = {
        "length": LENGTH,
        "mode": "prefix",
        "reparam": True,
        "reparam_dim": 512,
        "reparam_hidden": 512,
        "dropout": 0.0,
        "init": "random",
        "init_text": "table-to-text:",
    }
    meta = {
        "format": "prefixtune-prefix/1",
        "prefix_config": config,
        "base_model": "/home/someone/.cache/prefixtune/gpt2-tiny",
        "model_type": "gpt2",
        "hidden_size": 32,
        "streams": GPT2_STREAMS,
    }
    write_json(folder, meta)
    torch.manual_seed(3)
    p = torch.randn(LENGTH, 128)
    save_file({"self": p}, folder / ckpt.WEIGHTS, metadata={"format": "prefixtune-prefix/1"})
    assert ckpt.read_config(folder) == config
    saved = ckpt.read_meta(folder)
    assert saved.base_model["id"] == "gpt2-tiny" and saved.base_fingerprint is None
    for seed in (0, 1):
        loaded = PrefixModel.from_prefix(tiny_gpt2(seed=seed), folder)
        assert torch.equal(loaded.prefix_tensors()["self"].detach(), p)
        model = PrefixModel(tiny_gpt2(seed=seed), small(2))
        model.add_prefix("old", folder)
        assert torch.equal(model.prefix_tensors("old")["self"], p)


# ---------------------------------------------------------------------- what is written
def test_saved_json_layout(folder):
    meta = read_json(folder)
    assert sorted(meta) == sorted(ckpt.REQUIRED_KEYS + ckpt.OPTIONAL_KEYS)
    assert meta["format"] == "prefixtune-prefix/1"
    assert meta["base_fingerprint"] == ckpt.base_fingerprint(tiny_gpt2())
    assert sorted(meta["base_model"]) == ["id", "local", "name", "revision"]
    assert meta["streams"] == GPT2_STREAMS and meta["hidden_size"] == 32


def test_base_model_from_the_loaders_origin(tmp_path):
    base = tiny_llama()
    base.config.name_or_path = str(tmp_path / "cache" / "smollm2-135m")  # what it would hold
    base._prefixtune_origin = {
        "name": "smollm2-135m",
        "id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": "12fd25f",
    }
    folder = trained(base).save_prefix(tmp_path / "p")
    text = (folder / ckpt.CONFIG).read_text()
    assert str(tmp_path) not in text
    assert read_json(folder)["base_model"] == {
        "name": "smollm2-135m",
        "id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": "12fd25f",
        "local": False,
    }


@pytest.mark.parametrize("with_origin", [False, True])
def test_base_model_never_records_an_absolute_path(tmp_path, with_origin):
    base = tiny_gpt2()
    local = tmp_path / "models" / "gpt2-tiny"
    base.config.name_or_path = str(local)
    base.config._commit_hash = "0123abc"
    if with_origin:  # an origin whose id is itself a path: still only its last component
        base._prefixtune_origin = {"name": "gpt2-tiny", "id": str(local), "revision": None}
    folder = trained(base).save_prefix(tmp_path / "p")
    assert str(tmp_path) not in (folder / ckpt.CONFIG).read_text()
    saved = read_json(folder)["base_model"]
    assert saved["id"] == "gpt2-tiny" and saved["local"] is True
    assert saved["revision"] == "0123abc"
    assert saved["name"] == ("gpt2-tiny" if with_origin else None)


@pytest.mark.parametrize(
    "name_or_path, expected",
    [
        ("openai-community/gpt2", ("openai-community/gpt2", False)),
        ("gpt2", ("gpt2", False)),
        ("/abs/cache/SmolLM2-135M/", ("SmolLM2-135M", True)),
        ("~/models/bart", ("bart", True)),
        ("./runs/model", ("model", True)),
        ("runs/e2e/model", ("model", True)),
        ("C:\\Users\\me\\model", ("model", True)),
        ("", (None, False)),
        (None, (None, False)),
    ],
)
def test_model_id_of_a_name_or_path(name_or_path, expected):
    assert ckpt._model_id(name_or_path) == expected


def test_peft_export_still_works(tmp_path):
    model = trained(tiny_gpt2())
    model.export_peft(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
