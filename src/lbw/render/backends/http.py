"""A small JSON-over-HTTP client (standard library only) with retries and exponential backoff.

Connection failures, timeouts and HTTP 5xx are retried (``retries`` times, waiting ``backoff``, 2x``backoff``,
4x...); HTTP 4xx is not retried and becomes a RenderError carrying the server's message.

Example:
    >>> client = HttpClient("http://127.0.0.1:7860", retries=3, backoff=0.5)
    >>> client.get_json("/sdapi/v1/scripts")["txt2img"][:1]
    ['lora block weight']
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from lbw.errors import RenderError

_RETRY_STATUS = frozenset({500, 502, 503, 504})


class HttpError(RenderError):
    """An HTTP error response; ``status`` is the code and ``detail`` the server's message."""

    def __init__(self, message: str, *, status: int, detail: str, where: str | None = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message, where=where)


class HttpClient:
    """JSON requests against ``base_url`` with bounded retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RenderError(f"server URL {base_url!r} must look like http://HOST:PORT")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.attempts = 0

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The full URL of ``path`` with query ``params``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{self.base_url}{path}{query}"

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` and decode the JSON body."""
        return _decode(self.request("GET", path, params=params), self.url(path))

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer."""
        return _decode(self.request("POST", path, body=body), self.url(path))

    def get_bytes(self, path: str, params: Mapping[str, str] | None = None) -> bytes:
        """GET ``path`` and return the raw body."""
        return self.request("GET", path, params=params)

    def request(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> bytes:
        """One request with retries; returns the body bytes."""
        url = self.url(path, params)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            self.attempts += 1
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as error:
                detail = _error_detail(error)
                if error.code in _RETRY_STATUS:
                    last = f"HTTP {error.code}: {detail}"
                    continue
                raise HttpError(
                    f"HTTP {error.code} from {method} {path}: {detail}",
                    status=error.code,
                    detail=detail,
                    where=self.base_url,
                ) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                last = f"{type(error).__name__}: {reason}"
        raise RenderError(
            f"{method} {path} failed after {self.retries + 1} attempts ({last}); is the server running?",
            where=self.base_url,
        )


def _decode(raw: bytes, url: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RenderError(f"the server did not answer JSON: {raw[:80]!r}", where=url) from None


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read().decode("utf-8", "replace")
    except OSError:
        return str(error.reason)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip()[:300] or str(error.reason)
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return str(value)[:300]
    return raw[:300]
