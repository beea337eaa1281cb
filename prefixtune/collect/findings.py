"""findings.md: each of the paper's claims against the measured, paired differences.

A claim names the key it is about and the two values it orders ("prefix-tuning beats
fine-tuning": ``method``, A = ``prefix``, B = ``finetune``), optionally the context it holds in
(low data or not).  Every pair of settings that differ only in that key, with those two values
(prefixtune.collect.compare), is one test of the claim, on the task's main metric (BLEU; ROUGE-L
for XSum): the difference A - B, its 95% paired bootstrap interval and p.  The verdict:

* "better" claims: **holds** when A is significantly better (p < 0.05), **does not hold** when
  B is, **cannot tell at this size** otherwise;
* "similar" claims (a gap that closes): **holds** when the difference is not significant and
  its interval lies within ± ``margin``, **does not hold** when it is significant, **cannot
  tell** when the interval is wider than the margin.

A pair also tests a claim when its settings differ in another key (``experiment``, as in the
paper's table 1, where each method keeps its own hyperparameters) and the runs' resolved configs
differ in the claim's ``config_key`` (``method.name``); the table names both.  A claim without a
matching pair is listed as not measured by these runs.  A setting without a
key shows "-" for it, so runs of the prefix method that never set ``method`` pair with
``method=finetune`` runs as "-" vs "finetune": ``-`` stands for the key's default value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prefixtune.collect.compare import Comparison, Pair
from prefixtune.collect.tables import Row, Table, main_metric, metric_label
from prefixtune.metrics.significance import Difference


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim, with where it says it
    key: str
    a: tuple[str, ...]  # values of A (the one claimed better); "-" = the key left at its default
    b: tuple[str, ...]
    context: str = ""  # "low_data": only pairs with train.low_data set; "full": only without
    kind: str = "better"  # or "similar"
    margin: float = 0.0  # "similar": the interval must lie within ± margin (main metric units)
    # the resolved config's key holding the claim's value, for pairs apart in another key
    config_key: str = ""


LOW = "train.low_data"
CLAIMS = (
    Claim(
        "Prefix-tuning beats full fine-tuning on table-to-text with the full data (table 1; "
        "E2E BLEU 69.7 vs 68.2, GPT-2 medium)",
        "method",
        ("prefix", "-"),
        ("finetune",),
        context="full",
        config_key="method.name",
    ),
    Claim(
        "Prefix-tuning beats FT-top2 (table 1; E2E BLEU 69.7 vs 68.1)",
        "method",
        ("prefix", "-"),
        ("ft_top2",),
        context="full",
        config_key="method.name",
    ),
    Claim(
        "Prefix beats infix at the same length (section 7.2; E2E INFIX-10 67.2 BLEU)",
        "prefix.mode",
        ("prefix", "-"),
        ("infix",),
    ),
    Claim(
        "Infix beats embedding-only (section 7.2; INFIX-10 67.2 vs EMB-10 62.2 BLEU)",
        "prefix.mode",
        ("infix",),
        ("embedding",),
    ),
    Claim(
        "Prefix beats embedding-only (section 7.2; prefix 69.7 vs EMB-10 62.2 BLEU)",
        "prefix.mode",
        ("prefix", "-"),
        ("embedding",),
    ),
    Claim(
        "Longer prefixes help up to the threshold, about 10 for table-to-text (figure 4): "
        "L=10 beats L=1",
        "prefix.length",
        ("10",),
        ("1",),
    ),
    Claim(
        "... and L=10 beats L=5 (figure 4)",
        "prefix.length",
        ("10",),
        ("5",),
    ),
    Claim(
        "Past the threshold quality dips slightly (figure 4): L=10 beats L=40",
        "prefix.length",
        ("10",),
        ("40",),
    ),
    Claim(
        "In low data (50-200 examples) prefix-tuning beats fine-tuning (figure 3)",
        "method",
        ("prefix", "-"),
        ("finetune",),
        context="low_data",
        config_key="method.name",
    ),
    Claim(
        "Initialising with real words beats random initialisation in low data (figure 5): "
        '"table-to-text:" vs random',
        "prefix_init",
        ("table-to-text",),
        ("random",),
    ),
    Claim(
        'Unrelated real words beat random too (figure 5): "elephant" vs random',
        "prefix_init",
        ("elephant",),
        ("random",),
    ),
    Claim(
        'Task words slightly beat unrelated words (figure 5): "table-to-text:" vs "elephant"',
        "prefix_init",
        ("table-to-text",),
        ("elephant",),
    ),
)
HOLDS, FAILS, UNSURE = "holds", "does not hold", "cannot tell at this size"


def verdict(claim: Claim, diff: Difference, higher_better: bool = True) -> str:
    gain = diff.delta if higher_better else -diff.delta
    if claim.kind == "similar":
        if diff.significant:
            return FAILS
        return HOLDS if -claim.margin <= diff.low and diff.high <= claim.margin else UNSURE
    if not diff.significant:
        return UNSURE
    return HOLDS if gain > 0 else FAILS


def _resolved(row: Row, key: str) -> str | None:
    """The one value ``key`` has in the resolved configs of all of ``row``'s runs, else None."""
    values = {run.config.get(key) for run in row.runs}
    return values.pop() if len(values) == 1 else None


def _matches(claim: Claim, table: Table, pair: Pair) -> tuple[bool, str, str] | None:
    """(True: A is pair.a, False: the pair is the other way round; pair.a's and pair.b's values
    of the claim's key), or None when the pair does not test this claim."""
    if pair.key == claim.key:
        i = table.keys.index(pair.key)
        a, b = pair.a.setting[i], pair.b.setting[i]
    elif claim.config_key:
        a, b = _resolved(pair.a, claim.config_key), _resolved(pair.b, claim.config_key)
        if a is None or b is None or a == b:
            return None
    else:
        return None
    if LOW in table.keys:
        low = pair.a.setting[table.keys.index(LOW)]
        in_low = low not in ("-", "0")
        if (claim.context == "low_data" and not in_low) or (claim.context == "full" and in_low):
            return None
    elif claim.context == "low_data":
        return None
    if a in claim.a and b in claim.b:
        return True, a, b
    if b in claim.a and a in claim.b:
        return False, a, b
    return None


def _flip(d: Difference) -> Difference:
    return Difference(d.b, d.a, -d.delta, -d.high, -d.low, d.p, d.n_samples)


def findings(tables: Sequence[Table], comparisons: Mapping[str, Comparison]) -> str | None:
    """findings.md, or None when no pair of settings tests any claim."""
    lines = []
    tested = 0
    for table in tables:
        comparison = comparisons.get(table.task)
        metric = main_metric(table)
        if comparison is None or metric is None:
            continue
        label = metric_label(metric)
        lines += [
            f"## {table.task}: {label}, {comparison.n_inputs} test inputs",
            "",
            f"| claim | setting pair (A vs B) | A | B | Δ {label} [95% CI] | p | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for claim in CLAIMS:
            found = []
            for pair in comparison.pairs:
                match = _matches(claim, table, pair)
                if match is None or metric not in pair.diffs:
                    continue
                way, va, vb = match
                diff = pair.diffs[metric] if way else _flip(pair.diffs[metric])
                a, b = (pair.a, pair.b) if way else (pair.b, pair.a)
                va, vb = (va, vb) if way else (vb, va)
                found.append((pair.key, a, b, va, vb, diff))
            if not found:
                lines.append(f"| {claim.text} | not measured by these runs | | | | | |")
                continue
            for key, a, b, va, vb, diff in found:
                tested += 1
                i = table.keys.index(key)
                rest = [
                    f"{k}={v}"
                    for j, (k, v) in enumerate(zip(table.keys, a.setting, strict=True))
                    if j != i and v != "-"
                ]
                where = f"`{key}` {a.setting[i]} vs {b.setting[i]}"
                if key != claim.key:  # apart in another key that sets the claim's
                    where += f" ({claim.config_key} {va} vs {vb})"
                if rest:
                    where += f" ({', '.join(rest)})"
                lines.append(
                    f"| {claim.text} | {where} | {diff.a:.2f} (n={len(a.runs)}) | "
                    f"{diff.b:.2f} (n={len(b.runs)}) | {diff.delta:+.2f} "
                    f"[{diff.low:+.2f}, {diff.high:+.2f}] | {diff.p:.3f} | "
                    f"**{verdict(claim, diff)}** |"
                )
        lines.append("")
    if not tested:
        return None
    head = [
        "# The paper's findings, tested",
        "",
        "Each claim of Li & Liang (2021) against every pair of settings here that differ only in "
        "the claim's key, or in a key that sets it (`experiment`, each method with its own "
        "hyperparameters, as in the paper's table 1). A and B: the setting means of the main "
        "metric (n runs each); Δ: A − B "
        "with its 95% paired bootstrap interval over the test inputs and the paired bootstrap "
        "p-value (sacrebleu's --paired-bs procedure, 1000 resamples; "
        "prefixtune.metrics.significance). Verdict: **holds** when A is significantly better "
        "(p < 0.05), **does not hold** when B is, **cannot tell at this size** otherwise. The "
        "interval covers the sampling of test inputs, not of seeds: the seed spread is in "
        "results.md (± std). `-` is a key left at its default (`method` -: prefix-tuning, "
        "`prefix.mode` -: prefix).",
        "",
    ]
    return "\n".join(head + lines)
