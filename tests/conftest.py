"""Shared test helpers: the real configs composed and shrunk, and the data/offline model paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from prefixtune.cli import CONF_DIR
from prefixtune.config import register_configs

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = (REPO / ".." / "shared" / "data").resolve()
if not DATA_ROOT.is_dir():  # a checkout elsewhere: fall back to the package default
    from prefixtune.data import default_data_root

    DATA_ROOT = Path(default_data_root())

# A few steps on a few examples: seconds on a CPU.
TINY = [
    f"data.root={DATA_ROOT}",
    "debug=tiny",
    "train.max_steps=4",
    "train.max_train_examples=16",
    "train.max_dev_examples=4",
    "train.batch_size=2",
    "train.eval_every=2",
    "eval.max_examples=3",
    "eval.batch_size=3",
    "eval.num_beams=2",
    "eval.max_new_tokens=6",
    "eval.min_new_tokens=0",
    "prefix.reparam_dim=16",
    "prefix.reparam_hidden=16",
]

register_configs()

# PREFIXTUNE_TEST_DEVICE=cuda builds the tests' tensors and tiny models on that device, to check
# the accelerator code paths on a machine that has one (CI has none and runs on the CPU).
if os.environ.get("PREFIXTUNE_TEST_DEVICE"):
    torch.set_default_device(os.environ["PREFIXTUNE_TEST_DEVICE"])


def compose_cfg(overrides: list[str], output_dir: Path | str | None = None) -> DictConfig:
    """The real conf/ composed with overrides, as Hydra would give it to train()."""
    extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra])


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180):
    """The real entry point in a subprocess (python train.py ...)."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)
