"""The one exception type for mistakes a user can fix (bad override, missing file, no network).

The CLI prints such an error as a single line and exits with status 2, instead of a traceback.
"""


class UsageError(Exception):
    """A problem with the user's input; its message is one line that says what to change."""
