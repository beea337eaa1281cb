"""The shipped configs compose, and bad input is rejected with one line that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, compose_cfg, run_cli
from omegaconf import OmegaConf

from prefixtune.cli import CONF_DIR, check_config, split_args
from prefixtune.config import validate
from prefixtune.errors import UsageError

EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in Path(CONF_DIR, "debug").glob("*.yaml"))
GROUP_OPTIONS = [
    (group, p.stem)
    for group in ("task", "model", "method", "logger")
    for p in sorted(Path(CONF_DIR, group).glob("*.yaml"))
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_documents_its_command(name):
    cfg = compose_cfg([f"experiment={name}"])
    validate(cfg, [])
    text = Path(CONF_DIR, "experiment", f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert f"python train.py experiment={name}" in text
    assert OmegaConf.select(cfg, "train.lr") > 0


def test_experiments_hold_the_papers_hyperparameters():
    e2e = compose_cfg(["experiment=e2e_prefix"])
    assert (e2e.train.lr, e2e.train.epochs, e2e.train.batch_size, e2e.prefix.length) == (
        8e-5,
        5,
        10,
        5,
    )
    assert e2e.model.name == "gpt2-medium" and e2e.eval.num_beams == 5
    xsum = compose_cfg(["experiment=xsum_prefix"])
    assert (xsum.train.lr, xsum.train.epochs, xsum.train.batch_size, xsum.prefix.length) == (
        5e-5,
        30,
        14,
        100,
    )
    assert xsum.prefix.reparam_hidden == 800 and xsum.model.name == "bart-large"
    assert (xsum.eval.num_beams, xsum.eval.length_penalty, xsum.task.max_source_tokens) == (
        6,
        0.8,
        512,
    )
    web = compose_cfg(["experiment=webnlg_finetune"])
    assert (web.train.lr, web.train.epochs, web.train.batch_size) == (1e-5, 10, 6)


@pytest.mark.parametrize("name", DEBUGS)
def test_every_debug_preset_composes(name):
    cfg = compose_cfg([f"debug={name}"])
    validate(cfg, [])
    assert 0 < cfg.train.max_steps <= 10


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg[group].name == option or str(cfg[group].name.value) == option


def test_default_is_the_offline_model_prefix_tuned_on_e2e():
    cfg = compose_cfg([])
    assert (cfg.model.name, cfg.task.name.value, cfg.method.name.value) == (
        "smollm2-135m",
        "e2e",
        "prefix",
    )
    assert cfg.logger.name.value == "jsonl"


def test_required_override_names_exist():
    keys = [
        "prefix.length=3",
        "prefix.mode=infix",
        "prefix.reparam=false",
        "prefix.reparam_hidden=64",
        "prefix.init=text",
        "prefix.init_text=summarize",
        "train.lr=0.1",
        "train.epochs=2",
        "train.batch_size=3",
        "train.max_steps=7",
        "train.max_train_examples=9",
        "eval.split=test",
        "eval.max_examples=4",
        "eval.num_beams=3",
        "data.root=/somewhere",
        "seed=7",
        "logger=wandb",
        "resume=true",
    ]
    cfg = compose_cfg(keys)
    assert cfg.prefix.mode.value == "infix" and cfg.train.max_steps == 7
    assert cfg.data.root == "/somewhere" and cfg.seed == 7 and cfg.resume is True


BAD = [
    (
        ["model=foo"],
        "unknown model 'foo'; choose one of: bart-base, bart-large, flan-t5-base, gpt2",
    ),
    (["task=foo"], "choose one of: dart, e2e, webnlg, xsum"),
    (["method=lora"], "choose one of: finetune, ft_top2, prefix"),
    (["prefix.length=0"], "prefix.length must be >= 1"),
    (["prefix.mode=foo"], "expected one of [prefix, infix, embedding]"),
    (["prefix.init=zeros"], "expected one of [random, text]"),
    (["model=tiny-bart", "prefix.mode=embedding"], "needs a decoder-only model"),
    (["method=finetune", "prefix.length=3"], "prefix.length has no effect with method=finetune"),
    (["train.foo=1"], "Could not override 'train.foo'"),
    (["train.lr=abc"], "train.lr"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_config_is_one_clear_line(overrides, message):
    with pytest.raises(UsageError) as err:
        check_config(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=foo"], "choose one of:"),
        (["prefix.length=0"], "prefix.length must be >= 1"),
        (["model=tiny-bart", "prefix.mode=infix"], "needs a decoder-only model"),
        (["-m", "model=tiny-gpt2,nope"], "unknown model 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(overrides, message, tmp_path):
    res = run_cli([*overrides, f"hydra.run.dir={tmp_path}/run"], timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "run").exists()


def test_split_args_separates_flags_and_overrides():
    assert split_args(["-m", "--config-name", "x", "a=1", "--cfg", "job"]) == (["a=1"], True, True)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = 'pip install -e ".[test]" && pytest -q'
    assert command in readme
    assert ci.strip().splitlines()[-1] == command
    assert "set -euo pipefail" in ci and "torch==2.13.0" in ci
