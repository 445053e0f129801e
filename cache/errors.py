"""The one error type that the CLI turns into a single line and exit code 2."""


class PipelineError(Exception):
    """Bad input or state a user can fix: the message says what is wrong and what to do."""
