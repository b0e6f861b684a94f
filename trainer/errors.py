"""The project's own exceptions.

Every error a user can cause (bad file, bad config value, bad checkpoint) is one of these, and its
message names the file, field or value and says what was expected. The CLI prints the message as one
line and exits with the class's `exit_code`.
"""


class TrainerError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 2


class DatasetError(TrainerError, ValueError):
    """A dataset file is missing, truncated, malformed or inconsistent."""


class ConfigError(TrainerError, ValueError):
    """A configuration value is unknown, out of range or inconsistent."""


class CheckpointError(TrainerError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


class MissingDependencyError(TrainerError, ImportError):
    """An optional package was explicitly requested but is not installed."""


class RunFolderInUse(TrainerError, RuntimeError):
    """Another process holds the run folder's lock (trainer/run_lock.py); the message names it."""


class Interrupted(TrainerError):
    """The user stopped the command (Ctrl-C); the message says where and how to continue."""

    exit_code = 130
