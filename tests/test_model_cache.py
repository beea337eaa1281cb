"""The converted-model cache (prefixtune.models.gguf_to_safetensors) verifies and heals itself.

Most tests replace the 25 s GGUF conversion with a tiny random Llama saved by save_pretrained,
so each takes a second or so. One test loads the real SmolLM2 through load_model from a copy of
the already converted folder (converted at most once per session, into the default cache).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, compose_cfg
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

from prefixtune import models as models_mod
from prefixtune.config import model_preset
from prefixtune.errors import UsageError
from prefixtune.models import MANIFEST, cache_root, gguf_to_safetensors, load_model

SMOLLM2 = model_preset("smollm2-135m")
PKG, GGUF, NAME = SMOLLM2.gguf_package, SMOLLM2.gguf_file, SMOLLM2.name


def _tiny_convert(pkg_dir: Path, gguf_file: str, out: Path) -> None:
    config = LlamaConfig(
        vocab_size=50257,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    GPT2Tokenizer.from_pretrained(DATA_ROOT / "tokenizers" / "gpt2").save_pretrained(out)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def fake(monkeypatch, tmp_path, umask_022):
    """A private cache under tmp_path and the tiny conversion; ``fake.calls`` counts them."""
    monkeypatch.setenv("PREFIXTUNE_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def convert(pkg_dir, gguf_file, out):
        calls.append(Path(out))
        _tiny_convert(pkg_dir, gguf_file, out)

    monkeypatch.setattr(models_mod, "_convert_gguf", convert)
    return calls


def _convert() -> Path:
    return gguf_to_safetensors(PKG, GGUF, NAME)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_converts_once_with_a_manifest_and_normal_modes(fake):
    folder = _convert()
    assert folder == cache_root() / NAME and len(fake) == 1
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["source"] == {
        "package": PKG,
        "version": importlib.metadata.version(PKG),
        "gguf_file": GGUF,
    }
    assert manifest["files"]["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    assert _mode(folder) == 0o755
    assert {_mode(p) for p in folder.iterdir()} == {0o644}
    assert _leftovers(folder.parent) == []
    assert _convert() == folder and len(fake) == 1  # verified, not converted again


def _drop_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _bad_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": ')


def _drop_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)


def _garbage_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)


def _other_version(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["source"]["version"] = "0.0.0-old"
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage",
    [
        _drop_weights,
        _truncate_weights,
        _garbage_weights,
        _drop_config,
        _bad_config,
        _drop_tokenizer,
        _other_version,
    ],
)
def test_a_damaged_folder_is_rebuilt_and_loads(fake, caplog, damage):
    folder = _convert()
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="prefixtune.models"):
        assert _convert() == folder
    assert len(fake) == 2
    assert any("converting it again" in r.getMessage() for r in caplog.records)
    assert models_mod._cache_problem(folder, models_mod._source_record(PKG, GGUF)) is None
    assert _leftovers(folder.parent) == []
    model, tok = load_model(compose_cfg([]).model)  # the real gguf config, the tiny weights
    assert model.config.num_hidden_layers == 2 and tok.pad_token is not None
    assert _convert() == folder and len(fake) == 2


def test_a_folder_from_older_versions_is_adopted_without_converting(fake):
    folder = _convert()
    (folder / MANIFEST).unlink()
    os.chmod(folder, 0o700)
    os.chmod(folder / "model.safetensors", 0o600)
    assert _convert() == folder and len(fake) == 1
    assert (folder / MANIFEST).is_file()
    assert _mode(folder) == 0o755 and _mode(folder / "model.safetensors") == 0o644


def test_stale_temp_folders_are_removed_but_fresh_ones_kept(fake):
    root = cache_root()
    root.mkdir(parents=True)
    stale, fresh = root / f".{NAME}-k1l2m3", root / f".{NAME}-n4o5p6"
    for path in (stale, fresh):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 2 * models_mod.STALE_TEMP_S
    os.utime(stale / "model.safetensors", (old, old))
    os.utime(stale, (old, old))
    other = root / ".other-model-q7r8s9"  # another model's folder is not ours to judge
    other.mkdir()
    os.utime(other, (old, old))
    _convert()
    assert not stale.exists() and fresh.is_dir() and other.is_dir()
    shutil.rmtree(fresh)
    (root / NAME / "model.safetensors").unlink()
    _convert()  # a repair leaves nothing behind either
    assert _leftovers(root) == [".other-model-q7r8s9"] and len(fake) == 2


def test_unwritable_cache_fails_in_one_line_before_converting(fake, monkeypatch, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("PREFIXTUNE_CACHE", str(afile / "cache"))
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        _convert()
    msg = str(info.value)
    assert "PREFIXTUNE_CACHE" in msg and str(afile / "cache") in msg and "\n" not in msg
    assert fake == [] and time.monotonic() - start < 5


def test_permission_denied_names_the_cause(fake, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(models_mod.tempfile, "mkstemp", denied)
    with pytest.raises(UsageError, match=r"Permission denied\); set PREFIXTUNE_CACHE") as info:
        _convert()
    assert "\n" not in str(info.value) and fake == []


def test_a_full_disk_during_conversion_is_one_line(fake, monkeypatch):
    def full(pkg_dir, gguf_file, out):
        raise OSError(28, "No space left on device", str(out / "model.safetensors"))

    monkeypatch.setattr(models_mod, "_convert_gguf", full)
    with pytest.raises(UsageError, match="No space left on device.*PREFIXTUNE_CACHE"):
        _convert()
    assert _leftovers(cache_root()) == []


def test_another_process_finishing_first_wins(fake, monkeypatch, tmp_path):
    theirs = tmp_path / "theirs"
    _tiny_convert(None, GGUF, theirs)
    models_mod._write_manifest(theirs, models_mod._source_record(PKG, GGUF))
    (theirs / "marker.txt").write_text("theirs")
    target = cache_root() / NAME

    def racing(pkg_dir, gguf_file, out):  # while we convert, the other process installs
        shutil.copytree(theirs, target, dirs_exist_ok=True)
        _tiny_convert(pkg_dir, gguf_file, out)

    monkeypatch.setattr(models_mod, "_convert_gguf", racing)
    cache_root().mkdir(parents=True)
    target.mkdir()  # a broken folder: only a config
    (target / "config.json").write_text("{}")
    assert _convert() == target
    assert (target / "marker.txt").read_text() == "theirs"
    assert _leftovers(cache_root()) == []


def test_another_process_installing_during_our_swap_wins(fake, monkeypatch, tmp_path):
    theirs = tmp_path / "theirs"
    _tiny_convert(None, GGUF, theirs)
    models_mod._write_manifest(theirs, models_mod._source_record(PKG, GGUF))
    (theirs / "marker.txt").write_text("theirs")
    folder = _convert()
    (folder / "model.safetensors").unlink()
    real_rename = os.rename

    def rename(src, dst):  # right after we move the broken folder aside, theirs lands
        real_rename(src, dst)
        if Path(src) == folder:
            shutil.copytree(theirs, folder)

    monkeypatch.setattr(os, "rename", rename)
    assert _convert() == folder and len(fake) == 2
    assert (folder / "marker.txt").read_text() == "theirs"
    assert _leftovers(folder.parent) == []


def test_missing_package_is_a_usage_error(fake):
    with pytest.raises(UsageError, match="no_such_gguf_package"):
        gguf_to_safetensors("no_such_gguf_package", GGUF, NAME)
    assert fake == []


# ------------------------------------------------------------------------ the real SmolLM2


@pytest.fixture(scope="session")
def converted_smollm2() -> Path:
    """The real converted folder in the default cache (converted there at most once)."""
    return gguf_to_safetensors(PKG, GGUF, NAME)


def test_real_smollm2_loads_from_a_copied_old_style_cache(
    converted_smollm2, monkeypatch, tmp_path, umask_022
):
    root = tmp_path / "cache"
    folder = root / NAME
    shutil.copytree(converted_smollm2, folder, ignore=shutil.ignore_patterns(MANIFEST))
    os.chmod(folder, 0o700)  # as the old mkdtemp-based code left it
    stale = root / f".{NAME}-x1y2z3"
    stale.mkdir()
    old = time.time() - 2 * models_mod.STALE_TEMP_S
    os.utime(stale, (old, old))
    monkeypatch.setenv("PREFIXTUNE_CACHE", str(root))

    def never(*args):
        raise AssertionError("a valid old-style folder must not be converted again")

    monkeypatch.setattr(models_mod, "_convert_gguf", never)
    model, tok = load_model(compose_cfg([]).model)
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"
    assert model._prefixtune_origin == {
        "name": NAME,
        "id": f"{PKG}=={importlib.metadata.version(PKG)}/{GGUF}",
        "revision": None,
    }
    assert (folder / MANIFEST).is_file() and _mode(folder) == 0o755
    assert not stale.exists()
