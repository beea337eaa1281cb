"""Tables and figures from a multirun folder: ``python scripts/collect.py <multirun> [--out DIR]``.

The same as the ``prefixtune-collect`` command; the logic is the package prefixtune/collect/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs without `pip install -e .`

from prefixtune.collect import main  # noqa: E402

if __name__ == "__main__":
    main()
