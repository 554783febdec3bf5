"""The project's one error type for bad user input.

Anything a user can get wrong (a config value, a data file, a search space, a
CLI flag) raises :class:`UserError` with a message that names the file or field
and says how to fix it. The CLI prints that one line and exits with code 2;
everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: one line, names the file/field, says the fix."""


class ConfigError(UserError):
    """A hyperparameter or config value is invalid."""


class DataError(UserError):
    """A data file is missing, malformed or inconsistent."""
