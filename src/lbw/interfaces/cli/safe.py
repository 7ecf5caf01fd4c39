"""The CLI's rules for hostile input and output: visible control characters, Ctrl-C, argv bytes, negative vectors.

- ``shown(value)`` is the text to print for anything that came from a file, a server or the command line
  (``lbw.domain.text.printable``); ``markup(value)`` is the same for rich markup strings (also escapes ``[``).
- ``Interrupted`` is a ``KeyboardInterrupt`` carrying what was kept; the entry point prints
  ``lbw: interrupted: <note>`` (or ``lbw: interrupted``) and exits 130.
- ``guard_text_arguments`` refuses text arguments that are not valid UTF-8 (bytes the OS handed over as lone
  surrogates) with a one-line error naming the option; ``pathlib.Path`` arguments may hold such bytes.
- ``VectorCommand`` lets a positional weight vector start with a minus sign: ``lbw weights parse -1,0,...``.

Example:
    >>> shown("evil\\x1b]0;title\\x07")
    'evil\\\\x1b]0;title\\\\x07'
    >>> positional_negatives({"--to": 1}, ["-1,0,1", "--to", "26"])
    ['--to', '26', '--', '-1,0,1']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from typer.core import TyperCommand

from lbw.domain.text import printable
from lbw.errors import LbwError

# A positional argument that starts like a negative number: -1, -0.5, -.5 (a vector such as "-1,0,...").
NEGATIVE_START = re.compile(r"-(?:\d|\.\d)")
# Options whose value may be a file name, so non-UTF-8 bytes (lone surrogates) are accepted there.
PATH_LIKE = frozenset({"lora", "model", "inputs", "against"})


def shown(value: object, *, keep: str = "") -> str:
    """Text safe to print: control characters, bidi overrides and lone surrogates as visible escapes
    (``keep="\\n"`` for text of several lines).

    Example:
        >>> shown("a\\u202eb")
        'a\\\\u202eb'
    """
    return printable(value, keep=keep)


def markup(value: object, *, keep: str = "") -> str:
    """``shown(value)`` for a rich markup string: ``[`` escaped too, so a name cannot restyle the output.

    Example:
        >>> markup("[red]x\\x1b")
        '\\\\[red]x\\\\x1b'
    """
    from rich.markup import escape

    return escape(printable(value, keep=keep))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a note saying what was kept (printed after ``lbw: interrupted: ``)."""

    def __init__(self, note: str = "") -> None:
        super().__init__(note)
        self.note = note


def interrupted_line(stop: BaseException | None) -> str:
    """The one stderr line for a Ctrl-C.

    Example:
        >>> interrupted_line(Interrupted("2 of 5 cells kept"))
        'lbw: interrupted: 2 of 5 cells kept'
    """
    note = getattr(stop, "note", "")
    return f"lbw: interrupted: {printable(note)}" if note else "lbw: interrupted"


def positional_negatives(takes_value: Mapping[str, int], args: list[str]) -> list[str]:
    """``args`` with arguments such as ``-1,0,...`` moved after ``--`` so they parse as positionals.

    ``takes_value`` maps each option name to the number of values it takes (0 for flags). Options and their
    values keep their order in front; positionals keep theirs behind ``--``. Without such an argument (or with
    a ``--`` already given) ``args`` is returned as it is.

    Example:
        >>> positional_negatives({"--x": 1}, ["--x", "-1", "-0.5,1"])
        ['--x', '-1', '--', '-0.5,1']
    """
    options: list[str] = []
    positionals: list[str] = []
    found = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return args
        if NEGATIVE_START.match(arg) and arg not in takes_value:
            positionals.append(arg)
            found = True
        elif arg.startswith("-") and len(arg) > 1:
            options.append(arg)
            count = 0 if "=" in arg else takes_value.get(arg, 0)
            options.extend(args[index + 1 : index + 1 + count])
            index += count
        else:
            positionals.append(arg)
        index += 1
    return [*options, "--", *positionals] if found else args


class VectorCommand(TyperCommand):
    """A command whose positional argument may be a vector starting with ``-`` (``-1,0,0.5,...``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        takes_value: dict[str, int] = {}
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") != "option":
                continue
            count = 0 if getattr(param, "is_flag", False) or getattr(param, "count", False) else param.nargs
            for name in (*param.opts, *param.secondary_opts):
                takes_value[name] = count
        return super().parse_args(ctx, positional_negatives(takes_value, list(args)))


def _undecodable(value: str) -> int | None:
    """Index of the first lone surrogate in ``value`` (a byte that was not UTF-8), else None."""
    for index, char in enumerate(value):
        if "\ud800" <= char <= "\udfff":
            return index
    return None


def _as_bytes_text(value: str) -> str:
    """The argument as the user typed it, undecodable bytes as ``\\xfe``."""
    raw = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return printable(raw)


def check_text_arguments(params: Iterable[Any], values: Mapping[str, Any]) -> None:
    """Raise LbwError if a text (not path) argument holds bytes that are not UTF-8.

    Example:
        >>> check_text_arguments([], {"name": "ok"})
    """
    labels = {param.name: _label(param) for param in params}
    for name, value in values.items():
        if name in PATH_LIKE:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, str):
                continue
            index = _undecodable(item)
            if index is not None:
                byte = item[index].encode("utf-8", "surrogateescape")[0]
                raise LbwError(
                    f"{labels.get(name, name)} '{_as_bytes_text(item)}': not UTF-8 text (byte 0x{byte:02x}); "
                    "only file paths may hold such bytes"
                )


def _label(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "option" and param.opts:
        return max(param.opts, key=len)
    return f"argument {str(param.name).upper()}"


def guard_text_arguments(command: Any) -> None:
    """Wrap the callback of ``command`` and of every subcommand with ``check_text_arguments``."""
    for sub in getattr(command, "commands", {}).values():
        guard_text_arguments(sub)
    callback: Callable[..., Any] | None = getattr(command, "callback", None)
    if callback is None or getattr(callback, "_lbw_guarded", False):
        return
    params = list(command.params)

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_text_arguments(params, kwargs)
        return callback(*args, **kwargs)

    checked._lbw_guarded = True  # type: ignore[attr-defined]
    command.callback = checked
