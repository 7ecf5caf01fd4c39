"""The ``lbw`` entry point: builds the typer app from the command modules and maps errors to exit codes.

- User errors (``LbwError``) print one line ``lbw: error: <message>`` on stderr and exit 2, without a traceback;
  the message is printed with control characters made visible (it may quote file names and keys from files).
- Usage errors are click's (exit 2), also with control characters made visible.
- Ctrl-C, wherever it lands (while importing torch, inside a progress bar, while waiting for a server), prints
  one line ``lbw: interrupted`` (with what was kept, when a command says so) and exits 130.
- Notes lbw logs while a command runs (a stale temporary file removed, a wait for another lbw writing the
  same file) are printed as ``lbw: note: ...`` on stderr.
- Text arguments that are not valid UTF-8 are refused (one line, exit 2); paths may hold any bytes.
- stdout/stderr never fail on a character they cannot encode: it is written as a backslash escape.

Nothing heavy is imported at module level (not even typer), so a Ctrl-C during start-up is handled too.

Example:
    >>> run(["weights", "parse", "N:1,1,1,1,1,1,1,1,1,1,1,1"])
    0
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import io
import logging
import sys
from collections.abc import Sequence
from typing import Any

from lbw import __version__
from lbw.domain.text import printable
from lbw.errors import LbwError

# Each module defines ``register(app: typer.Typer) -> None``; keep them light at import time.
COMMAND_MODULES: tuple[str, ...] = (
    "lbw.interfaces.cli.weights",
    "lbw.interfaces.cli.presets",
    "lbw.interfaces.cli.sheet",
    "lbw.interfaces.cli.inspect",
    "lbw.interfaces.cli.meta",
    "lbw.interfaces.cli.bake",
    "lbw.interfaces.cli.render",
    "lbw.interfaces.cli.project",
    "lbw.interfaces.cli.tune",
    "lbw.interfaces.cli.demo",
    "lbw.interfaces.cli.world",
    "lbw.interfaces.cli.web",
)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    import typer

    if value:
        typer.echo(f"lbw {__version__}")
        raise typer.Exit()


def build_app() -> Any:
    """A fresh typer app with every command module registered."""
    import typer

    app = typer.Typer(
        name="lbw",
        help="LoRA Block Weight toolkit: weights, the Plot Helper sheet, inspect, bake, merge, plot.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
    ) -> None:
        """LoRA Block Weight toolkit."""

    for name in COMMAND_MODULES:
        module = importlib.util.find_spec(name)
        if module is not None:
            importlib.import_module(name).register(app)
    return app


class _Notes(logging.Handler):
    """Prints the ``lbw`` loggers' records as ``lbw: note: <message>`` on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        _error_line(f"lbw: note: {record.getMessage()}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]) and return the exit code."""
    logger = logging.getLogger("lbw")
    notes, level = _Notes(logging.INFO), logger.level
    logger.addHandler(notes)
    logger.setLevel(logging.INFO)
    try:
        return _run(list(argv) if argv is not None else sys.argv[1:])
    except KeyboardInterrupt as stop:  # also while importing typer or a command module
        return _interrupted(stop)
    finally:
        logger.removeHandler(notes)
        logger.setLevel(level)


def _run(args: list[str]) -> int:
    import typer
    from typer.main import get_command

    try:  # recent typer vendors its own click; its exceptions do not derive from click's
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException, NoArgsIsHelpError

    from lbw.interfaces.cli.safe import guard_text_arguments

    command = get_command(build_app())
    guard_text_arguments(command)
    try:
        # Not command.main(): in non-standalone mode it turns Ctrl-C into a silent return value of 130.
        with command.make_context("lbw", args) as context:
            result = command.invoke(context)
    except LbwError as error:
        _error_line(f"lbw: error: {error}")
        return EXIT_USER_ERROR
    except typer.Exit as done:
        return int(getattr(done, "exit_code", 0) or 0)
    except NoArgsIsHelpError as error:
        error.show(file=sys.stderr)
        return error.exit_code
    except ClickException as error:
        buffer = io.StringIO()
        error.show(file=buffer)
        _write(sys.stderr, printable(buffer.getvalue(), keep="\n"))
        return error.exit_code
    except typer.Abort as stop:
        return _interrupted(stop)
    except BrokenPipeError:  # `lbw ... | head -1`: the reader left; nothing more to say
        _silence_broken_pipe()
        return 1
    except OSError as error:
        if error.errno == errno.EPIPE:
            _silence_broken_pipe()
            return 1
        raise
    return result if isinstance(result, int) else 0


def _interrupted(stop: BaseException | None) -> int:
    from lbw.interfaces.cli.safe import interrupted_line

    _error_line(interrupted_line(stop))
    return EXIT_INTERRUPTED


def _error_line(text: str) -> None:
    """One line on stderr, control characters (newlines included) made visible."""
    _write(sys.stderr, printable(text) + "\n")


def _write(stream: Any, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stderr: nothing left to tell
        pass


def _silence_broken_pipe() -> None:
    """After EPIPE on stdout, keep Python's final flush from printing a second error."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _forgiving_streams() -> None:
    """Characters stdout/stderr cannot encode are written as backslash escapes instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
            with contextlib.suppress(ValueError, io.UnsupportedOperation):
                reconfigure(errors="backslashreplace")


def main() -> None:
    """Console-script entry point."""
    try:
        _forgiving_streams()
        code = run()
    except KeyboardInterrupt as stop:
        code = _interrupted(stop)
    sys.exit(code)
