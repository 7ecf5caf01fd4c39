"""Typed access to a server's JSON answer: every wrong shape becomes one line naming the endpoint and the field.

A server's answer is hostile data: a list where a mapping was expected, a missing key, a number where text was
expected. :class:`Answer` wraps a decoded value with the endpoint it came from and the path inside it, so a
backend reads exactly the fields it needs and a wrong shape reads, for example,
``GET /sdapi/v1/loras: [3].name is missing (expected text)``.

Example:
    >>> loras = Answer("GET /sdapi/v1/loras", [{"name": "face", "metadata": {}}])
    >>> [entry.field("name").text() for entry in loras.items()]
    ['face']
    >>> Answer("POST /prompt", {"number": 1}).text_at("prompt_id")
    Traceback (most recent call last):
    lbw.errors.RenderError: POST /prompt: prompt_id is missing (expected text)
"""

from __future__ import annotations

from typing import Any

from lbw.errors import RenderError

_KINDS = {dict: "a mapping", list: "a list", str: "text", float: "a number", bool: "true or false"}
_MISSING = object()


def kind_of(value: Any) -> str:
    """How a JSON value is described in messages: ``a mapping``, ``a list``, ``text``, ``a number``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return _KINDS.get(type(value), type(value).__name__)


class Answer:
    """A decoded JSON value, the endpoint it came from and its path inside the answer."""

    def __init__(self, endpoint: str, value: Any, path: str = "", where: str | None = None) -> None:
        self.endpoint = endpoint
        self.value = value
        self.path = path
        self.where = where

    def fail(self, what: str) -> RenderError:
        """A RenderError ``ENDPOINT: PATH WHAT`` (the answer itself when the path is empty)."""
        subject = self.path or "the answer"
        return RenderError(f"{self.endpoint}: {subject} {what}", where=self.where)

    def _expect(self, kind: type, name: str) -> Any:
        value = self.value
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise self.fail(f"is {kind_of(value)}, expected {name}")
        return value

    def _child(self, key: str | int, value: Any) -> Answer:
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return Answer(self.endpoint, value, f"{self.path}{step}", self.where)

    def mapping(self) -> dict[str, Any]:
        """The value as a mapping (its raw items)."""
        return self._expect(dict, "a mapping")

    def items(self) -> list[Answer]:
        """The value as a list of answers."""
        return [self._child(index, item) for index, item in enumerate(self._expect(list, "a list"))]

    def entries(self) -> list[tuple[str, Answer]]:
        """The value as a mapping: (key, answer) pairs."""
        return [(str(key), self._child(str(key), item)) for key, item in self.mapping().items()]

    def field(self, key: str, expected: str = "") -> Answer:
        """The mapping's ``key``; missing (or null) is an error saying what was expected there."""
        value = self.mapping().get(key, _MISSING)
        if value is _MISSING or value is None:
            child = self._child(key, None)
            raise child.fail(f"is missing{f' (expected {expected})' if expected else ''}")
        return self._child(key, value)

    def optional(self, key: str) -> Answer | None:
        """The mapping's ``key``, or None when it is missing or null."""
        value = self.mapping().get(key)
        return None if value is None else self._child(key, value)

    def text(self) -> str:
        """The value as text."""
        return self._expect(str, "text")

    def number(self) -> float:
        """The value as a number (not a boolean)."""
        return float(self._expect(float, "a number"))

    def flag(self) -> bool:
        """The value as true or false."""
        return bool(self._expect(bool, "true or false"))

    def text_at(self, key: str) -> str:
        """The text at ``key`` (required)."""
        return self.field(key, "text").text()

    def optional_text(self, key: str) -> str | None:
        """The text at ``key``, or None when it is missing or null."""
        child = self.optional(key)
        return None if child is None else child.text()
