"""``prefixtune-train`` / ``python train.py``: the Hydra wrapper around prefixtune.train.train.

Mistakes a user can fix (an unknown option, a bad value, missing data, no network, a NaN loss)
end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from prefixtune.config import CONF_DIR, register_configs, validate
from prefixtune.errors import UsageError
from prefixtune.prefix import PrefixError

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


# Exceptions whose message is a one-line instruction to the user: the application's own errors
# all subclass UsageError; the prefix library (which imports nothing of the application) has its
# own PrefixError.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, PrefixError)


def fail(message: str) -> NoReturn:
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
        message = f"{head} ({first})" if cause is not err else head
        bad = re.search(r"Could not override '([^']+)'", head)
        return message + (suggest_key(bad.group(1)) if bad else "")
    return f"{key}: {first}" if key else first


def suggest_key(key: str) -> str:
    """'; did you mean prefix.length?' for a mistyped key (from the schema), else ''."""
    from omegaconf import OmegaConf

    from prefixtune.config import TrainConfig

    node: object = OmegaConf.structured(TrainConfig)
    parts = key.lstrip("+~").split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return ""
        if part in node:
            node = node[part]
            continue
        valid = [str(k) for k in node.keys()]
        if i == 0:
            valid += list(GROUPS)
        close = difflib.get_close_matches(part, valid, n=1, cutoff=0.6)
        if not close:
            return f"; valid keys here: {', '.join(sorted(valid))}"
        return f"; did you mean {'.'.join([*parts[:i], close[0]])}?"
    return ""


def sweep_jobs(overrides: list[str], conf_dir: str = CONF_DIR) -> list[list[str]]:
    """The override list of every job of a multirun, as Hydra's basic sweeper will expand it:
    the preset's ``hydra.sweeper.params`` first, the command line's sweeps replacing them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            hydra_cfg = compose(
                "train", overrides=[*plain, "output_dir=unused"], return_hydra_config=True
            )
        params = hydra_cfg.hydra.sweeper.get("params") or {}
        axes: dict[str, list[str]] = {}
        preset = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
        for o in preset + parsed:
            key = o.get_key_element()
            if o.is_sweep_override():
                axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            elif o in preset or key in axes:
                axes[key] = [o.input_line]
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(describe_config_error(err)) from None
    fixed = [o for o in plain if o.split("=", 1)[0] not in axes]
    return [[*fixed, *combo] for combo in itertools.product(*axes.values())]


def check_sweep(overrides: list[str], conf_dir: str = CONF_DIR) -> None:
    """Every job's config is checked before the first job runs (a bad job fails the sweep)."""
    check_groups(overrides, conf_dir)
    jobs = sweep_jobs(overrides, conf_dir)
    for n, job in enumerate(jobs):
        try:
            check_config(job, conf_dir)
        except UsageError as err:
            raise UsageError(f"job {n} of {len(jobs)} ({' '.join(job)}): {err}") from None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from prefixtune.train import train

    overrides = list(HydraConfig.get().overrides.task)
    try:
        metrics = train(cfg, overrides=overrides, unique_dir=not _NAMED_RUN_DIR[0])
    except USER_ERRORS as err:
        out = Path(str(cfg.output_dir))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        fail(str(err))
    return metrics.get("dev_loss")


def names_run_dir(overrides: list[str]) -> bool:
    """Whether the user chose the run folder. Hydra's default, and any folder named with a
    ``${now:...}`` timestamp, is a fresh folder per launch: when another launch took it in the
    same second, this one moves on to ``<folder>-2``. A named folder is never shared."""
    keys = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "output_dir")
    return any(o.lstrip("+~").split("=", 1)[0] in keys and "${now:" not in o for o in overrides)


def check_writable(overrides: list[str], multirun: bool) -> None:
    """The output folder can be made: fail before Hydra (and the model load), in one line."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
    folder = Path(named[-1] if named and "${" not in named[-1] else "outputs").absolute()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise UsageError(
            f"cannot create the run folder {folder}: {existing} {what} (choose another {key})"
        )


# Whether the command line named the run folder; read from argv, since Hydra hands the job
# its overrides with ${now:...} already resolved.
_NAMED_RUN_DIR = [True]


def main() -> None:
    overrides, multirun, info = split_args(sys.argv[1:])
    _NAMED_RUN_DIR[0] = names_run_dir(overrides)
    if not info:
        try:
            if multirun:
                check_sweep(overrides)
            else:
                check_config(overrides)
            check_writable(overrides, multirun)
        except UsageError as err:
            fail(str(err))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
