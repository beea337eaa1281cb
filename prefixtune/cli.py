"""``prefixtune-train`` / ``python train.py``: the Hydra wrapper around prefixtune.train.train.

Mistakes a user can fix (an unknown option, a bad value, missing data, no network, a NaN loss)
end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from prefixtune.config import register_configs, validate
from prefixtune.errors import UsageError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
GROUPS = ("task", "model", "method", "logger", "experiment", "debug", "prefix_init", "sweep")
# Hydra flags that take a value as the next argument.
_FLAGS_WITH_VALUE = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-p",
    "--package",
}
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version"}

register_configs()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is a one-line instruction to the user."""
    errors: list[type[BaseException]] = [UsageError]
    for module, name in (
        ("prefixtune.data", "DataError"),
        ("prefixtune.prefix", "PrefixError"),
        ("prefixtune.metrics", "ScoreError"),
    ):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def split_args(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, info_only) from the command line."""
    overrides, multirun, info = [], False, False
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif arg in ("--cfg", "-c"):
            info, skip = True, True
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _INFO_FLAGS or arg.startswith("--"):
            info = info or arg in _INFO_FLAGS
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun, info


def check_groups(overrides: list[str], conf_dir: str = CONF_DIR) -> None:
    """An unknown group option names every valid choice (sweeps: every value is checked)."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in GROUPS:
            continue
        choices = sorted(p.stem for p in Path(conf_dir, key).glob("*.yaml"))
        values = re.sub(r"^(choice|glob)\((.*)\)$", r"\2", value)
        for v in (x.strip() for x in values.split(",")):
            if v in ("", "null") or "*" in v:
                continue
            if v not in choices:
                raise UsageError(f"unknown {key} {v!r}; choose one of: {', '.join(choices)}")


def check_config(overrides: list[str], conf_dir: str = CONF_DIR) -> None:
    """Compose the config once up front so a bad value fails before Hydra makes a run folder."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_groups(overrides, conf_dir)
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "output_dir=unused"])
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(describe_config_error(err)) from None
    validate(cfg, overrides)


def describe_config_error(err: BaseException) -> str:
    cause = err.__cause__ or err
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    key = getattr(cause, "full_key", None)
    head = str(err).strip().splitlines()[0]
    if "Could not override" in head or "Could not find" in head:
        return f"{head} ({first})" if cause is not err else head
    return f"{key}: {first}" if key else first


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from prefixtune.train import train

    overrides = list(HydraConfig.get().overrides.task)
    try:
        metrics = train(cfg, overrides=overrides)
    except user_errors() as err:
        out = Path(str(cfg.output_dir))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        fail(str(err))
        return None
    return metrics.get("dev_loss")


def main() -> None:
    overrides, multirun, info = split_args(sys.argv[1:])
    if not info:
        try:
            if multirun:
                check_groups(overrides)
            else:
                check_config(overrides)
        except UsageError as err:
            fail(str(err))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
