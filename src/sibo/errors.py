"""The one error type for bad user input: the CLI prints its message as one line and exits 2."""


class InputError(ValueError):
    """Bad input (a file, a flag, a record): the message says what is wrong and where."""
