"""``python -m prefixtune.collect``: the same as the ``prefixtune-collect`` command."""

from prefixtune.collect.cli import main

main()
