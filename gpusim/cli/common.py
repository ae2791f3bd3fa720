"""What every `gpusim` command shares: the consoles, one-line errors, exit codes, and the entry
point that turns Ctrl-C, a closed stdout and bad input into one line and a documented code."""

from __future__ import annotations

import os
import sys
from typing import IO, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from gpusim.errors import InputError
from gpusim.exitcodes import EXIT_CODES_HELP, ExitCode

__all__ = ["EXIT_CODES_HELP", "ExitCode", "out", "err", "fail", "bad_input", "main",
           "check_outputs", "check_seed_option", "set_interrupt_note"]


class _ClosedSafe:
    """stdout that swallows a broken pipe: `gpusim ... | head` must not lose the results (they
    are written before anything is printed) nor turn the command's verdict into a crash."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.closed_pipe = True
        # Python flushes stdout again at exit; point it at /dev/null so that flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _width(stream: IO[str]) -> int | None:
    try:
        return None if stream.isatty() else 140
    except (ValueError, OSError):
        return 140


def out() -> Console:
    """Console on stdout, made at print time (tests swap sys.stdout); wide when not a tty."""
    return Console(file=_ClosedSafe(sys.stdout), width=_width(sys.stdout))


def err() -> Console:
    return Console(file=sys.stderr, width=_width(sys.stderr))


def fail(message: str, code: ExitCode = ExitCode.BAD_INPUT) -> typer.Exit:
    """Print `error: message` to stderr, one line per error (several when a file has several
    bad rows); return the Exit to raise."""
    for line in message.splitlines() or [""]:
        err().print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(int(code))


def bad_input(e: InputError) -> typer.Exit:
    return fail(e.render(), ExitCode.BAD_INPUT)


def check_outputs(*paths: object) -> None:
    """Check output paths before the work starts, so a bad one costs no wait; the same file
    named for two outputs would keep only the last."""
    from gpusim.output import check_output_path  # not needed for --help

    given = [str(p) for p in paths if p is not None]
    for p in given:
        check_output_path(p)
    real = [os.path.realpath(p) for p in given]
    for i, p in enumerate(real):
        if p in real[:i]:
            raise InputError("the same file is named for two outputs", file=given[i])


def check_seed_option(value: int) -> int:
    """typer callback for --seed: the range gpusim.simulation.check_seed enforces (numpy's
    SeedSequence entropy), checked here too so `trace synth` need not import the engines."""
    if not 0 <= value < 2 ** 64:
        raise typer.BadParameter(f"must be an integer from 0 to 2**64-1, got {value}")
    return value


def main(app: typer.Typer, argv: list[str] | None = None) -> NoReturn:
    """Run `app`; every way out is one line on stderr at most and a documented exit code."""
    stdout = sys.stdout
    # typer's help and messages write to sys.stdout directly: a reader that stops early
    # (`gpusim --help | head -1`) must not turn them into click's exit 1 for a broken pipe
    sys.stdout = _ClosedSafe(stdout)  # type: ignore[assignment]
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="gpusim")
    except typer.Exit as e:
        rv = e.exit_code
    except (typer.Abort, KeyboardInterrupt):  # older click wraps Ctrl-C in Abort
        rv = ExitCode.INTERRUPTED
    except InputError as e:
        bad_input(e)
        rv = ExitCode.BAD_INPUT
    except Exception as e:  # click's usage errors (a bad option, a missing argument)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        _usage_error(e)
        rv = ExitCode.BAD_INPUT
    finally:
        sys.stdout = stdout
    code = int(rv) if isinstance(rv, int) else 0
    if code == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into a silent Exit(130)
        _interrupted()
    _flush_quietly()
    sys.exit(code)


def _usage_error(e: Exception) -> None:
    """click's usage box (usage line, hint, framed message) as one line."""
    message = " ".join(e.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    fail(message)


_INTERRUPT_NOTE = ["no output file was left half-written"]


def set_interrupt_note(note: str) -> None:
    """What the one line printed on Ctrl-C says after "interrupted (exit 130); "."""
    _INTERRUPT_NOTE[0] = note


def _interrupted() -> None:
    try:
        sys.stderr.write(f"\ninterrupted (exit 130); {_INTERRUPT_NOTE[0]}\n")
    except (OSError, ValueError):
        pass


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
