"""Per-input statistics (prefixtune.metrics.stats): their sums give back every official score.

The significance tests resample these rows instead of calling the scorers again, so each
metric's corpus score from the rows must equal the scorer's own, on every task, for the whole
set and for subsets (WebNLG seen / unseen; METEOR on random subsets against the jar's EVAL).
Real data, the scorer-fidelity systems (scripts/scorer_systems.py), first inputs only.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
from conftest import DATA_ROOT, REPO

from prefixtune.metrics import ScoreError, score_many_with_stats
from prefixtune.metrics.meteor import meteor_from, meteor_rows
from prefixtune.metrics.stats import InputStats, fingerprint, read_stats, score_of, write_stats

sys.path.insert(0, str(REPO / "scripts"))
import scorer_systems  # noqa: E402

N = {"e2e": 80, "webnlg": 120, "dart": 120, "xsum": 60}
SYSTEMS = ("template", "edge", "project")


@pytest.fixture(scope="module", params=sorted(N))
def scored(request):
    task = request.param
    bundle = scorer_systems.build(task, DATA_ROOT)
    total = len(bundle.refs)
    idx = [*range(N[task] // 2), *range(total - N[task] // 2, total)]  # WebNLG: seen and unseen
    seen = [bundle.seen[i] for i in idx] if bundle.seen is not None else None
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    systems = [(pick(bundle.systems[s]), pick(bundle.refs), seen) for s in SYSTEMS]
    return task, systems, score_many_with_stats(task, systems)


def flat(scores: dict) -> dict[str, float]:
    out = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in value.items() if v is not None})
        elif value is not None:
            out[key] = value
    return out


def test_rows_give_back_every_score(scored):
    task, systems, results = scored
    for (hyps, refs, _), (scores, stats) in zip(systems, results, strict=True):
        official = flat(scores)
        from_rows = stats.scores()
        assert stats.n == len(hyps) and stats.inputs == fingerprint(refs)
        # every score the scorer reports has rows, and they give it back
        assert set(from_rows) == set(official)
        assert task != "webnlg" or {"seen/ter", "unseen/ter"} <= set(from_rows)
        for key, value in from_rows.items():
            assert value == pytest.approx(official[key], rel=1e-9, abs=1e-12), (task, key)


def test_round_trip_through_the_file(scored, tmp_path):
    _, _, results = scored
    stats = results[0][1]
    write_stats(tmp_path / "s.json", stats)
    back = read_stats(tmp_path / "s.json")
    assert back.task == stats.task and back.groups == stats.groups and back.inputs == stats.inputs
    assert back.scores() == stats.scores()


def test_meteor_from_rows_equals_the_jar_on_random_subsets():
    bundle = scorer_systems.build("e2e", DATA_ROOT)
    hyps, refs = bundle.systems["template"][:150], bundle.refs[:150]
    rng = random.Random(0)
    subsets = {f"s{k}": sorted(rng.sample(range(150), rng.randint(1, 60))) for k in range(8)}
    subsets["perfect"] = [0]
    # a perfect match, whose chunk the jar leaves out of the sums
    hyps = [refs[0][0], *hyps[1:]]
    scores, rows = meteor_rows(hyps, refs, normalize=True, subsets=subsets)
    assert rows[0][20] == 0.0 and scores["perfect"] == pytest.approx(1.0)
    for name, idx in {"all": range(150), **subsets}.items():
        sums = np.asarray(rows)[list(idx)].sum(0)
        assert meteor_from(sums) == pytest.approx(scores[name], rel=1e-12, abs=1e-15), name


def test_bootstrap_resample_is_just_sums():
    # a resample with repeats: the score of the repeated rows' sums, as if the inputs repeated
    stats = InputStats("xsum", {"rouge1": ("mean_x100", np.array([[0.5, 1.0], [1.0, 1.0]]))})
    assert score_of("mean_x100", stats.metrics["rouge1"][1][[0, 0, 1]].sum(0)) == pytest.approx(
        100 * 2 / 3
    )


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[]", "not a prefixtune-input-stats file"),
        ('{"format": "prefixtune-input-stats", "version": 9}', "version 9"),
        (
            '{"format": "prefixtune-input-stats", "version": 1, "n": 1, '
            '"metrics": {"bleu": {"kind": "exec", "rows": [[1]]}}}',
            "unknown kind 'exec'",
        ),
        (
            '{"format": "prefixtune-input-stats", "version": 1, "n": 2, '
            '"metrics": {"bleu": {"kind": "mean", "rows": [[1, 1]]}}}',
            "1 rows, not 2",
        ),
        (
            '{"format": "prefixtune-input-stats", "version": 1, "n": 1, "groups": {"seen": [5]}, '
            '"metrics": {"bleu": {"kind": "mean", "rows": [[1, 1]]}}}',
            "malformed groups",
        ),
        ("{not json", "cannot read"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "stats.json"
    path.write_text(content)
    with pytest.raises(ScoreError) as err:
        read_stats(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    json.dumps(str(err.value))
