"""The COCO caption code's text preparation: Stanford PTB tokenizer, lower-cased, punctuation out.

The E2E scorer computes METEOR, ROUGE-L and CIDEr through the COCO caption evaluator, which first
runs every hypothesis and reference through Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines
-lowerCase`` and then drops the tokens in its punctuation list.  We run the same jar (shipped by
pycocoevalcap) once over all texts of a call.  The punctuation list is compared against the
lower-cased tokens exactly as the COCO code does, so ``-lrb-`` / ``-rrb-`` survive there and here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from prefixtune.metrics.errors import ScoreError
from prefixtune.metrics.java import bundled_jar, require_java

PTB_JAR = "tokenizer/stanford-corenlp-3.4.1.jar"
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-"]
    + [".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Characters the tokenizer would take as line ends; one text must stay one line.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x85\u2028\u2029]")


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenize, lower-case and strip punctuation as the COCO caption evaluator does."""
    if not texts:
        return []
    jar = bundled_jar(PTB_JAR)
    cmd = [require_java("the PTB tokenizer"), "-Dfile.encoding=UTF-8", "-cp", str(jar)]
    cmd += ["edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    joined = "\n".join(_LINE_BREAKS.sub(" ", t) for t in texts) + "\n"
    proc = subprocess.run(cmd, input=joined.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ScoreError(f"PTB tokenizer failed: {tail[-1] if tail else proc.returncode}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(texts):
        raise ScoreError(f"PTB tokenizer returned {len(lines)} lines for {len(texts)} texts")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in COCO_PUNCTUATION) for line in lines
    ]
