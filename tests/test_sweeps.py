"""The ablation sweeps (conf/sweep/) and launchers: every value of every preset composes (each
sweep's first job runs in test_experiments.py), and real tiny multiruns through the joblib and
submitit-local launchers give one run folder (and one wandb run) per job, which the collector
turns into a table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import TINY, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefixtune.cli import CONF_DIR
from prefixtune.collect import collect
from prefixtune.config import validate

SWEEPS = sorted(p.stem for p in Path(CONF_DIR, "sweep").glob("*.yaml"))
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train", overrides=[*overrides, "output_dir=unused"], return_hydra_config=True
        )


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_preset_composes_every_value(name):
    cfg = compose_hydra([f"sweep={name}"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep["dir"].endswith(f"_{name}")  # each ablation's multirun folder says which it is
    assert sweep["subdir"] == "${hydra.job.num}"  # one folder per job
    assert cfg.logger.wandb.group == f"ablation-{name}"
    assert f"ablation:{name}" in cfg.logger.wandb.tags

    # Every value of every swept key composes, as one job with debug=tiny would see it.
    values = {k: str(v).split(",") for k, v in params.items()}
    for key, options in values.items():
        for option in options:
            job = [f"{k}={option if k == key else v[0]}" for k, v in values.items()]
            job_cfg = compose_hydra([*job, f"sweep={name}", "debug=tiny"])
            validate(job_cfg, job)
            assert job_cfg.model.name == "tiny-gpt2"


def test_sweep_jobs_get_what_they_sweep():
    """Spot checks that a job's overrides reach the config it trains with."""
    job = compose_hydra(["sweep=init", "experiment=e2e_lowdata", "prefix_init=elephant"])
    assert (job.prefix.init.value, job.prefix.init_text) == ("text", "elephant")
    assert job.prefix.length == 6 and job.train.low_data == 100
    job = compose_hydra(["sweep=init", "experiment=e2e_lowdata", "prefix_init=random"])
    assert job.prefix.init.value == "random"
    job = compose_hydra(["sweep=low_data", "experiment=e2e_lowdata", "method=finetune"])
    assert job.method.name.value == "finetune" and job.train.lr == 5e-5
    job = compose_hydra(["sweep=extrapolation", "experiment=webnlg_finetune"])
    assert job.task.name.value == "webnlg" and job.method.name.value == "finetune"
    job = compose_hydra(["sweep=position", "experiment=e2e_prefix", "prefix.mode=infix"])
    assert job.prefix.mode.value == "infix"


def test_every_init_choice_sets_the_papers_words():
    words = {
        "table-to-text": "table-to-text:",
        "summarize": "summarize",
        **{w: w for w in ("elephant", "banana", "divide", "keep", "active", "beautiful")},
    }
    for choice, text in words.items():
        cfg = compose_hydra([f"prefix_init={choice}"])
        assert (cfg.prefix.init.value, cfg.prefix.init_text) == ("text", text)


@pytest.mark.parametrize(
    "launcher, target, keys",
    [
        ("joblib", "JoblibLauncher", {"n_jobs": -1}),
        ("parallel", "JoblibLauncher", {"n_jobs": 2}),
        ("submitit_local", "LocalLauncher", {}),
        ("slurm", "SlurmLauncher", {"gpus_per_node": 1, "timeout_min": 720, "partition": None}),
    ],
)
def test_launchers_compose(launcher, target, keys):
    cfg = compose_hydra(["sweep=prefix_length", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)
    for key, value in keys.items():
        assert cfg.hydra.launcher[key] == value


def test_slurm_launcher_takes_cluster_keys():
    cfg = compose_hydra(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=abc"]
    )
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account) == ("gpu", "abc")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


def test_sweep_count_matches_the_paper():
    """low_data: 2 methods x 4 sizes x 5 subsamples x 2 seeds; init: 9 inits x 5 x 2."""

    def jobs(name):
        params = OmegaConf.to_container(compose_hydra([f"sweep={name}"]).hydra.sweeper.params)
        return len(list(itertools.product(*(str(v).split(",") for v in params.values()))))

    assert (jobs("low_data"), jobs("init"), jobs("prefix_length"), jobs("position")) == (
        80,
        90,
        5,
        9,
    )


def _job_folders(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_joblib_multirun_two_jobs_two_folders_two_wandb_runs(tmp_path):
    sweep_dir = tmp_path / "multirun"
    args = ["-m", "sweep=prefix_length", *TINY, "prefix.length=1,3", "eval.split=none"]
    args += ["hydra/launcher=parallel", f"hydra.sweep.dir={sweep_dir}"]
    args += ["logger=wandb", "logger.wandb.mode=offline"]
    res = run_cli(args, env=ENV, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _job_folders(sweep_dir)
    assert [p.name for p in jobs] == ["0", "1"]
    lengths, wandb_ids = [], []
    for job in jobs:
        assert (job / "metrics.json").is_file() and (job / "run.json").is_file()
        overrides = json.loads((job / "overrides.json").read_text())["overrides"]
        assert "sweep=prefix_length" in overrides and "experiment=e2e_prefix" in overrides
        lengths.append(OmegaConf.load(job / "config.yaml").prefix.length)
        # Its own wandb run, finished, in its own folder, grouped under the ablation's name.
        run_id = (job / "wandb_id.txt").read_text().strip()
        wandb_ids.append(run_id)
        (offline,) = (job / "wandb").glob(f"offline-run-*-{run_id}")
        assert b"ablation-prefix_length" in (offline / f"run-{run_id}.wandb").read_bytes()
    assert sorted(lengths) == [1, 3]
    assert len(set(wandb_ids)) == 2

    # The collector on the real folders: one row per prefix length, the dev loss as the score.
    result = collect(sweep_dir)
    assert result["out"] == sweep_dir / "collected" and result["runs"] == 2
    (table,) = result["tables"]
    assert table.keys == ["prefix.length"] and [r.setting for r in table.rows] == [("1",), ("3",)]
    text = (sweep_dir / "collected" / "results.md").read_text()
    assert "| prefix.length | n | dev loss |" in text
    assert (sweep_dir / "collected" / "prefix_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_submitit_local_multirun(tmp_path):
    sweep_dir = tmp_path / "multirun"
    args = ["-m", "sweep=position", *TINY, "prefix.mode=infix", "prefix.length=2"]
    args += ["eval.split=none", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}"]
    args += ["hydra.launcher.timeout_min=10"]
    res = run_cli(args, env=ENV, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    (job,) = _job_folders(sweep_dir)
    assert job.name == "0" and (job / "metrics.json").is_file()
    cfg = OmegaConf.load(job / "config.yaml")
    assert (cfg.prefix.mode, cfg.prefix.length) == ("infix", 2)
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own job logs
