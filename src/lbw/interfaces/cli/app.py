"""The ``lbw`` entry point: builds the typer app from the command modules and maps errors to exit codes.

User errors (``LbwError``) print one line on stderr and exit 2, without a traceback.
Ctrl-C exits 130. Usage errors are click's (exit 2). Notes lbw logs while a command runs (a stale temporary file
removed, a wait for another lbw writing the same file) are printed as ``lbw: note: ...`` on stderr.

Example:
    >>> run(["weights", "parse", "N:1,1,1,1,1,1,1,1,1,1,1,1"])
    0
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

import typer

try:  # recent typer vendors its own click; its exceptions do not derive from click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from lbw import __version__
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
    "lbw.interfaces.cli.demo",
    "lbw.interfaces.cli.world",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lbw {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """A fresh typer app with every command module registered."""
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
        print(f"lbw: note: {record.getMessage()}", file=sys.stderr, flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]) and return the exit code."""
    logger = logging.getLogger("lbw")
    notes, level = _Notes(logging.INFO), logger.level
    logger.addHandler(notes)
    logger.setLevel(logging.INFO)
    try:
        return _run(argv)
    finally:
        logger.removeHandler(notes)
        logger.setLevel(level)


def _run(argv: Sequence[str] | None) -> int:
    app = build_app()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name="lbw", standalone_mode=False)
    except LbwError as error:
        print(f"lbw: error: {error}", file=sys.stderr)
        return 2
    except typer.Exit as done:
        if done.exit_code == 130:  # typer turns Ctrl-C into Exit(130)
            print("lbw: interrupted", file=sys.stderr)
        return done.exit_code
    except ClickException as error:
        error.show(file=sys.stderr)
        return error.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("lbw: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
