"""What makes a run folder self-describing: git state, package versions, time and memory."""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "prefixtune",
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "hydra-core",
    "omegaconf",
    "datasets",
    "peft",
    "wandb",
    "sacrebleu",
)


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and whether the working tree had uncommitted changes."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (CPU) and peak allocated GPU memory, in MiB."""
    mem = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        mem["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return mem
