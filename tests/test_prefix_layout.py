"""The prefix engine as a standalone library: what it imports, its layering, PrefixConfig as a
Hydra / OmegaConf structured config, and the small pieces the application shares with it."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from enum import Enum

import pytest
import torch
from conftest import REPO, tiny_bart, tiny_gpt2, tiny_llama
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from prefixtune.prefix import (
    IGNORE_INDEX,
    PrefixConfig,
    PrefixError,
    PrefixInit,
    PrefixMode,
    PrefixModel,
)
from prefixtune.prefix import checkpoint as ckpt
from prefixtune.prefix.architecture import layer_stacks
from prefixtune.prefix.files import atomic_write, write_text
from prefixtune.prefix.wiring import attached, kv_shapes

PACKAGE = REPO / "prefixtune" / "prefix"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
# The layers that must not reach up: the model (forward, generate) never imports its I/O.
BELOW_IO = ("config", "architecture", "attention", "cache", "encoder", "wiring", "core", "files")
IO = ("checkpoint", "peft_export")


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )


# ---------------------------------------------------------------------- imports
def test_the_engine_imports_nothing_of_the_application():
    code = (
        "import sys, prefixtune.prefix\n"
        "print([m for m in sys.modules if m.startswith('prefixtune.')"
        " and m != 'prefixtune.prefix' and not m.startswith('prefixtune.prefix.')])"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _imports(module: str) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported module, whether the import is at the top level) for every import."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level == 1 and node.module:  # from .x import ...
                names = [f"prefixtune.prefix.{node.module}"]
            elif node.level == 1:  # from . import x, y
                names = [f"prefixtune.prefix.{a.name}" for a in node.names]
            else:  # from .. import: outside the package
                names = ["prefixtune." + "." * (node.level - 2) + (node.module or "")]
            out += [(node, name, id(node) in top) for name in names]
        elif isinstance(node, ast.Import):
            out += [(node, a.name, id(node) in top) for a in node.names]
    return out


def _package_imports(module: str) -> set[str]:
    inside = "prefixtune.prefix."
    return {n[len(inside) :] for _, n, _ in _imports(module) if n.startswith(inside)}


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_the_application_or_imports_lazily(module):
    for node, name, at_top in _imports(module):
        if name.startswith("prefixtune"):
            assert name == "prefixtune.prefix" or name.startswith("prefixtune.prefix."), (
                module,
                name,
            )
            assert at_top, f"{module}.py line {node.lineno}: a lazy import of {name}"
    assert "TYPE_CHECKING" not in (PACKAGE / f"{module}.py").read_text(), module


def test_the_modules_form_no_import_circle():
    graph = {m: _package_imports(m) & set(MODULES) for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module not in done:
            for dep in graph[module]:
                visit(dep, (*path, module))
            done.add(module)

    for module in MODULES:
        visit(module, ())
    for module in BELOW_IO:
        assert not graph[module] & {*IO, "model"}, (module, graph[module])
    for module in IO:
        assert "model" not in graph[module], module
    assert {"checkpoint", "peft_export", "core"} <= graph["model"]


@pytest.mark.parametrize("module", ["checkpoint", "peft_export", "core", "wiring", "model"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    res = _run(f"import prefixtune.prefix.{module}")
    assert res.returncode == 0, res.stderr


def test_public_names():
    import prefixtune.prefix as engine
    from prefixtune.prefix.model import DEFAULT, parameter_summary

    assert sorted(engine.__all__) == sorted(
        [
            "ATTN_IMPLEMENTATION",
            "DEFAULT",
            "IGNORE_INDEX",
            "PrefixConfig",
            "PrefixError",
            "PrefixInit",
            "PrefixMode",
            "PrefixModel",
        ]
    )
    assert IGNORE_INDEX == -100 and DEFAULT == "default"
    assert parameter_summary(200, 2, 4)["trainable_pct"] == 2.0
    assert issubclass(PrefixError, ValueError)
    assert [c.__name__ for c in PrefixError.__mro__] == [
        "PrefixError",
        "ValueError",
        "Exception",
        "BaseException",
        "object",
    ]


# ---------------------------------------------------------------------- PrefixConfig for Hydra
def test_prefix_config_is_a_structured_config():
    node = OmegaConf.structured(PrefixConfig)
    assert node.mode is PrefixMode.prefix and node.init is PrefixInit.random
    infix = OmegaConf.merge(node, {"mode": "infix", "length": 3})
    assert infix.mode is PrefixMode.infix
    with pytest.raises(ValidationError, match=r"expected one of \[prefix, infix, embedding\]"):
        OmegaConf.merge(node, {"mode": "bogus"})
    with pytest.raises(ValidationError, match=r"expected one of \[random, text\]"):
        OmegaConf.merge(node, {"init": "zeros"})
    for config in (
        PrefixConfig(**OmegaConf.to_container(infix)),
        PrefixConfig.from_dict(OmegaConf.to_container(infix, enum_to_str=True)),
        OmegaConf.to_object(infix),
    ):
        assert config == PrefixConfig(length=3, mode="infix")
        assert config.mode is PrefixMode.infix and config.mode == "infix"
    assert OmegaConf.structured(PrefixConfig(mode="embedding")).mode is PrefixMode.embedding
    with pytest.raises(PrefixError, match="prefix.length must be >= 1"):
        PrefixConfig(**OmegaConf.to_container(OmegaConf.merge(node, {"length": 0})))


def test_prefix_config_modes_are_plain_strings_outside():
    config = PrefixConfig(mode=PrefixMode.embedding, init="text")
    assert config.mode is PrefixMode.embedding and config.init is PrefixInit.text
    assert f"prefix.mode={config.mode}" == "prefix.mode=embedding" == f"prefix.mode={config.mode:}"
    assert str(config.init) == "text"
    d = config.to_dict()
    assert type(d["mode"]) is str and type(d["init"]) is str
    assert json.loads(json.dumps(d))["mode"] == "embedding"

    class OtherMode(Enum):  # e.g. an application's own Enum with the same values
        infix = "infix"

    assert PrefixConfig(mode=OtherMode.infix).mode is PrefixMode.infix
    config = PrefixConfig()
    config.mode = "infix"  # set after construction: validate() checks and normalises it
    config.validate()
    assert config.mode is PrefixMode.infix
    config.mode = "suffix"
    with pytest.raises(PrefixError, match=r"prefix.mode='suffix' is not one of"):
        config.validate()


def test_saved_prefix_config_holds_plain_strings(tmp_path):
    model = PrefixModel(tiny_gpt2(), PrefixConfig(length=2, mode="infix", reparam=False))
    folder = model.save_prefix(tmp_path / "p")
    text = (folder / ckpt.CONFIG).read_text()
    assert '"mode": "infix"' in text and '"init": "random"' in text
    assert ckpt.read_config(folder)["mode"] == "infix"
    assert type(ckpt.read_config(folder)["mode"]) is str
    assert PrefixModel.from_prefix(tiny_gpt2(), folder).config.mode is PrefixMode.infix


def test_the_encoder_decoder_mode_rule_lives_in_the_config():
    for mode in ("infix", "embedding"):
        with pytest.raises(PrefixError) as e:
            PrefixConfig(mode=mode).check_model(True, "model=bart-base")
        assert str(e.value) == (
            f"prefix.mode={mode} needs a decoder-only model; model=bart-base is encoder-decoder "
            "(use prefix.mode=prefix)"
        )
    PrefixConfig().check_model(True, "bart")
    PrefixConfig(mode="infix").check_model(False, "gpt2")


# ---------------------------------------------------------------------- architecture and wiring
def test_layer_stacks():
    gpt2, llama, bart = tiny_gpt2(), tiny_llama(), tiny_bart()
    assert [s is gpt2.transformer.h for s in layer_stacks(gpt2)] == [True]
    assert [s is llama.model.layers for s in layer_stacks(llama)] == [True]
    encoder, decoder = layer_stacks(bart)
    assert encoder is bart.model.encoder.layers and decoder is bart.model.decoder.layers
    empty = torch.nn.Module()
    empty.config, empty.base_model = gpt2.config, torch.nn.Linear(1, 1)
    with pytest.raises(PrefixError, match="cannot find the transformer layers of Linear"):
        layer_stacks(empty)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_bart])
def test_wiring_is_undone(build):
    base = build()
    own = base.config._attn_implementation
    with attached(base) as wiring:
        shapes = kv_shapes(wiring)
        with pytest.raises(PrefixError, match="already wrapped"):
            PrefixModel(base)
    assert base.config._attn_implementation == own
    model = PrefixModel(base)
    assert model.shapes == shapes
    assert model.unwrap() is base and base.config._attn_implementation == own
    assert all(getattr(m, "_prefixtune", None) is None for m in base.modules())


def test_a_failed_construction_leaves_the_base_free():
    base = tiny_gpt2()
    with pytest.raises(PrefixError, match="needs the model's tokenizer"):
        PrefixModel(base, PrefixConfig(length=2, init="text"))
    PrefixModel(base, PrefixConfig(length=2))  # not "already wrapped"


# ---------------------------------------------------------------------- files
def test_atomic_write(tmp_path):
    path = tmp_path / "a.json"
    write_text(path, "one\n")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "one\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    seen = []

    def failing(f) -> None:
        f.write("two")
        seen.extend(p.name for p in tmp_path.iterdir() if p != path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "one\n"  # untouched, and no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert len(seen) == 1 and seen[0].startswith(".a.json.") and seen[0].endswith(".tmp")
    atomic_write(path, lambda f: f.write(b"\x00"), mode="wb")
    assert path.read_bytes() == b"\x00"
