"""Paired bootstrap resampling (prefixtune.metrics.significance) and what prefixtune-collect
makes of it: intervals per setting, paired differences, findings.md verdicts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest
from test_collect import assert_png, e2e_scores, write_run

from prefixtune.collect import collect
from prefixtune.metrics import significance as sig
from prefixtune.metrics.bleu import bleu_rows, ref_streams
from prefixtune.metrics.stats import FORMAT, VERSION

WORDS = "the a cheap pub near river centre family friendly serves food coffee shop".split()


def sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def test_equals_sacrebleu_paired_bs_on_bleu():
    rng = random.Random(3)
    refs = [[r] for r in sentences(rng, 200)]
    pairs = list(zip(refs, sentences(rng, 200), strict=True))
    base = [r[0] if rng.random() < 0.3 else s for r, s in pairs]
    system = [r[0] if rng.random() < 0.4 else s for r, s in pairs]
    rows = {
        name: np.asarray(bleu_rows(hyps, refs, tokenize="13a", lowercase=False))
        for name, hyps in (("base", base), ("system", system))
    }
    counts = sig.resample_counts(200)
    diff = sig.paired_bootstrap("sacrebleu_bleu", [rows["system"]], [rows["base"]], counts)
    est = sig.estimate("sacrebleu_bleu", [rows["system"]], counts)
    test = PairedTest(
        [("base", base), ("system", system)],
        {"BLEU": BLEU()},
        ref_streams(refs),
        test_type="bs",
        n_samples=1000,
    )
    _, results = test()
    theirs = results["BLEU"][1]
    assert diff.a == pytest.approx(theirs.score, abs=1e-9)
    assert diff.p == theirs.p_value
    # sacrebleu sums float32 and reports mean and half-width: equal to float32 precision
    assert est.mean == pytest.approx(theirs.mean, rel=1e-6)
    assert (est.high - est.low) / 2 == pytest.approx(theirs.ci, rel=1e-5)


def mean_rows(values) -> np.ndarray:
    return np.array([[float(v), 1.0] for v in values])


def test_identical_systems_differ_by_nothing():
    rows = mean_rows(np.random.default_rng(0).random(100))
    diff = sig.paired_bootstrap("mean", [rows], [rows], sig.resample_counts(100))
    assert diff.delta == 0 and diff.low == 0 and diff.high == 0
    assert diff.p == 1.0 and not diff.significant


def test_a_clear_difference_and_a_noisy_one():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    counts = sig.resample_counts(300)
    clear = sig.paired_bootstrap("mean", [mean_rows(base + 0.1)], [mean_rows(base)], counts)
    assert clear.delta == pytest.approx(0.1) and clear.p == 1 / 1001 and clear.low > 0
    noisy = base + rng.normal(0, 0.3, 300)
    noisy += base.mean() - noisy.mean()  # the same mean: no real difference
    tie = sig.paired_bootstrap("mean", [mean_rows(noisy)], [mean_rows(base)], counts)
    # sacrebleu's rule compares the observed gap with the centred |resampled gaps|: a gap of ~0
    # is exceeded by roughly the half of them above their mean
    assert abs(tie.delta) < 1e-9 and tie.p > 0.3 and tie.low < 0 < tie.high


def test_a_setting_of_several_runs_is_their_mean():
    rng = np.random.default_rng(2)
    runs = [mean_rows(rng.random(50)) for _ in range(3)]
    counts = sig.resample_counts(50)
    one = [sig.resampled("mean", r, counts) for r in runs]
    assert np.allclose(sig.setting_scores("mean", runs, counts), np.mean(one, axis=0))
    est = sig.estimate("mean", runs, counts)
    assert est.score == pytest.approx(np.mean([r[:, 0].mean() for r in runs]))
    assert est.low < est.score < est.high


def write_stats_file(folder: Path, bleu_per_input, inputs: str = "refs-1") -> None:
    rows = [[float(v), 1.0] for v in bleu_per_input]
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "task": "e2e",
        "n": len(rows),
        "inputs": inputs,
        "groups": {},
        "metrics": {"bleu": {"kind": "mean", "rows": rows}},
    }
    (folder / "stats_test.json").write_text(json.dumps(obj))


def init_sweep(tmp_path: Path, with_stats: bool = True) -> Path:
    """An initialisation sweep: random clearly worse, two real-word inits close to each other."""
    root = tmp_path / "sweep"
    rng = np.random.default_rng(5)
    quality = {"random": 40.0, "table-to-text": 60.0, "elephant": 60.2}
    k = 0
    for seed in (1, 2):
        for init, level in quality.items():
            per_input = level + rng.normal(0, 15, 400)
            folder = write_run(
                root / str(k),
                [f"prefix_init={init}", f"seed={seed}", "train.low_data=100"],
                {"test": e2e_scores(float(per_input.mean()))},
            )
            if with_stats:
                write_stats_file(folder, per_input)
            k += 1
    return root


def test_collect_reports_intervals_pairs_and_findings(tmp_path):
    result = collect(init_sweep(tmp_path), tmp_path / "out")
    text = (tmp_path / "out" / "results.md").read_text()
    assert "BLEU 95% CI" in text and "settings one key apart" in text
    lines = {line.split("|")[2].strip() + "/" + line.split("|")[3].strip(): line
             for line in text.splitlines() if line.startswith("| `prefix_init`")}  # fmt: skip
    assert set(lines) == {"table-to-text/random", "elephant/random", "elephant/table-to-text"}
    assert "**+" in lines["table-to-text/random"] and "p=0.001" in lines["table-to-text/random"]
    assert "\\*" not in lines["elephant/table-to-text"].split("|")[5]  # BLEU: not significant
    findings = (tmp_path / "out" / "findings.md").read_text()
    rows = [line for line in findings.splitlines() if line.startswith("| ")]

    def verdict(claim: str) -> str:
        (row,) = [r for r in rows if r.split("|")[1].strip().startswith(claim)]
        return row

    assert "**holds**" in verdict("Initialising with real words beats random")
    assert "**holds**" in verdict("Unrelated real words beat random too")
    assert "**cannot tell at this size**" in verdict("Task words slightly beat unrelated words")
    assert "not measured by these runs" in verdict("Prefix-tuning beats FT-top2")
    assert tmp_path / "out" / "findings.md" in result["files"]
    assert_png(tmp_path / "out" / "init.png")


def test_claim_against_the_data_does_not_hold(tmp_path):
    root = tmp_path / "sweep"
    rng = np.random.default_rng(7)
    for k, (length, level) in enumerate((("10", 50.0), ("40", 58.0))):
        per_input = level + rng.normal(0, 10, 300)
        folder = write_run(root / str(k), [f"prefix.length={length}"],
                           {"test": e2e_scores(float(per_input.mean()))})  # fmt: skip
        write_stats_file(folder, per_input)
    collect(root, tmp_path / "out")
    findings = (tmp_path / "out" / "findings.md").read_text()
    line = next(x for x in findings.splitlines() if "L=10 beats L=40" in x)
    delta = float(line.split("|")[5].split()[0])
    assert "**does not hold**" in line and -9.5 < delta < -6.5  # the true gap is -8


def test_experiments_that_set_the_method_test_the_method_claims(tmp_path):
    # as in the paper's table 1 (and scripts/findings_cpu.sh's budget part): each method is its
    # own experiment file with its own hyperparameters, so the settings differ in `experiment`;
    # the runs' resolved method.name makes the pairs tests of the method claims
    root = tmp_path / "sweep"
    rng = np.random.default_rng(11)
    levels = {"cpu_prefix": ("prefix", 62.0), "cpu_finetune": ("finetune", 55.0),
              "cpu_ft_top2": ("ft_top2", 62.3)}  # fmt: skip
    k = 0
    for seed in (1, 2):
        for experiment, (method, level) in levels.items():
            per_input = level + rng.normal(0, 10, 400)
            folder = write_run(
                root / str(k),
                [f"experiment={experiment}", f"seed={seed}", "train.max_minutes=30"],
                {"test": e2e_scores(float(per_input.mean()))},
                config={"method": {"name": method}, "prefix": {"mode": "prefix"}},
            )
            write_stats_file(folder, per_input)
            k += 1
    collect(root, tmp_path / "out")
    rows = [x for x in (tmp_path / "out" / "findings.md").read_text().splitlines()
            if x.startswith("| ")]  # fmt: skip

    def row(claim: str) -> str:
        (found,) = [r for r in rows if r.split("|")[1].strip().startswith(claim)]
        return found

    full = row("Prefix-tuning beats full fine-tuning on table-to-text with the full data")
    assert "`experiment` cpu_prefix vs cpu_finetune (method.name prefix vs finetune)" in full
    assert "**holds**" in full and float(full.split("|")[5].split()[0]) > 4
    top2 = row("Prefix-tuning beats FT-top2")
    assert "`experiment` cpu_prefix vs cpu_ft_top2" in top2  # A is prefix, though swept first
    assert "**cannot tell at this size**" in top2
    assert "not measured" in row("In low data (50-200 examples)")  # no train.low_data here
    assert "not measured" in row("Prefix beats infix")  # prefix.mode never differs


def test_runs_without_statistics_still_collect(tmp_path):
    collect(init_sweep(tmp_path, with_stats=False), tmp_path / "out")
    text = (tmp_path / "out" / "results.md").read_text()
    assert "95% CI" not in text and "one key apart" not in text
    assert not (tmp_path / "out" / "findings.md").exists()
    assert_png(tmp_path / "out" / "init.png")


def test_runs_on_other_inputs_are_not_compared(tmp_path):
    root = tmp_path / "sweep"
    for k, (init, inputs) in enumerate((("random", "refs-1"), ("elephant", "refs-2"))):
        folder = write_run(root / str(k), [f"prefix_init={init}"], {"test": e2e_scores(50.0)})
        write_stats_file(folder, [50.0] * 20, inputs=inputs)
    result = collect(root, tmp_path / "out")
    assert result["comparisons"]["e2e"].pairs == []
