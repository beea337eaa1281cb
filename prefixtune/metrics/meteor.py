"""METEOR 1.5, computed by the original jar (the one pycocoevalcap ships), started once per call.

No Python METEOR reproduces the jar (NLTK's differs by 1 to 37 points: other stemmer, no
paraphrase table, per-sentence averaging), so we drive the jar through its ``-stdio`` protocol:
one ``SCORE ||| ref1 ||| ... ||| hyp`` line per segment returns that segment's sufficient
statistics (of its best reference), and ``EVAL ||| stats ||| stats ...`` returns the corpus score
computed from the summed statistics, exactly what file mode prints as "Final score".  Because the
statistics come back per segment, one jar run also scores any subsets (WebNLG seen / unseen).

Options by official scorer: E2E (pycocoevalcap) ``-l en -norm``; WebNLG 2017 ``-l en -norm -r 3``;
DART ``-l en -norm -r 8`` (see dart.py).  ``-r`` only tells file mode how many reference lines
belong to a segment, so in ``-stdio`` mode the references are simply listed on the segment's line.

The per-segment statistics are also kept (``meteor_rows``) so that a significance test can
resample segments without the jar: ``meteor_from`` computes the jar's corpus score from their
column sums, the way ``MeteorScorer.computeMetrics`` does (checked against the jar's EVAL in
tests/test_input_stats.py).  The 23 numbers of a segment: test and reference length, test and
reference function words, then per matcher stage (exact, stem, synonym, paraphrase) the test
and reference content-word and function-word matches, the chunks, and the test and reference
word matches.  The jar leaves out the chunk of a perfectly matching segment when it adds up
segments; its rows carry 0 chunks instead, so plain sums aggregate.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence

from prefixtune.metrics.errors import ScoreError
from prefixtune.metrics.java import bundled_jar, require_java

METEOR_JAR = "meteor/meteor-1.5.jar"

# The jar's parameters for ``-l en`` (task "default"): alpha, beta, gamma, delta and the weights
# of its four matcher stages.
PARAMETERS = {"alpha": 0.85, "beta": 0.20, "gamma": 0.60, "delta": 0.75}
STAGE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
STAGES = len(STAGE_WEIGHTS)
CHUNKS = 4 + 4 * STAGES  # the column of the chunk count


def _matches(row: Sequence[float]) -> tuple[float, float]:
    test = sum(row[4 + 4 * i] + row[6 + 4 * i] for i in range(STAGES))
    ref = sum(row[5 + 4 * i] + row[7 + 4 * i] for i in range(STAGES))
    return test, ref


def _perfect(row: Sequence[float]) -> bool:
    test, ref = _matches(row)
    return test == row[0] and ref == row[1] and row[CHUNKS] == 1


def meteor_from(sums: Sequence[float]) -> float:
    """The jar's corpus METEOR (0-1) from the column sums of ``meteor_rows``."""
    a, b, g, d = (PARAMETERS[k] for k in ("alpha", "beta", "gamma", "delta"))
    test_len = d * (sums[0] - sums[2]) + (1 - d) * sums[2]
    ref_len = d * (sums[1] - sums[3]) + (1 - d) * sums[3]
    test_w = sum(
        w * (d * sums[4 + 4 * i] + (1 - d) * sums[6 + 4 * i]) for i, w in enumerate(STAGE_WEIGHTS)
    )
    ref_w = sum(
        w * (d * sums[5 + 4 * i] + (1 - d) * sums[7 + 4 * i]) for i, w in enumerate(STAGE_WEIGHTS)
    )
    # Java's division by zero gives NaN or infinity, and a NaN score becomes 0
    if test_len == 0 or ref_len == 0 or test_w == 0 or ref_w == 0:
        return 0.0
    precision, recall = test_w / test_len, ref_w / ref_len
    fmean = 1.0 / ((1 - a) / precision + a / recall)
    words = (sums[CHUNKS + 1] + sums[CHUNKS + 2]) / 2
    if _perfect(sums):
        frag = 0.0
    elif words == 0:
        return 0.0
    else:
        frag = sums[CHUNKS] / words
    score = fmean * (1 - g * frag**b)
    return 0.0 if math.isnan(score) else max(score, 0.0)


def _clean(text: str) -> str:
    # "|||" is the protocol's field separator and a newline would end the request early.
    return " ".join(text.replace("|||", " ").split())


def meteor(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    *,
    normalize: bool,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """Corpus METEOR 1.5 of ``hyps`` against ``refs``, on 0-1.

    Returns ``{"all": score}`` plus one score per named subset of segment indices.  Every reference
    of a segment is passed in order (empty ones too, as the official reference files had them):
    the jar keeps the statistics of the best-scoring reference, first one on ties.
    """
    return meteor_rows(hyps, refs, normalize=normalize, subsets=subsets)[0]


def meteor_rows(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    *,
    normalize: bool,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, float], list[list[float]]]:
    """``meteor``'s scores (the jar's EVAL) and each segment's statistics (see above)."""
    if len(hyps) != len(refs):
        raise ScoreError(f"METEOR: {len(hyps)} outputs but {len(refs)} reference sets")
    jar = bundled_jar(METEOR_JAR)
    cmd = [require_java("METEOR 1.5"), "-Xmx2G", "-Dfile.encoding=UTF-8", "-jar", str(jar)]
    cmd += ["-", "-", "-stdio", "-l", "en"] + (["-norm"] if normalize else [])
    requests = [
        " ||| ".join(["SCORE", *(_clean(r) for r in seg_refs), _clean(hyp)]) + "\n"
        for hyp, seg_refs in zip(hyps, refs, strict=True)
    ]
    groups = {"all": range(len(hyps)), **(subsets or {})}

    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            cmd,
            cwd=jar.parent,  # the jar finds its paraphrase table relative to itself
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errfile,
        )
        assert proc.stdin is not None and proc.stdout is not None

        def read_line() -> str:
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                errfile.seek(0)
                tail = errfile.read().decode("utf-8", "replace").strip().splitlines()
                why = tail[-1] if tail else f"exit status {proc.returncode}"
                raise ScoreError(f"METEOR 1.5 jar failed: {why}")
            return line.decode("utf-8").strip()

        # Write from a thread: the jar answers every line, and with both pipes full we'd deadlock.
        def write_all() -> None:
            try:
                for request in requests:
                    proc.stdin.write(request.encode("utf-8"))
                proc.stdin.flush()
            except BrokenPipeError:  # the jar died; read_line reports why
                pass

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        try:
            stats = [read_line() for _ in requests]
            writer.join()
            scores: dict[str, float] = {}
            for name, indices in groups.items():
                if not indices:
                    scores[name] = float("nan")
                    continue
                line = " ||| ".join(["EVAL", *(stats[i] for i in indices)]) + "\n"
                proc.stdin.write(line.encode("utf-8"))
                proc.stdin.flush()
                for _ in indices:  # per-segment scores, not needed
                    read_line()
                scores[name] = float(read_line())
        finally:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            proc.kill()
            proc.wait()
    rows = []
    for line in stats:
        row = [float(v) for v in line.split()]
        if _perfect(row):
            row[CHUNKS] = 0.0
        rows.append(row)
    return scores, rows
