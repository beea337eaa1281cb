"""The WebNLG 2017 challenge scorer's text preparation (``evaluation.py``), step by step.

The official ``webnlg-automatic-evaluation/evaluation.py`` (as shipped in the DART repository's
``evaluation/`` folder, the copy the paper ran) writes every file that multi-bleu, METEOR and
tercom read.  It prepares the two sides in a different order, and the order matters:

* system outputs (``read_participant`` then ``write_to_file``): ``unidecode(line.strip())``, then
  ``unidecode(text.lower())``, then ``" ".join(re.split(r"(\\W)", text))`` and squeezed spaces.
  After unidecode the text is ASCII, so the split sees only ASCII punctuation ("°" has become
  "deg", "–" "-", "ß" "ss", "東京" "Dong Jing").
* references (``bleu_ref_files_gen``, ``meteor_3ref_files_gen``, ``ter_ref_files_gen``): the
  split on ``\\W`` runs first, on the raw Unicode text (where "°" and "–" are non-word characters
  and split off, but "ø" and "東" are word characters and stay), spaces are squeezed, and only
  then ``unidecode(text.lower())``, with no second split or squeeze.  So "20°C" in a reference is
  "20 deg c" but in an output "20degc".

We call the same ``unidecode`` (the library the scorer imports) so that transliterations agree
character for character; no other library reproduces its tables.  Python 3 ``re`` semantics
(``\\W`` is Unicode-aware) as the scorer runs under Python 3.  Multi-bleu (``-lc``), METEOR
(``-norm``) and tercom (case-insensitive) then see exactly these strings.
"""

from __future__ import annotations

import re

from unidecode import unidecode

_NON_WORD = re.compile(r"(\W)")


def _split(text: str) -> str:
    return " ".join(" ".join(_NON_WORD.split(text)).split())


def normalise_output(text: str) -> str:
    """A system output as the challenge scorer writes it for every metric."""
    return _split(unidecode(unidecode(text.strip()).lower()))


def normalise_reference(text: str) -> str:
    """A reference text (``<lex>``) as the challenge scorer writes it for every metric."""
    return unidecode(_split(text).lower())


# The name the scorer used before the two sides were told apart; outputs are what callers pass.
normalise = normalise_output
