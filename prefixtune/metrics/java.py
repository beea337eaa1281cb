"""Finding the Java runtime and the jars that pycocoevalcap ships.

METEOR 1.5 and the Stanford PTB tokenizer are Java programs; the official scorers ran them, and no
Python port reproduces them exactly, so we run the same jars.  Java is looked up once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

from prefixtune.metrics.errors import ScoreError

INSTALL_HINT = "apt-get install default-jre-headless"


@functools.cache
def java_executable() -> str:
    """Path of the ``java`` to run: ``$JAVA_HOME/bin/java`` if it exists, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise ScoreError(
            f"Java not found: METEOR 1.5 and the PTB tokenizer need it; {INSTALL_HINT}"
        )
    return found


def require_java(tool: str) -> str:
    """Like :func:`java_executable` but the error names the tool that needed Java."""
    try:
        return java_executable()
    except ScoreError:
        raise ScoreError(f"Java not found: {tool} needs it; {INSTALL_HINT}") from None


@functools.cache
def pycocoevalcap_dir() -> Path:
    """Folder of the installed pycocoevalcap package (a namespace package: no ``__init__``)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ScoreError(
            "pycocoevalcap not installed: it ships the METEOR 1.5 and PTB tokenizer jars; "
            "pip install pycocoevalcap==1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_jar(relative: str) -> Path:
    """A jar shipped inside pycocoevalcap, e.g. ``meteor/meteor-1.5.jar``."""
    path = pycocoevalcap_dir() / relative
    if not path.is_file():
        raise ScoreError(f"{path} is missing from the pycocoevalcap install; reinstall it")
    return path
