"""The collector's cost columns (from run.json) and its quality-vs-cost Pareto plot, on run
folders written here: exact means in results.md and runs.csv, runs without run.json still
counted, and the front as a function on numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_collect import assert_png, e2e_scores, write_run

from prefixtune.collect import collect, costs_of, main, pareto_front
from prefixtune.collect.pareto import plan

BASE = 1_000_000


def run_info(
    fit: float,
    wall: float,
    length: int,
    rss: float = 2000.0,
    gpu: float | None = None,
    resumed_from_step: int | None = None,
) -> dict:
    """run.json as prefixtune.train.write_run_info writes it (the keys the collector reads)."""
    stored, trainable = 1000 * length, 20_000 * length
    memory = {"cpu_max_rss_mb": rss} | ({"gpu_max_allocated_mb": gpu} if gpu is not None else {})
    return {
        "status": "finished",
        "parameters": {
            "base": BASE,
            "stored": stored,
            "trainable": trainable,
            "stored_pct": 100.0 * stored / BASE,
            "trainable_pct": 100.0 * trainable / BASE,
        },
        "wall_time_s": wall,
        "wall_time_this_segment_s": wall,
        "phases_this_segment_s": {"load_data": 1.0, "build_model": 2.0, "fit": fit},
        "memory": memory,
        "resumed_from_step": resumed_from_step,
    }


def add_run(root: Path, length: int, seed: int, bleu: float, info: dict | str | None) -> None:
    num = len(list(root.iterdir())) if root.is_dir() else 0
    overrides = ["sweep=prefix_length", f"prefix.length={length}", f"seed={seed}"]
    metrics = {"dev_loss": 1.0, "test": e2e_scores(bleu)}
    write_run(root / str(num), overrides, metrics, run_info=info)


@pytest.fixture
def costed_sweep(tmp_path) -> Path:
    """L=1, 5, 10, 40 with run.json (L=5 once more without, L=40 dominated), L=20 without any."""
    root = tmp_path / "multirun"
    add_run(root, 1, 1, 55.0, run_info(50.0, 80.0, 1))
    add_run(root, 5, 1, 60.0, run_info(100.0, 150.0, 5, rss=2000.0))
    add_run(root, 5, 2, 62.0, run_info(110.0, 170.0, 5, rss=2100.0))
    add_run(root, 5, 3, 61.0, None)  # an older run: no run.json
    add_run(root, 10, 1, 65.0, run_info(200.0, 300.0, 10, rss=3000.0))
    add_run(root, 10, 2, 66.0, run_info(220.0, 320.0, 10, rss=3000.0))
    add_run(root, 20, 1, 64.0, None)
    add_run(root, 40, 1, 63.0, run_info(800.0, 900.0, 40))
    return root


def test_cost_columns_in_results_md(costed_sweep):
    result = collect(costed_sweep)
    assert result["runs"] == 8
    text = (result["out"] / "results.md").read_text()
    head = "| prefix.length | n | BLEU | NIST | METEOR | ROUGE-L | CIDEr | dev loss | fit time (s) "
    head += "| wall time (s) | peak RSS MiB | stored params | stored % | trainable params "
    head += "| trainable % |"
    assert head in text
    # n counts the run without run.json (BLEU over 3 runs); the costs are over the other two:
    # fit 100, 110: 105 ± 7.07; wall 150, 170: 160 ± 14.14; RSS 2000, 2100: 2050 ± 70.71
    row5 = "| 5 | 3 | 61.00 ± 1.00 | 8.000 ± 0.000 | 0.4500 ± 0.0000 | 0.7000 ± 0.0000 "
    row5 += "| 2.400 ± 0.000 | 1.000 ± 0.000 | 105.00 ± 7.07 | 160.00 ± 14.14 | 2050.00 ± 70.71 "
    row5 += "| 5,000 | 0.5000 | 100,000 | 10.00 |"
    assert row5 in text
    assert "| 210.00 ± 14.14 | 310.00 ± 14.14 | 3000.00 ± 0.00 | 10,000 | 1.000 | 200,000 |" in text
    assert "| 20 | 1 | 64.00 |" in text
    (row20,) = [line for line in text.splitlines() if line.startswith("| 20 |")]
    assert row20.endswith("| 1.000 | - | - | - | - | - | - | - |")  # dev loss, then 7 costs
    assert "fit time = the training loop alone" in text and "wall time = the whole run" in text


def test_cost_columns_in_runs_csv(costed_sweep):
    result = collect(costed_sweep)
    with open(result["out"] / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, lines = reader.fieldnames, list(reader)
    assert len(lines) == 8
    costs = ["fit_time_s", "wall_time_s", "peak_rss_mb", "stored_params", "stored_pct"]
    costs += ["trainable_params", "trainable_pct"]
    assert fields[-len(costs) :] == costs  # after every score
    assert fields.index("test/bleu") < fields.index("fit_time_s")
    five = [line for line in lines if line["prefix.length"] == "5"]
    assert [line["fit_time_s"] for line in five] == ["100.0", "110.0", ""]
    assert [line["trainable_pct"] for line in five] == ["10.0", "10.0", ""]
    assert all(line[k] == "" for line in lines if line["prefix.length"] == "20" for k in costs)


def test_resumed_run_has_wall_time_but_no_fit_time():
    """A resumed run's phases cover its last segment only: no fit time rather than too little."""
    resumed = costs_of(run_info(30.0, 500.0, 5, resumed_from_step=40))
    assert "fit_time_s" not in resumed and resumed["wall_time_s"] == 500.0
    assert costs_of(run_info(30.0, 500.0, 5))["fit_time_s"] == 30.0
    assert costs_of(None) == {} and costs_of(["not", "a", "dict"]) == {}
    old = {"wall_time_s": 9.0, "memory": {"cpu_max_rss_mb": 1.5}, "parameters": {"stored": 3}}
    assert costs_of(old) == {"wall_time_s": 9.0, "peak_rss_mb": 1.5, "stored_params": 3.0}


def test_unreadable_run_json_leaves_costs_empty(tmp_path):
    add_run(tmp_path, 1, 1, 50.0, '{"status": "finished", "wall_ti')  # cut by a killed job
    add_run(tmp_path, 5, 1, 60.0, run_info(10.0, 20.0, 5))
    result = collect(tmp_path)
    assert result["runs"] == 2
    (table,) = result["tables"]
    assert [r.runs[0].costs for r in table.rows][0] == {}
    assert "| 1 | 1 | 50.00 |" in (result["out"] / "results.md").read_text()


def test_gpu_runs_show_the_gpu_peak(tmp_path):
    add_run(tmp_path, 1, 1, 50.0, run_info(10.0, 20.0, 1, rss=4000.0, gpu=812.5))
    add_run(tmp_path, 5, 1, 60.0, run_info(10.0, 20.0, 5, rss=4100.0, gpu=900.0))
    result = collect(tmp_path)
    (table,) = result["tables"]
    assert "peak_gpu_mb" in table.costs and "peak_rss_mb" not in table.costs
    text = (result["out"] / "results.md").read_text()
    assert "| peak GPU MiB |" in text and "peak RSS" not in text and "| 812.50 |" in text
    with open(result["out"] / "runs.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert first["peak_gpu_mb"] == "812.5" and first["peak_rss_mb"] == "4000.0"
    # the CPU peak is not a column but still a cost the Pareto plot may use
    again = collect(tmp_path, pareto_cost="peak_rss_mb")
    assert [p.cost for p in again["pareto"]["e2e"].points] == [4000.0, 4100.0]
    assert_png(again["out"] / "pareto_bleu.png")


def test_without_any_run_json_no_cost_columns_and_no_pareto(tmp_path):
    add_run(tmp_path, 1, 1, 50.0, None)
    add_run(tmp_path, 5, 1, 60.0, None)
    result = collect(tmp_path)
    assert result["tables"][0].costs == [] and result["pareto"] == {"e2e": None}
    text = (result["out"] / "results.md").read_text()
    assert "| prefix.length | n | BLEU | NIST | METEOR | ROUGE-L | CIDEr | dev loss |\n" in text
    assert "Costs from run.json" not in text and not list(result["out"].glob("pareto_*"))


# ---- the Pareto front ---------------------------------------------------------------------------


def test_pareto_front_on_numbers():
    costs = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0, 0.5]
    bleu = [50.0, 60.0, 55.0, 70.0, 58.0, 70.0, 40.0]
    # 3 (cost 3, 55) and 4 (cost 2, 58) lose to 1 (cost 2, 60); 5 costs more than 3 for 70
    assert pareto_front(costs, bleu) == [6, 0, 1, 3]
    # lower is better (a loss): (1, 2.0), (2, 1.5) on it; (3, 1.8) and (4, 1.5) not
    assert pareto_front([1, 2, 3, 4], [2.0, 1.5, 1.8, 1.5], higher_is_better=False) == [0, 1]
    assert pareto_front([1, 1, 2], [5.0, 5.0, 4.0]) == [0, 1]  # identical points: both
    assert pareto_front([3, 1], [1.0, 1.0]) == [1]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def test_pareto_plot_and_front_of_a_sweep(costed_sweep):
    result = collect(costed_sweep)
    front = result["pareto"]["e2e"]
    assert (front.cost, front.metric) == ("trainable_pct", "test/bleu")
    # L=20 has no cost; L=40 (80 %, 63) loses to L=10 (20 %, 65.5)
    assert [p.row.setting for p in front.points] == [("1",), ("5",), ("10",), ("40",)]
    assert [front.points[i].row.setting for i in front.front] == [("1",), ("5",), ("10",)]
    assert front.points[1].score == 61.0 and front.points[1].cost == 10.0
    assert_png(result["out"] / "pareto_bleu.png")
    assert result["out"] / "pareto_bleu.png" in result["files"]
    text = (result["out"] / "results.md").read_text()
    line = "Pareto front of BLEU vs trainable % (`pareto_bleu.png`): `prefix.length=1`, "
    assert line + "`prefix.length=5`, `prefix.length=10`." in text


def test_pareto_cost_option_and_metric(costed_sweep, capsys):
    main([str(costed_sweep), "--pareto-cost", "wall_time_s", "--metric", "nist"])
    printed = capsys.readouterr().out
    assert "Pareto front of NIST vs wall time (s) (`pareto_nist.png`)" in printed
    assert_png(costed_sweep / "collected" / "pareto_nist.png")
    with pytest.raises(SystemExit) as err:
        main([str(costed_sweep), "--pareto-cost", "peak_gpu_mb"])
    assert err.value.code == 2
    assert "no run records peak_gpu_mb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(costed_sweep), "--pareto-cost", "bleu"])  # not a cost: argparse refuses


def test_pareto_uses_time_when_every_setting_trains_the_same(tmp_path):
    """An initialisation sweep: equal parameter counts, so the x axis is the fit time."""
    for num, (init, fit, bleu) in enumerate([("random", 100.0, 50.0), ("text", 90.0, 60.0)]):
        write_run(
            tmp_path / str(num),
            [f"prefix_init={init}"],
            {"test": e2e_scores(bleu)},
            run_info=run_info(fit, fit + 50.0, 10),
        )
    result = collect(tmp_path)
    front = result["pareto"]["e2e"]
    assert front.cost == "fit_time_s"
    assert [front.points[i].row.setting for i in front.front] == [("text",)]
    assert_png(result["out"] / "pareto_bleu.png")


def test_pareto_needs_two_settings_with_the_cost(tmp_path):
    add_run(tmp_path, 1, 1, 50.0, run_info(10.0, 20.0, 1))
    add_run(tmp_path, 5, 1, 60.0, None)
    result = collect(tmp_path)
    assert result["pareto"] == {"e2e": None}
    assert not list(result["out"].glob("*pareto*"))


def test_pareto_per_task_main_metric_and_prefixed_files(tmp_path):
    """BLEU over WebNLG's whole test set, ROUGE-L for XSum; file names prefixed by task."""
    num = 0
    for length in (1, 5):
        webnlg = {
            sub: {"bleu": 40.0 + length + i, "ter": 0.4}
            for i, sub in enumerate(("seen", "unseen", "all"))
        }
        xsum = {"rouge1": 40.0, "rouge2": 18.0, "rougeL": 30.0 + length, "rougeLsum": 31.0}
        for task, scores in (("webnlg", webnlg), ("xsum", xsum)):
            write_run(
                tmp_path / str(num),
                [f"prefix.length={length}"],
                {"test": scores},
                task=task,
                run_info=run_info(10.0 * length, 20.0 * length, length),
            )
            num += 1
    result = collect(tmp_path)
    assert result["pareto"]["webnlg"].metric == "test/all/bleu"
    assert result["pareto"]["xsum"].metric == "test/rougeL"
    assert_png(result["out"] / "webnlg_pareto_bleu_all.png")
    assert_png(result["out"] / "xsum_pareto_rougel.png")
    assert plan(result["tables"][0], "stored_params").cost == "stored_params"
    text = (result["out"] / "results.md").read_text()
    assert "Pareto front of ROUGE-L vs trainable % (`xsum_pareto_rougel.png`)" in text
    assert json.loads(json.dumps(result["prefixes"])) == {"webnlg": "webnlg_", "xsum": "xsum_"}
