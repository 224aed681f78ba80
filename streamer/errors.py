"""Errors that the CLI turns into one clear line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a flag, a file, a model that cannot be served.

    The message says what happened, what was expected, and how to fix it. The CLI prints it
    as one line (no traceback) and exits with code 2.
    """
