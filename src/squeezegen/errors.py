"""The one exception type for mistakes a user can fix (bad params, missing data, bad files).

The CLI catches it and prints its message without a traceback (exit code 2); everything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class ConfigError(UserError):
    """A bad value in params.yaml (or a `-S key=value` override); names the key path."""
