"""The error every job turns into exit status 2."""


class UsageError(ValueError):
    """Bad flags or inputs: the job stops before doing any work (exit status 2)."""
