"""A small JSON-over-HTTP client (standard library only) that never hangs, never reads without limit and fails
in one line naming the endpoint.

- ``connect_timeout`` (default 10 s): the most a connection may take to open.
- ``read_timeout`` (default 300 s): the longest silence: how long a request waits for its answer with no sign of
  life (``activity``, e.g. a web UI's progress advancing, resets the clock), and the most its body may take to
  arrive once the answer has started.
- ``deadline``: one :class:`Deadline` for a whole run; every wait, retry and backoff stops at it.
- ``max_bytes`` (default 64 MiB, or a request's own ``limit``): the largest answer read. A larger
  ``Content-Length`` is refused before reading; a body without one stops being read at the cap.

Retried (``retries`` times, waiting ``backoff``, 2x ``backoff``, 4x ..., never past the deadline): what can succeed
on a retry: a refused, unreachable or timed-out connection, and HTTP 429, 502, 503, 504. Everything else fails at
once: HTTP 4xx and 500 (with the server's own error text), no answer within the read timeout, an answer cut off
mid-body, an answer over the size limit, a body that is not JSON.

Example:
    >>> client = HttpClient("http://127.0.0.1:7860", connect_timeout=5, read_timeout=60)
    >>> client.get_json("/sdapi/v1/scripts")["txt2img"][:1]
    ['lora block weight']
"""

from __future__ import annotations

import http.client
import json
import math
import re
import select
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from lbw.errors import RenderError

RETRY_STATUS = frozenset({429, 502, 503, 504})
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
MAX_BYTES = 64 << 20
_CHUNK = 1 << 20
_ERROR_BODY = 1 << 20  # the most read of an error answer (only its text is shown)
_TICK = 0.5  # how often a silent wait looks at ``activity`` and the deadline
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

# Returns the monotonic time of the last sign of life of the work a request waits for (None: none yet).
Activity = Callable[[], float | None]


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line: control characters and runs of white space become one space; cut at ``limit``.

    Example:
        >>> one_line("NansException:\\n  A tensor\\x00 with NaNs")
        'NansException: A tensor with NaNs'
    """
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def size_text(count: int) -> str:
    """``64 MiB``, ``1.5 KiB``, ``12 bytes``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"


class DeadlineReached(RenderError):
    """The run reached its ``--deadline`` (no other server or retry can help: a pool stops too)."""


class Deadline:
    """An overall time limit shared by every request of a run (``seconds`` None: no limit).

    Example:
        >>> deadline = Deadline(3600)
        >>> deadline.left() <= 3600
        True
    """

    def __init__(self, seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
            raise RenderError(f"the deadline must be a positive number of seconds, not {seconds!r}")
        self.seconds = seconds
        self.clock = clock
        self.at: float | None = None
        self.restart()

    def restart(self) -> None:
        """Count ``seconds`` from now (a run starts its deadline when it starts)."""
        self.at = None if self.seconds is None else self.clock() + self.seconds

    def left(self) -> float:
        """Seconds left (``inf`` without a deadline; may be negative)."""
        return math.inf if self.at is None else self.at - self.clock()

    def error(self, endpoint: str) -> DeadlineReached:
        """The one-line error for a run that reached its deadline during ``endpoint``."""
        return DeadlineReached(
            f"{endpoint}: the run reached its deadline of {self.seconds:g} s (--deadline); finished cells are "
            "kept in the cache: run the same command again to go on"
        )


class HttpError(RenderError):
    """An HTTP error answer; ``status`` is the code and ``detail`` the server's own error text."""

    def __init__(self, message: str, *, status: int, detail: str, where: str | None = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message, where=where)


class _Retry(Exception):
    """A failure a later attempt may not have: ``reason`` for the message, ``refused`` for the hint."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


class HttpClient:
    """JSON requests against ``base_url`` with timeouts, a size cap and retries (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        deadline: Deadline | None = None,
        max_bytes: int = MAX_BYTES,
        retries: int = 4,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RenderError(f"server URL {base_url!r} must look like http://HOST:PORT")
        try:
            parsed.port  # noqa: B018 (validates the port)
        except ValueError:
            raise RenderError(f"server URL {base_url!r} has an invalid port") from None
        for name, value in (("connect timeout", connect_timeout), ("read timeout", read_timeout)):
            if not (value > 0 and math.isfinite(value)):
                raise RenderError(f"the {name} must be a positive number of seconds, not {value!r}")
        self.base_url = base_url.rstrip("/")
        self._parsed = parsed
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline or Deadline(None, clock)
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.clock = clock
        self.attempts = 0

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The full URL of ``path`` with query ``params``."""
        return f"{self.base_url}{self._target(path, params)}"

    def _target(self, path: str, params: Mapping[str, str] | None) -> str:
        prefix = self._parsed.path.rstrip("/")
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{prefix}{path}{query}"

    def get_json(self, path: str, params: Mapping[str, str] | None = None, *, limit: int | None = None) -> Any:
        """GET ``path`` and decode the JSON body."""
        return decode_json(self.request("GET", path, params=params, limit=limit), f"GET {path}", self.base_url)

    def post_json(
        self, path: str, body: Any, *, limit: int | None = None, activity: Activity | None = None
    ) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer."""
        raw = self.request("POST", path, body=body, limit=limit, activity=activity)
        return decode_json(raw, f"POST {path}", self.base_url)

    def get_bytes(self, path: str, params: Mapping[str, str] | None = None, *, limit: int | None = None) -> bytes:
        """GET ``path`` and return the raw body."""
        return self.request("GET", path, params=params, limit=limit)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        limit: int | None = None,
        activity: Activity | None = None,
    ) -> bytes:
        """One request, retried where a retry can succeed; returns the body bytes (at most ``limit``)."""
        endpoint = f"{method} {path}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        target = self._target(path, params)
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return self._once(method, target, data, endpoint, limit or self.max_bytes, activity)
            except _Retry as failure:
                if attempt == self.retries:
                    hint = "; is the server running?" if failure.refused else ""
                    tries = f"{self.retries + 1} attempts" if self.retries else "1 attempt"
                    raise RenderError(f"{endpoint}: {failure.reason} (gave up after {tries}){hint}",
                                      where=self.base_url) from None
                wait = self.backoff * 2**attempt
                if self.deadline.left() <= wait:
                    raise self.deadline.error(endpoint) from None
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self, method: str, target: str, data: bytes | None, endpoint: str, limit: int, activity: Activity | None
    ) -> bytes:
        connection = self._connect(endpoint)
        try:
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                connection.request(method, target, body=data, headers=headers)
            except (OSError, http.client.HTTPException) as error:
                broke = f"the connection broke while sending the request ({_reason(error)})"
                raise self._fail(endpoint, broke) from None
            self._await_answer(connection, endpoint, activity)
            try:
                response = connection.getresponse()
            except TimeoutError:
                raise self._silence(endpoint, activity) from None
            except (OSError, http.client.HTTPException) as error:
                raise self._fail(endpoint, f"the server sent no valid HTTP answer ({_reason(error)})") from None
            if 200 <= response.status < 300:
                return self._read_body(connection, response, endpoint, limit)
            detail = self._error_detail(connection, response, endpoint)
            if response.status in RETRY_STATUS:
                raise _Retry(f"HTTP {response.status}: {detail}")
            raise HttpError(f"{endpoint}: HTTP {response.status}: {detail}", status=response.status, detail=detail,
                            where=self.base_url)
        finally:
            connection.close()

    def _connect(self, endpoint: str) -> http.client.HTTPConnection:
        left = self.deadline.left()
        if left <= 0:
            raise self.deadline.error(endpoint)
        timeout = min(self.connect_timeout, left)
        kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        connection = kind(self._parsed.hostname or "", self._parsed.port, timeout=timeout)
        try:
            connection.connect()
        except ConnectionRefusedError:
            raise _Retry("connection refused", refused=True) from None
        except TimeoutError:
            if self.deadline.left() <= 0:
                raise self.deadline.error(endpoint) from None
            raise _Retry(f"no connection within {timeout:g} s (--connect-timeout)") from None
        except OSError as error:
            raise _Retry(f"cannot connect ({_reason(error)})") from None
        return connection

    def _await_answer(self, connection: http.client.HTTPConnection, endpoint: str, activity: Activity | None) -> None:
        """Wait until the answer starts; fail after ``read_timeout`` without it or any ``activity``."""
        sock = connection.sock
        assert sock is not None
        sent = self.clock()
        while True:
            last = max(sent, (activity() if activity else None) or sent)
            quiet = self.read_timeout - (self.clock() - last)
            left = self.deadline.left()
            if left <= 0:
                raise self.deadline.error(endpoint)
            if quiet <= 0:
                raise self._silence(endpoint, activity)
            readable, _, _ = select.select([sock], [], [], max(0.0, min(quiet, left, _TICK)))
            if readable:
                sock.settimeout(max(0.001, min(self.read_timeout, self.deadline.left())))
                return

    def _read_body(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, endpoint: str, limit: int
    ) -> bytes:
        expected = _content_length(response, endpoint, self.base_url)
        if expected is not None and expected > limit:
            raise self._fail(endpoint, f"the answer is {size_text(expected)}, more than the {size_text(limit)} lbw "
                                       "accepts (not read)")
        body = bytearray()
        started = self.clock()
        while True:
            left = min(self.read_timeout - (self.clock() - started), self.deadline.left())
            if left <= 0:
                if self.deadline.left() <= 0:
                    raise self.deadline.error(endpoint)
                raise self._fail(endpoint, f"the answer took longer than {self.read_timeout:g} s to arrive "
                                           f"(--timeout; {size_text(len(body))} received)")
            if connection.sock is not None:
                connection.sock.settimeout(left)
            try:
                piece = response.read1(min(_CHUNK, limit + 1 - len(body)))
            except TimeoutError:
                continue  # the loop head reports it
            except (OSError, http.client.HTTPException) as error:
                raise self._fail(endpoint, f"the server closed the connection mid-answer after "
                                           f"{size_text(len(body))} ({_reason(error)})") from None
            if not piece:
                break
            body += piece
            if len(body) > limit:
                raise self._fail(endpoint, f"the answer is larger than the {size_text(limit)} lbw accepts "
                                           f"(stopped reading at {size_text(len(body))})")
        if expected is not None and len(body) < expected:
            raise self._fail(endpoint, f"the server closed the connection mid-answer: {size_text(len(body))} of "
                                       f"{size_text(expected)} received")
        return bytes(body)

    def _error_detail(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse, endpoint: str
    ) -> str:
        try:
            raw = self._read_body(connection, response, endpoint, _ERROR_BODY)
        except RenderError:
            raw = b""
        return error_text(raw, response.reason or "")

    def _silence(self, endpoint: str, activity: Activity | None) -> RenderError:
        progress = " and no progress" if activity else ""
        return self._fail(endpoint, f"no answer{progress} within {self.read_timeout:g} s (--timeout)")

    def _fail(self, endpoint: str, what: str) -> RenderError:
        return RenderError(f"{endpoint}: {what}", where=self.base_url)


def decode_json(raw: bytes, endpoint: str, where: str | None = None) -> Any:
    """``raw`` decoded as JSON; a one-line RenderError naming ``endpoint`` when it is not."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        shown = one_line(raw[:80].decode("utf-8", "replace"), 80)
        raise RenderError(f"{endpoint}: the answer is not JSON ({len(raw)} bytes: {shown!r})", where=where) from None


def error_text(raw: bytes, reason: str) -> str:
    """The server's own words from an error body, on one line.

    Understood: the web UI's ``{"error": "NansException", "detail": "", "errors": "A tensor ..."}``, FastAPI's
    ``{"detail": "..."}`` and ``{"detail": [{"loc": [...], "msg": "..."}]}``, ComfyUI's
    ``{"error": {"message": ..., "details": ...}, "node_errors": {...}}``, and plain text.

    Example:
        >>> error_text(b'{"error": "NansException", "detail": "", "errors": "A tensor with NaNs"}', "")
        'NansException: A tensor with NaNs'
    """
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return one_line(text) or reason
    if not isinstance(data, dict):
        return one_line(text) or reason
    parts: list[str] = []
    detail, error, errors = data.get("detail"), data.get("error"), data.get("errors")
    if isinstance(detail, str) and detail:
        parts.append(detail)
    elif isinstance(detail, list):
        parts.append("; ".join(_validation_item(item) for item in detail[:5]))
    elif isinstance(error, str) and error:
        parts.append(f"{error}: {errors}" if isinstance(errors, str) and errors else error)
    elif isinstance(error, dict):
        message, details = error.get("message"), error.get("details")
        parts.append(": ".join(str(v) for v in (message, details) if isinstance(v, str) and v))
    elif isinstance(data.get("message"), str):
        parts.append(data["message"])
    node_errors = data.get("node_errors")
    if isinstance(node_errors, dict) and node_errors:
        parts.append(node_errors_text(node_errors))
    found = "; ".join(part for part in parts if part)
    return one_line(found or text) or reason


def node_errors_text(node_errors: dict[str, Any]) -> str:
    """ComfyUI's ``node_errors`` in short: ``node lora0 (LoraLoader): Value not in list: ...``."""
    items = []
    for node, entry in list(node_errors.items())[:3]:
        entry = entry if isinstance(entry, dict) else {}
        kind = entry.get("class_type")
        errors = entry.get("errors") if isinstance(entry.get("errors"), list) else []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        words = ": ".join(str(first[k]) for k in ("message", "details") if isinstance(first.get(k), str) and first[k])
        items.append(f"node {node}" + (f" ({kind})" if isinstance(kind, str) else "") + (f": {words}" if words else ""))
    return one_line("; ".join(items))


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", []) if isinstance(part, str | int))
    message = item.get("msg", "")
    return f"{location}: {message}" if location else str(message)


def _content_length(response: http.client.HTTPResponse, endpoint: str, where: str) -> int | None:
    if response.chunked:
        return None
    value = response.getheader("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise RenderError(f"{endpoint}: the answer has an invalid Content-Length {one_line(value, 40)!r}",
                          where=where)
    return int(value)


def _reason(error: BaseException) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return f"IncompleteRead: {len(error.partial)} bytes in the last part"
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return one_line(f"{type(error).__name__}: {reason}", 200)

