"""The one error type for bad user input: the CLI prints its message as one line and exits 2."""


class InputError(ValueError):
    """Bad input (a file, a flag, a record): the message says what is wrong and where."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, handled: the message says what was kept; the CLI prints it as one line and exits
    `exit_code` (130 for Ctrl-C, 143 for SIGTERM, as a shell reports them)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: stop as Ctrl-C would, exit 143."""


def first_line(error: BaseException) -> str:
    """An exception's first line, for a one-line InputError (libraries' messages run on for lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
