"""The one exception type for mistakes a user can fix (bad override, missing file, no network).

The CLI prints such an error as a single line and exits with status 2, instead of a traceback.
"""


class UsageError(Exception):
    """A problem with the user's input; its message is one line that says what to change."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as ``Type: message`` on one line, for an error message that quotes it
    (a URLError quotes the socket or TLS error it wraps)."""
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    return f"{type(inner).__name__}: {text[:limit]}"
