"""Our scorers against the official ones on seven varied systems per task (issue 14).

The system outputs are regenerated from ../shared/data by scripts/scorer_systems.py; the
official scores (tests/data/scorer_fidelity/official.json) were printed by the official scorers
themselves, run from their public repositories (commands in that folder's README.md).  Each of
ours must equal the official number at the precision the official tool prints it: BLEU to 0.01
(multi-bleu) or 0.0001 (the E2E scorer, on 0-1), METEOR, ROUGE-L, NIST, CIDEr and TER (our own
re-implementation of tercom 0.7.25, prefixtune/metrics/ter.py) to 0.0001.  One scoring run per task:
the Java tools start once for all systems (``score_many``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import DATA_ROOT, REPO

from prefixtune.metrics import score_many
from prefixtune.metrics.nist import corpus_nist

sys.path.insert(0, str(REPO / "scripts"))
import scorer_systems  # noqa: E402

OFFICIAL = json.loads(
    (Path(__file__).parent / "data" / "scorer_fidelity" / "official.json").read_text()
)


def half_unit(printed: str) -> float:
    """Half a unit of the last printed digit: "0.7203" -> 0.00005, "9.29" -> 0.005."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 0.5 * 10.0 ** -min(decimals, 4) + 1e-9


def check(ours: float, printed: str, what: str) -> None:
    official = float(printed)
    assert abs(ours - official) <= half_unit(printed), (
        f"{what}: ours {ours:.6f}, official {printed}"
    )


class Scores:
    """Our scores per task, computed on first use: one ``score_many`` call per task."""

    def __init__(self) -> None:
        self.bundles: dict = {}
        self.results: dict = {}

    def bundle(self, task: str):
        if task not in self.bundles:
            self.bundles[task] = scorer_systems.build(task, DATA_ROOT)
        return self.bundles[task]

    def __getitem__(self, task: str) -> dict:
        if task not in self.results:
            b = self.bundle(task)
            names = list(b.systems)
            results = score_many(task, [(b.systems[n], b.refs, b.seen) for n in names])
            self.results[task] = dict(zip(names, results, strict=True))
        return self.results[task]


@pytest.fixture(scope="module")
def ours() -> Scores:
    return Scores()


def test_systems_match_the_expectations(ours):
    # Every system the script builds has official numbers, and the other way round.
    for task in scorer_systems.TASKS:
        b = ours.bundle(task)
        assert set(b.systems) == set(OFFICIAL[task]), task
        assert len(b.systems) >= 6


E2E_KEYS = {
    "BLEU": "bleu",
    "NIST": "nist",
    "METEOR": "meteor",
    "ROUGE_L": "rouge_l",
    "CIDEr": "cider",
}


@pytest.mark.parametrize("system", sorted(OFFICIAL["e2e"]))
def test_e2e_python_mode(ours, system):
    printed = OFFICIAL["e2e"][system]["python"]
    for name, key in E2E_KEYS.items():
        value = ours["e2e"][system][key] / (100 if key == "bleu" else 1)
        check(value, printed[name], f"e2e/{system}/{name}")


@pytest.mark.parametrize("system", sorted(OFFICIAL["e2e"]))
def test_e2e_perl_mode_nist(ours, system):
    b = ours.bundle("e2e")
    value = corpus_nist(b.systems[system], b.refs, mode="perl")
    check(value, OFFICIAL["e2e"][system]["perl"]["NIST"], f"e2e/{system}/NIST(perl)")


@pytest.mark.parametrize("system", sorted(OFFICIAL["webnlg"]))
def test_webnlg(ours, system):
    for part in ("all", "seen", "unseen"):
        for key in ("bleu", "meteor", "ter"):
            printed = OFFICIAL["webnlg"][system][part][key]
            check(ours["webnlg"][system][part][key], printed, f"webnlg/{system}/{part}/{key}")


@pytest.mark.parametrize("system", sorted(OFFICIAL["dart"]))
def test_dart(ours, system):
    for key in ("bleu", "meteor", "ter"):
        check(ours["dart"][system][key], OFFICIAL["dart"][system][key], f"dart/{system}/{key}")


@pytest.mark.parametrize("system", sorted(OFFICIAL["xsum"]))
def test_xsum(ours, system):
    for key in ("rouge1", "rouge2", "rougeL"):
        check(
            ours["xsum"][system][key], OFFICIAL["xsum"][system]["mean"][key], f"xsum/{system}/{key}"
        )
