class UsageError(Exception):
    """Bad user input: the CLI prints the message on one line and exits with code 2."""


class TrainingError(Exception):
    """Training cannot go on (e.g. repeated non-finite updates): the CLI prints the message, exit code 1."""
