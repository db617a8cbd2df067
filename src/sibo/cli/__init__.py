"""`sibo <verb> …`: one map from subcommand to the CLI module that runs it.

Each CLI module parses its flags into configs and calls library functions; it alone prints to
stdout. Bad input raised as `sibo.errors.InputError` becomes one line on stderr and exit code 2.
The console shows sibo's own log lines and progress bars; what the libraries say (their INFO logs
and warnings, transformers' per-load progress bars) only with -v/--verbose, before the verb or after it
(after lm-eval, -v is the harness's own --verbosity).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import select
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from sibo.errors import InputError, Interrupted, Terminated, first_line
from sibo.files import UNWRITABLE

VERBS = {
    "demo": ("sibo.cli.demo", "offline end-to-end study: fine-tune, evaluate and analyze LoRA vs LoRA-SIBO"),
    "finetune": (
        "sibo.cli.finetune",
        "fine-tune a causal LM with LoRA / DoRA / bottleneck adapters boosted by SIBO",
    ),
    "evaluate": (
        "sibo.cli.evaluate",
        "score a base model or adapter on the paper's math and commonsense benchmarks",
    ),
    "generate": ("sibo.cli.generate", "answer one instruction, or serve a Gradio page (--ui)"),
    "serve": ("sibo.cli.serve", "serve a model behind an OpenAI-compatible HTTP API"),
    "export": ("sibo.cli.export", "merge an adapter into a standalone checkpoint"),
    "analyze": (
        "sibo.cli.analyze",
        "per-layer token similarity (over-smoothing) of a base model and adapters",
    ),
    "sweep": ("sibo.cli.sweep", "finetune + evaluate over a list of λ values and seeds"),
    "lm-eval": ("sibo.cli.lm_eval", "run lm-evaluation-harness with the SIBO model class registered"),
}


VERBOSE_FLAGS = ("-v", "--verbose")
PASS_THROUGH_VERBS = ("lm-eval",)  # the harness's CLI has its own -v (--verbosity): ours goes before the verb


def _usage() -> str:
    lines = ["usage: sibo [-v] <verb> [flags]   (sibo <verb> --help for its flags)", "", "verbs:"]
    lines += [f"  {verb:<10} {summary}" for verb, (_, summary) in VERBS.items()]
    lines += [
        "",
        "-v, --verbose: the libraries' logs, warnings and progress bars too (before or after the verb)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = bool(argv) and argv[0] in VERBOSE_FLAGS
    argv = argv[1:] if verbose else argv
    if not argv:  # an error: its usage goes where errors go
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"sibo: unknown verb {verb!r}\n{_usage()}", file=sys.stderr)
        return 2
    if verb not in PASS_THROUGH_VERBS:
        verbose = verbose or any(arg in VERBOSE_FLAGS for arg in rest)
        rest = [arg for arg in rest if arg not in VERBOSE_FLAGS]
    module = importlib.import_module(VERBS[verb][0])
    try:
        with terminate_as_interrupt():
            return _run_verb(module, verb, rest, verbose)
    except InputError as error:
        print(f"sibo {verb}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Interrupted as error:
        print(f"sibo {verb}: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except Terminated:
        print(f"sibo {verb}: terminated (SIGTERM): stopped at once", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"sibo {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, BrokenPipeError) and stdout_reader_left():
            # `sibo generate … | head`: stop quietly, as a SIGPIPE would (another pipe's fault is an error)
            silence_stdout()
            return 141  # 128 + SIGPIPE (13), a shell's code for a pipeline's writer stopped this way
        line = fault_line(error)
        if line is None:
            raise
        print(f"sibo {verb}: error: {line}", file=sys.stderr)
        return 2


def _run_verb(module, verb: str, rest: list[str], verbose: bool) -> int:
    if verb in PASS_THROUGH_VERBS:
        with console(verbose):
            return module.main(rest) or 0
    # flags first, outside the console: --help and a bad flag import no torch and load nothing
    args = module.build_parser().parse_args(rest)
    with console(verbose):
        return module.run(args) or 0


def stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader closed it: polling its write end reports an error then."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no descriptor (tests)
        return False


def silence_stdout() -> None:
    """Point stdout at the null device: what is still buffered for a reader that left goes nowhere, not into
    an "Exception ignored" line at exit. In-process callers (tests) whose stdout has no descriptor keep it."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


def fault_line(error: BaseException) -> str | None:
    """One line for a fault of the machine, not of sibo: a full disk, whatever library raised it (errno
    ENOSPC, or only its words, as the tokenizers library's plain Exception), a read-only file system, or a
    file sibo may not read or write (permission denied: an open does not say which). None: not such a fault."""
    where = getattr(error, "filename", None)
    if (
        isinstance(error, OSError)
        and error.errno in (errno.ENOSPC, errno.EDQUOT)
        or ("No space left on device" in str(error) or "Disk quota exceeded" in str(error))
    ):
        return f"disk full: could not write {where or f'a file ({first_line(error)[:200]})'}"
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return f"cannot write {where or 'a file'}: {error.strerror}"
    if isinstance(error, OSError) and error.errno in UNWRITABLE:  # EACCES, EPERM: reading or writing
        return f"cannot access {where or 'a file'}: {error.strerror}"
    return None


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt): the verb stops as on Ctrl-C, with one line, exit
    143; finetune's loop takes it over to stop after the current step."""

    def terminate(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


MAX_LINE = 600  # characters: a message quoting a huge value is cut, never megabytes on stderr


def one_line(error: BaseException) -> str:
    """The message on one line, whatever it quotes (a record's text may hold newlines), at most MAX_LINE
    characters."""
    line = " ".join(str(error).split("\n"))
    return line if len(line) <= MAX_LINE else f"{line[: MAX_LINE - 30]} … ({len(line):,} characters)"


@contextmanager
def console(verbose: bool) -> Iterator[None]:
    """sibo's INFO lines (rank 0's only, under torchrun) and progress bars always; the libraries' INFO
    logs, their FutureWarnings and DeprecationWarnings (about their own APIs) and transformers' bars (one
    per model load or save, over in a blink) only when verbose. Restored on exit, for in-process callers
    (tests, notebooks)."""
    from transformers.utils import logging as hf_logging

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root, ours, hub = logging.getLogger(), logging.getLogger("sibo"), logging.getLogger("huggingface_hub")
    levels = {root: root.level, ours: ours.level, hub: hub.level}
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # under torchrun every process runs the verb: rank 0 alone says what it sets up, each still warns
    ours.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    # its retry warnings ("Retrying in 8s [Retry 4/5]", each twice) are a library's log like any other
    hub.setLevel(logging.INFO if verbose else logging.ERROR)
    from sibo.progress import console_bar

    previous_hook = None if verbose else hf_logging.set_tqdm_hook(console_bar)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if not verbose:
            hf_logging.set_tqdm_hook(previous_hook)
        for logger, level in levels.items():
            logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
