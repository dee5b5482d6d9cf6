class UsageError(Exception):
    """Bad user input: the CLI prints the message on one line and exits with code 2."""


class TrainingError(Exception):
    """Training cannot go on (e.g. repeated non-finite updates): the CLI prints the message, exit code 1."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages run long), or its type's name if empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
