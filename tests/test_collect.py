"""The results collector on run folders written here: exact mean ± std and n per setting, the
paper's figures as valid PNGs, skipped unfinished runs, and never overwriting its outputs.

The cost columns and the Pareto plot are tested in test_collect_costs.py."""

from __future__ import annotations

import importlib.metadata
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from matplotlib.image import imread

from prefixtune.collect import CollectError, collect, main
from prefixtune.errors import UsageError

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(
    folder: Path,
    overrides: list[str],
    metrics: dict | None,
    task: str = "e2e",
    config: dict | None = None,
    with_overrides: bool = True,
    run_info: dict | str | None = None,
) -> Path:
    """A run folder as prefixtune.train writes it (only the files the collector reads);
    ``run_info``: run.json's content (a string is written as it is, e.g. a cut file)."""
    folder.mkdir(parents=True)
    cfg = {"task": {"name": task, "subset": "all"}, "seed": 42, **(config or {})}
    (folder / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    if with_overrides:
        (folder / "overrides.json").write_text(json.dumps({"overrides": overrides}))
    if run_info is not None:
        text = run_info if isinstance(run_info, str) else json.dumps(run_info)
        (folder / "run.json").write_text(text)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def e2e_scores(bleu: float, nist: float = 8.0) -> dict:
    return {"bleu": bleu, "nist": nist, "meteor": 0.45, "rouge_l": 0.7, "cider": 2.4}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and data[-8:-4] == b"IEND"
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


@pytest.fixture
def prefix_length_sweep(tmp_path) -> Path:
    """L in {5, 10} x seeds {1, 2}, plus one unfinished job."""
    root = tmp_path / "multirun"
    bleu = {("5", "1"): 60.0, ("5", "2"): 62.0, ("10", "1"): 65.0, ("10", "2"): 66.0}
    for num, ((length, seed), value) in enumerate(bleu.items()):
        overrides = ["sweep=prefix_length", f"prefix.length={length}", f"seed={seed}"]
        metrics = {"dev_loss": 1.0 + num, "best_step": 4, "steps": 4, "test": e2e_scores(value)}
        write_run(root / str(num), overrides, metrics)
    write_run(root / "4", ["sweep=prefix_length", "prefix.length=20", "seed=1"], None)
    return root


def test_table_has_exact_mean_std_n_and_skips_unfinished(prefix_length_sweep, capsys):
    main([str(prefix_length_sweep)])
    printed = capsys.readouterr().out
    assert "collected 4 finished runs (2 settings)" in printed
    assert "skipped 1 unfinished runs" in printed
    out = prefix_length_sweep / "collected"
    text = (out / "results.md").read_text()
    assert "| prefix.length | n | BLEU | NIST | METEOR | ROUGE-L | CIDEr | dev loss |" in text
    # mean 61, sample std sqrt(2) = 1.414; mean 65.5, std 0.7071; dev losses 1,2 and 3,4
    assert "| 5 | 2 | 61.00 ± 1.41 | 8.000 ± 0.000 | 0.4500 ± 0.0000 |" in text
    assert "| 10 | 2 | 65.50 ± 0.71 |" in text
    assert text.index("| 5 | 2 |") < text.index("| 10 | 2 |")  # numeric order
    assert "1.500 ± 0.707 |" in text and "3.500 ± 0.707 |" in text
    assert "Skipped 1 unfinished runs" in text and str(prefix_length_sweep / "4") in text
    assert "over replicates (seed)" in text and "`sweep=prefix_length`" in text
    assert_png(out / "prefix_length.png")
    csv_lines = (out / "runs.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "prefix.length" in csv_lines[0] and "test/bleu" in csv_lines[0]


def test_never_overwrites(prefix_length_sweep):
    first = collect(prefix_length_sweep)
    second = collect(prefix_length_sweep)
    assert first["out"].name == "collected" and second["out"].name == "collected-2"
    # the collected folders are not runs: still 4 runs and 1 skipped
    assert second["runs"] == 4 and len(second["skipped"]) == 1
    with pytest.raises(CollectError, match="refusing to overwrite"):
        collect(prefix_length_sweep, out=first["out"])
    with pytest.raises(SystemExit) as err:
        main([str(prefix_length_sweep), "--out", str(first["out"])])
    assert err.value.code == 2
    fresh = prefix_length_sweep.parent / "elsewhere"
    assert collect(prefix_length_sweep, out=fresh)["out"] == fresh


def test_no_finished_runs_is_an_error(tmp_path):
    write_run(tmp_path / "0", ["prefix.length=5"], None)
    with pytest.raises(CollectError, match="no finished runs.*1 unfinished"):
        collect(tmp_path)


def test_init_bars_over_subsamples_and_seeds(tmp_path):
    inits = ["random", "table-to-text", "elephant"]
    num = 0
    for i, init in enumerate(inits):
        for subsample in range(3):
            for seed in (1, 2):
                overrides = ["sweep=init", "experiment=e2e_lowdata", f"prefix_init={init}"]
                overrides += [f"train.low_data_seed={subsample}", f"seed={seed}"]
                value = 40.0 + 10 * i + subsample
                write_run(tmp_path / str(num), overrides, {"test": e2e_scores(value)})
                num += 1
    result = collect(tmp_path)
    (table,) = result["tables"]
    assert table.keys == ["prefix_init"] and table.replicates == ["train.low_data_seed", "seed"]
    text = (result["out"] / "results.md").read_text()
    # values 40,40,41,41,42,42: mean 41, sample std sqrt(4/5) = 0.8944; sweep order kept
    assert "| random | 6 | 41.00 ± 0.89 |" in text
    assert "| table-to-text | 6 | 51.00 ± 0.89 |" in text
    assert text.index("| random |") < text.index("| table-to-text |") < text.index("| elephant |")
    assert_png(result["out"] / "init.png")


def test_low_data_curves_prefix_vs_finetune(tmp_path):
    num = 0
    for method, offset in (("prefix", 5.0), ("finetune", 0.0)):
        for size in (50, 100, 200, 500):
            for subsample in (0, 1):
                overrides = [f"method={method}", f"train.low_data={size}"]
                overrides += [f"train.low_data_seed={subsample}", "seed=1"]
                value = offset + size / 10 + subsample
                write_run(tmp_path / str(num), overrides, {"test": e2e_scores(value)})
                num += 1
    result = collect(tmp_path, metrics=["bleu"])
    (table,) = result["tables"]
    assert table.keys == ["method", "train.low_data"] and len(table.rows) == 8
    text = (result["out"] / "results.md").read_text()
    assert "| prefix | 50 | 2 | 10.50 ± 0.71 |" in text
    assert "| finetune | 500 | 2 | 50.50 ± 0.71 |" in text
    assert_png(result["out"] / "low_data.png")
    assert not (result["out"] / "prefix_length.png").exists()


def test_webnlg_seen_unseen_all_columns(tmp_path):
    for num, (exp, seen, unseen) in enumerate(
        [("webnlg_prefix", 62.0, 45.0), ("webnlg_finetune", 64.0, 27.0)]
    ):
        scores = {
            sub: {"bleu": b, "meteor": b / 100, "ter": 0.4}
            for sub, b in (("seen", seen), ("unseen", unseen), ("all", (seen + unseen) / 2))
        }
        write_run(
            tmp_path / str(num),
            [f"experiment={exp}", "task.subset=seen", "task.eval_subset=all"],
            {"dev_loss": 1.0, "test": scores},
            task="webnlg",
        )
    result = collect(tmp_path)
    text = (result["out"] / "results.md").read_text()
    head = "| experiment | n | BLEU seen | BLEU unseen | BLEU all | METEOR seen | METEOR unseen"
    assert head in text and "| TER all | dev loss |" in text
    assert "| webnlg_prefix | 1 | 62.00 | 45.00 | 53.50 | 0.6200 |" in text
    assert "## webnlg: scores on test, 2 runs, 2 settings" in text


def test_without_overrides_json_the_config_tells_the_setting(tmp_path):
    for num, length in enumerate((1, 10)):
        write_run(
            tmp_path / str(num),
            [],
            {"dev": e2e_scores(50.0 + length)},
            config={"prefix": {"length": length, "mode": "prefix"}},
            with_overrides=False,
        )
    result = collect(tmp_path)
    (table,) = result["tables"]
    assert table.keys == ["prefix.length"] and table.split == "dev"
    assert "| 10 | 1 | 60.00 |" in (result["out"] / "results.md").read_text()


def test_two_tasks_give_two_tables_and_prefixed_figures(tmp_path):
    for num, (task, length) in enumerate([("e2e", 1), ("e2e", 5), ("xsum", 1), ("xsum", 5)]):
        scores = e2e_scores(50.0) if task == "e2e" else {"rouge1": 40.0, "rouge2": 18.0}
        write_run(tmp_path / str(num), [f"prefix.length={length}"], {"test": scores}, task=task)
    result = collect(tmp_path)
    assert [t.task for t in result["tables"]] == ["e2e", "xsum"]
    assert "| prefix.length | n | ROUGE-1 | ROUGE-2 |" in (result["out"] / "results.md").read_text()
    assert_png(result["out"] / "e2e_prefix_length.png")
    assert_png(result["out"] / "xsum_prefix_length.png")


def test_errors_are_usage_errors_and_exit_2(tmp_path, capsys):
    assert issubclass(CollectError, UsageError)
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "missing")])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'} is not a folder"


def test_setting_ignores_non_semantic_overrides(tmp_path):
    """data.root, eval.batch_size, cpu and logger change where and how fast a run goes, not
    what it computes: runs differing only there are replicates of one setting."""
    noise = [
        ["eval.batch_size=8", "data.root=/data/a", "cpu=true", "logger=wandb"],
        ["eval.batch_size=32", "data.root=/data/b", "cpu=false", "logger=none"],
    ]
    num = 0
    for length, base in (("5", 60.0), ("10", 70.0)):
        for i, extra in enumerate(noise):
            overrides = [f"prefix.length={length}", *extra, "hydra.job.num=" + str(num)]
            write_run(tmp_path / str(num), overrides, {"test": e2e_scores(base + 2 * i)})
            num += 1
    (table,) = collect(tmp_path)["tables"]
    assert table.keys == ["prefix.length"] and [len(r.runs) for r in table.rows] == [2, 2]
    assert table.fixed == {} and table.replicates == []
    assert [r.values("test/bleu") for r in table.rows] == [[60.0, 62.0], [70.0, 72.0]]


def test_setting_from_config_ignores_non_semantic_keys(tmp_path):
    """Without overrides.json the config tells the setting, with the same keys left out."""
    for num, (length, root, batch) in enumerate([(1, "/a", 4), (1, "/b", 8), (10, "/a", 16)]):
        config = {"prefix": {"length": length}, "data": {"root": root}}
        config |= {"eval": {"batch_size": batch}, "output_dir": f"/out/{num}"}
        write_run(
            tmp_path / str(num), [], {"test": e2e_scores(50.0)}, config=config, with_overrides=False
        )
    (table,) = collect(tmp_path)["tables"]
    assert table.keys == ["prefix.length"] and [len(r.runs) for r in table.rows] == [2, 1]


def test_console_command_module_and_script_run_main(prefix_length_sweep, monkeypatch, capsys):
    """The installed entry point, ``python -m prefixtune.collect`` and scripts/collect.py all
    reach the same command."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="prefixtune-collect")
    assert entry.load() is main
    monkeypatch.setattr(sys, "argv", ["collect.py", str(prefix_length_sweep)])
    runpy.run_path(str(REPO / "scripts" / "collect.py"), run_name="__main__")
    assert "collected 4 finished runs (2 settings)" in capsys.readouterr().out
    out = prefix_length_sweep / "elsewhere"
    res = subprocess.run(
        [sys.executable, "-m", "prefixtune.collect", str(prefix_length_sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"wrote {out / 'results.md'}" in res.stdout
    assert (out / "results.md").read_text().count("| 5 | 2 | 61.00 ± 1.41 |") == 1
