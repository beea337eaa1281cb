"""Tables and figures from a multirun folder: ``python scripts/collect.py <multirun> [--out DIR]``.

The same as the ``prefixtune-collect`` command; the logic is prefixtune/collect.py.
"""

from prefixtune.collect import main

if __name__ == "__main__":
    main()
