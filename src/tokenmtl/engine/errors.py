"""Errors of a training run that the command line reports in one line."""


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss, a config that does not fit a checkpoint)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived: a checkpoint of the last finished step was saved first."""
