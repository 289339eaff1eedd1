"""The one base class for mistakes a user can fix (bad file, wrong path, wrong vocabulary...).

The CLI prints these as a single ``ms-gpt2: error: ...`` line with exit code 2; anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or settings; the message names the file (and line) or option at fault."""


class ConfigError(UserError, ValueError):
    """A config key or value that is not accepted; the message names the key."""


class EngineError(UserError, ValueError):
    """A setting an engine cannot honour; the message names the key and what to do instead."""


class CheckpointError(UserError, ValueError):
    """A model directory that cannot be loaded as asked; the message names the path."""
