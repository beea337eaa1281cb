"""The one error type of the scorer."""

from prefixtune.errors import UsageError


class ScoreError(UsageError):
    """A problem with the inputs or the tools of a scoring run; its message is one line.

    The CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """
