"""ComfyUI's websocket (``/ws?clientId=ID``): per-step progress of a prompt, and a sign of life while it runs.

ComfyUI sends every client the JSON messages of the prompts it queued with its ``client_id``: ``execution_start``,
``execution_cached``, ``executing`` (``node`` null: the prompt is done), ``progress`` (``value`` of ``max`` steps
of the running node), ``executed``, ``execution_success``, ``execution_error``, ``execution_interrupted``; newer
versions also broadcast ``progress_state`` (every node's state) and ``status`` (the queue) to every client, and
binary frames carry preview images. :class:`ProgressSocket` reads them for one prompt at a time:

- only messages naming that prompt count (``progress`` and ``executing`` without a ``prompt_id``, as older
  ComfyUI versions send them to this client only, count too); others, binary frames, pings, unknown types, text
  that is not JSON or longer than ``MAX_JSON`` are skipped;
- each new step goes to the step callback as ``value / max``;
- every message about the prompt that differs from the previous one (and every change of the queue) is a sign of
  life: the prompt fails after ``timeout`` seconds without one, not after ``timeout`` seconds in all;
- a frame or message over ``MAX_MESSAGE`` bytes, a broken or closed connection, or a protocol error raise
  :class:`SocketLost` (the backend then follows the prompt by polling ``/history``).

Opening is bounded: the TCP connection by the connect timeout, the whole handshake and the first ``status``
message (ComfyUI sends it once the socket is registered for the client id; prompts are queued only after it) by
the same time (a watchdog closes a socket whose server sends endless headers or an endless refusal); no proxy, no
redirect.

Example:
    >>> sock = ProgressSocket.open("http://127.0.0.1:8188", "1f0c...", connect_timeout=10)
    >>> sock.follow("prompt-id", "SubIN05_0", on_step, timeout=300, deadline=Deadline(None))
    'done'
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import websocket

from lbw.errors import RenderError
from lbw.render.backends.base import StepCallback
from lbw.render.backends.http import Deadline, one_line, size_text

MAX_MESSAGE = 16 << 20  # ComfyUI's previews are a few hundred KiB; nothing it sends comes near this
MAX_JSON = 1 << 20  # progress messages are a few hundred bytes; longer text is skipped unread
_TICK = 0.5  # how often a silent wait looks at the clock and the deadline
# Message types that say the prompt is still being worked on (besides ``progress`` and ``executing``).
_ALIVE = frozenset({"execution_start", "execution_cached", "executed", "progress_state"})
# Message types that end the prompt (``/history`` then says whether it failed and why).
_FINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})


class SocketLost(Exception):
    """The websocket cannot be opened or broke; ``reason`` says why (one line, for a note)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CappedFrames(websocket.frame_buffer):
    """websocket-client's frame reader, refusing a frame whose declared length is over ``MAX_MESSAGE``."""

    def recv_length(self) -> None:
        super().recv_length()
        if self.length is not None and self.length > MAX_MESSAGE:
            raise websocket.WebSocketPayloadException(
                f"a frame of {size_text(self.length)}, more than the {size_text(MAX_MESSAGE)} lbw reads")


class _CappedMessages(websocket.continuous_frame):
    """websocket-client's reassembly of fragmented messages, refusing one that grows over ``MAX_MESSAGE``."""

    def add(self, frame: websocket.ABNF) -> None:
        super().add(frame)
        if self.cont_data is not None and len(self.cont_data[1]) > MAX_MESSAGE:
            raise websocket.WebSocketPayloadException(
                f"a fragmented message of more than {size_text(MAX_MESSAGE)}")


class _Socket(websocket.WebSocket):
    def __init__(self) -> None:
        super().__init__(enable_multithread=False)
        self.frame_buffer = _CappedFrames(self._recv, False)
        self.cont_frame = _CappedMessages(False, False)


def socket_url(base_url: str, client_id: str) -> str:
    """The websocket URL of a ComfyUI at ``base_url`` (its path prefix kept; no user, password or query).

    Example:
        >>> socket_url("https://me:pw@host:8443/comfy/?t=1", "abc")
        'wss://host:8443/comfy/ws?clientId=abc'
    """
    parts = urllib.parse.urlsplit(base_url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    port = f":{parts.port}" if parts.port is not None else ""
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = urllib.parse.urlencode({"clientId": client_id})
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}/ws?{query}"


class ProgressSocket:
    """One open websocket to ComfyUI for one client id (see the module docstring)."""

    def __init__(self, ws: websocket.WebSocket, clock: Callable[[], float] = time.monotonic) -> None:
        self.ws = ws
        self.clock = clock

    @classmethod
    def open(
        cls, base_url: str, client_id: str, *, connect_timeout: float, deadline: Deadline | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ProgressSocket:
        """Connect and finish the handshake within ``connect_timeout`` seconds; SocketLost when that fails."""
        parts = urllib.parse.urlsplit(base_url)
        limit = min(connect_timeout, deadline.left()) if deadline is not None else connect_timeout
        if limit <= 0:
            raise SocketLost("the run reached its deadline")
        default = 443 if parts.scheme == "https" else 80
        try:
            raw = socket.create_connection((parts.hostname or "", parts.port or default), timeout=limit)
        except OSError as error:
            raise SocketLost(f"cannot connect ({_reason(error)})") from None
        fired = threading.Event()

        def give_up() -> None:
            fired.set()
            _shut(raw)

        watchdog = threading.Timer(limit, give_up)
        watchdog.daemon = True
        watchdog.start()
        ws = _Socket()
        try:
            sock = raw
            if parts.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname)
            ws.settimeout(limit)
            ws.connect(socket_url(base_url, client_id), socket=sock, suppress_origin=True, redirect_limit=0)
            _await_status(ws)
        except websocket.WebSocketBadStatusException as error:
            raw.close()
            status = getattr(error, "status_code", None)
            raise SocketLost(f"the server refused the upgrade (HTTP {status})") from None
        except (websocket.WebSocketException, OSError, ValueError) as error:
            raw.close()
            late = fired.is_set() or isinstance(error, websocket.WebSocketTimeoutException)
            said = f"no websocket handshake and status message within {limit:g} s" if late else _reason(error)
            raise SocketLost(said) from None
        finally:
            watchdog.cancel()
        return cls(ws, clock)

    def close(self) -> None:
        """Close the connection at once (no closing handshake to wait for; never fails)."""
        _shut(self.ws.sock)
        with contextlib.suppress(OSError):
            self.ws.shutdown()

    def follow(
        self,
        prompt_id: str,
        label: str,
        on_step: StepCallback | None,
        *,
        timeout: float,
        deadline: Deadline,
        where: str | None = None,
    ) -> float | None:
        """Read messages until ``prompt_id`` ends; returns the last fraction sent to ``on_step`` (None: none).

        RenderError when ``timeout`` seconds pass with no sign of life or the deadline is reached; SocketLost when
        the connection breaks.
        """
        last_alive = self.clock()
        last_data: Any = None
        queue: Any = None
        step: tuple[float, float] | None = None
        sent: float | None = None
        while True:
            quiet = timeout - (self.clock() - last_alive)
            if deadline.left() <= 0:
                raise deadline.error(f"GET /ws (cell {label!r})")
            if quiet <= 0:
                at = f"the last was step {step[0]:g} of {step[1]:g}" if step else "no step was reported"
                raise RenderError(f"GET /ws: cell {label!r} showed no progress within {timeout:g} s (--timeout; "
                                  f"{at})", where=where)
            self.ws.settimeout(max(0.01, min(quiet, deadline.left(), _TICK)))
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError, ValueError) as error:
                raise SocketLost(_reason(error)) from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise SocketLost("the server closed the websocket")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue  # binary previews, pings and pongs
            event = parse_message(data)
            if event is None:
                continue
            kind, body = event
            if kind == "status":  # the queue moved: ComfyUI is alive and the prompt nearer its turn
                state = body.get("status")
                if queue is not None and state != queue:
                    last_alive = self.clock()
                queue = state
                continue
            named = body.get("prompt_id")
            if named != prompt_id and not (named is None and kind in ("progress", "executing")):
                continue  # another prompt's (another client's, or an earlier one)
            if data != last_data:
                last_data, last_alive = data, self.clock()
            if kind in _FINAL or (kind == "executing" and "node" in body and body["node"] is None):
                return sent
            if kind == "progress":
                found = progress_step(body)
                if found is not None and found != step:
                    step = found
                    sent = found[0] / found[1]
                    if on_step is not None:
                        on_step(sent, label)


def _await_status(ws: websocket.WebSocket) -> None:
    """Wait for the ``status`` message ComfyUI sends a socket once it is registered for its client id: a prompt
    queued before that would send its messages to nobody. (The handshake watchdog bounds the wait.)"""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("the server closed the websocket")
        event = parse_message(data) if opcode == websocket.ABNF.OPCODE_TEXT else None
        if event is not None and event[0] == "status":
            return


def parse_message(data: Any) -> tuple[str, dict[str, Any]] | None:
    """``(type, data)`` of a ComfyUI text message, or None for anything else (too long, not JSON, wrong shape).

    Example:
        >>> parse_message(b'{"type": "progress", "data": {"value": 3, "max": 20}}')
        ('progress', {'value': 3, 'max': 20})
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_JSON:
        return None
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, an integer of 5,000 digits
        return None
    if not isinstance(message, dict):
        return None
    kind, body = message.get("type"), message.get("data")
    if not isinstance(kind, str) or not isinstance(body, dict):
        return None
    return kind, body


def progress_step(body: dict[str, Any]) -> tuple[float, float] | None:
    """``(value, max)`` of a ``progress`` message when both are finite numbers with 0 <= value <= max, max > 0.

    Example:
        >>> progress_step({"value": 3, "max": 20}), progress_step({"value": True, "max": 20})
        ((3.0, 20.0), None)
    """
    value, top = body.get("value"), body.get("max")
    numbers = [v for v in (value, top) if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 2:
        return None
    try:
        value, top = float(numbers[0]), float(numbers[1])
    except OverflowError:
        return None
    if not (math.isfinite(value) and math.isfinite(top) and 0 <= value <= top and top > 0):
        return None
    return value, top


def _shut(sock: socket.socket | None) -> None:
    """Shut ``sock`` down so that a read blocked on it returns (the handshake watchdog)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return one_line(f"{type(error).__name__}: {reason}", 200)
