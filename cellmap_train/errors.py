"""Errors that mean "the user's input is wrong": reported as one line, never with a traceback."""


def first_line(err: BaseException, default: str = "") -> str:
    """The first line of an error's message (libraries' messages run on: tracebacks, hints),
    `default` when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else default


class UserError(Exception):
    """Base class: the message names what is wrong and where (file, crop, override, ...)."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class TrainingInterrupted(UserError):
    """SIGTERM or Ctrl-C stopped training after checkpointing its step; `result` is the run's
    FitResult so far (best and last metrics of the epochs it finished), for its record."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
