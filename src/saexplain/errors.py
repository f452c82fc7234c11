"""User-facing errors: one line that names the file / field / value that is wrong."""


class SaexplainError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


class ConfigError(SaexplainError):
    """A config value is invalid or inconsistent (e.g. SAE d_in does not match the model)."""


class NotFound(SaexplainError):
    """What was asked for (a run, a feature of a run, an explanation) is not there."""
