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
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence

from prefixtune.metrics.errors import ScoreError
from prefixtune.metrics.java import bundled_jar, require_java

METEOR_JAR = "meteor/meteor-1.5.jar"


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
    return scores
