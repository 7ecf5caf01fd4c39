"""ComfyUI's websocket progress and server pools, against real local servers on 127.0.0.1 (issue #11).

The fake ComfyUI is a threaded HTTP server whose ``/ws`` route speaks the websocket protocol through the
``websockets`` library's Sans-I/O ``ServerProtocol`` (handshake and frames are the library's); its prompts "run" in
a thread that sends the messages a real ComfyUI sends (``execution_start``, ``executing``, ``progress``,
``execution_success``, ``executing`` with node null ...) to the client id the prompt was queued with, then files
the outputs under ``/history``. The fake web UI answers the endpoints the a1111 backend calls. Every server stops
with its test; waits are bounded (timeouts of a fraction of a second to a few seconds).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.datastructures import Headers
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from lbw.errors import RenderError
from lbw.interfaces.cli.app import run
from lbw.render.backends import comfy_ws
from lbw.render.backends.a1111 import txt2img_payload
from lbw.render.backends.comfyui import ComfyUIBackend
from lbw.render.plan import BackendSpec, Cell, LoraSpec, Plan, Settings, plan_from_json, plan_to_json, public_urls
from lbw.render.pool import ServerPool
from lbw.render.runner import run_plan
from lbw.services.plot import make_backend

SIZE = 16
LOADER = "LoraLoaderBlockWeight //Inspire"


def noise_png(text: str) -> bytes:
    """A noise image determined by ``text`` (never one flat colour)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(raw_or_path: bytes | Path) -> np.ndarray:
    source = io.BytesIO(raw_or_path) if isinstance(raw_or_path, bytes) else raw_or_path
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


class Handler(BaseHTTPRequestHandler):
    """Hands every request to ``server.fake.handle``; a route may take the connection over (the websocket)."""

    def _route(self, method: str) -> None:
        parsed = urllib.parse.urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        query = dict(urllib.parse.parse_qsl(parsed.query))
        answer = self.server.fake.handle(self, method, parsed.path, query, body)  # type: ignore[attr-defined]
        if answer is None:
            return  # the route answered by itself
        status, payload = answer
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve(fake: Any) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.fake = fake  # type: ignore[attr-defined]
    fake.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        fake.stop.set()
        if not fake.dead:
            server.shutdown()
            server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """The URL of a port nothing listens on (connections are refused)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


class Fake:
    """Shared by the fakes: request counts, a stop event, and dying (the listening socket closes)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.dead = False
        self.server: ThreadingHTTPServer | None = None

    def die(self) -> None:
        """Stop listening: every later connection is refused."""
        self.dead = True
        assert self.server is not None
        server = self.server
        threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()

    def handle(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any] | None:
        self.counts[path] += 1
        route = getattr(self, f"{method.lower()}_{path.strip('/').split('/')[0]}", None)
        if route is None:
            return 404, {"detail": "Not Found"}
        return route(handler, path, query, body)


# ---- the fake ComfyUI with a websocket ------------------------------------------------------------------------


class WsClient:
    """One websocket connection of the fake: frames are built by ``websockets``' ServerProtocol."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.handler = handler
        self.protocol = ServerProtocol()
        self.lock = threading.Lock()
        request = WsRequest(handler.path, Headers(list(handler.headers.items())))
        response = self.protocol.accept(request)
        self.protocol.send_response(response)
        self.accepted = response.status_code == 101
        self._flush()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.handler.connection.sendall(data)

    def text(self, message: Any) -> None:
        raw = message if isinstance(message, str) else json.dumps(message)
        with self.lock, suppress(OSError):
            self.protocol.send_text(raw.encode())
            self._flush()

    def binary(self, data: bytes) -> None:
        with self.lock, suppress(OSError):
            self.protocol.send_binary(data)
            self._flush()

    def wait_closed(self, stop: threading.Event) -> None:
        """Read (and drop) what the client sends until it hangs up or the test ends."""
        self.handler.connection.settimeout(0.2)
        while not stop.is_set():
            try:
                data = self.handler.connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.protocol.receive_data(data)


def progress_script(steps: int = 4, pause: float = 0.0, extra: Callable[[str, int], list[Any]] | None = None
                    ) -> Callable[[str], list[Any]]:
    """The messages of one prompt as a real ComfyUI sends them; ``("sleep", s)`` pauses, ``extra(id, step)`` adds
    messages before each step (foreign prompts, binary frames, junk)."""
    def script(prompt_id: str) -> list[Any]:
        messages: list[Any] = [
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}},
            {"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": 1}},
            {"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt_id, "timestamp": 1}},
            {"type": "executing", "data": {"node": "6", "display_node": "6", "prompt_id": prompt_id}},
        ]
        for step in range(1, steps + 1):
            messages += extra(prompt_id, step) if extra else []
            messages.append(("sleep", pause))
            messages.append({"type": "progress", "data": {"value": step, "max": steps, "prompt_id": prompt_id,
                                                          "node": "6"}})
            messages.append(b"\x00\x00\x00\x01" + b"jpeg preview")  # a binary preview frame
        messages += [
            {"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": prompt_id}},
            {"type": "executed", "data": {"node": "9", "output": {"images": []}, "prompt_id": prompt_id}},
            {"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": 2}},
            "history",  # the outputs are filed here (ComfyUI files them after execution_success)
            {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}},
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
        ]
        return messages
    return script


class FakeComfy(Fake):
    def __init__(self, script: Callable[[str], list[Any]] | None = None, *, websocket: bool | str = True,
                 delay: float = 0.0, fail: bool = False) -> None:
        super().__init__()
        self.script = script or progress_script()
        self.websocket = websocket
        self.delay = delay
        self.fail = fail
        self.clients: dict[str, WsClient] = {}
        self.done: set[str] = set()
        self.graphs: dict[str, Any] = {}
        self.lock = threading.Lock()

    def get_ws(self, handler, path, query, body):
        if not self.websocket:
            return 404, {"detail": "Not Found"}  # an old server, or a proxy that does not pass the upgrade
        handler.close_connection = True
        if self.websocket == "hang":  # never answers the upgrade
            self.stop.wait(5)
            return None
        if self.websocket == "endless":  # a status line, then headers without end
            with suppress(OSError):
                handler.connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
                while not self.stop.wait(0.005):
                    handler.connection.sendall(b"X-Padding: " + b"x" * 1000 + b"\r\n")
            return None
        client = WsClient(handler)
        if not client.accepted:
            return None
        if self.websocket == "silent":  # upgrades, then never says anything
            client.wait_closed(self.stop)
            return None
        self.clients[query.get("clientId", "")] = client
        client.text({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                "sid": query.get("clientId")}})
        client.wait_closed(self.stop)
        return None

    def get_object_info(self, handler, path, query, body):
        node = urllib.parse.unquote(path.split("/", 2)[2])
        if node == LOADER:
            return 200, {node: {"input": {"required": {"lora_name": [["face.safetensors"], {}]}}}}
        return 200, {node: {"input": {"required": {"ckpt_name": [["tiny.safetensors"]]}}}}

    def post_prompt(self, handler, path, query, body):
        with self.lock:
            prompt_id = f"p{len(self.graphs) + 1}-{id(self) % 1000}"
            self.graphs[prompt_id] = body["prompt"]
        client = self.clients.get(body.get("client_id", ""))
        threading.Thread(target=self._execute, args=(prompt_id, client), daemon=True).start()
        return 200, {"prompt_id": prompt_id, "number": len(self.graphs), "node_errors": {}}

    def _execute(self, prompt_id: str, client: WsClient | None) -> None:
        time.sleep(self.delay)
        for message in self.script(prompt_id):
            if self.stop.is_set():
                return
            if message == "history":
                self.done.add(prompt_id)
            elif isinstance(message, tuple):
                time.sleep(message[1])
            elif client is not None:
                client.binary(message) if isinstance(message, bytes) else client.text(message)

    def get_history(self, handler, path, query, body):
        prompt_id = urllib.parse.unquote(path.rsplit("/", 1)[1])
        if prompt_id not in self.done:
            return 200, {}
        if self.fail:
            status = {"status_str": "error", "completed": False, "messages": [["execution_error", {
                "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError", "exception_message": "CUDA OOM"}]]}
            return 200, {prompt_id: {"outputs": {}, "status": status}}
        images = [{"filename": f"lbw_{prompt_id}.png", "subfolder": "", "type": "output"}]
        return 200, {prompt_id: {"outputs": {"9": {"images": images}},
                                 "status": {"status_str": "success", "completed": True, "messages": []}}}

    def get_view(self, handler, path, query, body):
        prompt_id = query["filename"][len("lbw_"):-len(".png")]
        return 200, noise_png(json.dumps(self.graphs[prompt_id], sort_keys=True))


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small kohya LoRA file with real SD1.5 module names in two blocks (IN04 and OUT06)."""
    import torch

    from lbw.files.writer import save_lora

    tensors = {}
    for module in ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                   "lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn1_to_q"):
        tensors[f"{module}.lora_down.weight"] = torch.full((2, 640), 0.01)
        tensors[f"{module}.lora_up.weight"] = torch.full((640, 2), 0.01)
        tensors[f"{module}.alpha"] = torch.tensor(2.0)
    path = tmp_path_factory.mktemp("lora") / "face.safetensors"
    save_lora(tensors, {"ss_network_module": "networks.lora"}, path)
    return path


def comfy_plan(lora: Path, labels: tuple[str, ...] = ("a", "b")) -> Plan:
    cells = tuple(Cell(label, (1.0, 1.0, 1.0, index * 0.25) + (1.0,) * 13) for index, label in enumerate(labels))
    return Plan(kind="custom", layout="SD17", cells=cells, model="tiny.safetensors",
                loras=(LoraSpec(path=str(lora), name="face.safetensors"),),
                settings=Settings(seeds=(1,), width=SIZE, height=SIZE, steps=4))


class Steps:
    """A step callback that records what it gets (from any thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, fraction: float, text: str, cells: int = 1) -> None:
        with self.lock:
            self.calls.append((fraction, text))


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("lbw")]


@pytest.fixture(autouse=True)
def _lbw_notes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbw")


# ---- 1. ComfyUI progress over the websocket ------------------------------------------------------------------


def test_steps_from_the_websocket_reach_the_step_callback_exactly(tiny_lora, tmp_path, caplog):
    def hostile(prompt_id: str, step: int) -> list[Any]:
        return [
            {"type": "progress", "data": {"value": 7, "max": 9, "prompt_id": "someone-else", "node": "6"}},
            {"type": "executing", "data": {"node": None, "prompt_id": "someone-else"}},  # another prompt ended
            {"type": "execution_error", "data": {"prompt_id": "someone-else"}},
            {"type": "progress", "data": {"value": True, "max": 4, "prompt_id": prompt_id}},  # not a number
            {"type": "progress", "data": {"value": 9, "max": 4, "prompt_id": prompt_id}},  # beyond max
            {"type": "progress", "data": {"value": 1, "max": float("nan"), "prompt_id": prompt_id}},
            {"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": {"6": {"value": step, "max": 4,
                                                                                        "state": "running"}}}},
            {"type": "no-such-type", "data": {"prompt_id": prompt_id}},
            "{not json", "[1, 2]", json.dumps({"type": "progress", "data": [step]}), "9" * 5000,
            '{"type": "progress", "data": ' * 2000 + "{}" + "}" * 2000,  # nested too deep
            b"\x00\x00\x00\x02" + bytes(3 << 20),  # a 3 MiB binary frame (under the cap): read and dropped
        ]

    fake = FakeComfy(progress_script(steps=4, extra=hostile))
    steps = Steps()
    with serve(fake) as url:
        backend = ComfyUIBackend(url=url, poll_interval=0.01, timeout=5)
        result = run_plan(comfy_plan(tiny_lora), backend, tmp_path, on_step=steps)
        backend.close()
    assert result.rendered == 2
    assert steps.calls == [(0.25, "a"), (0.5, "a"), (0.75, "a"), (1.0, "a"),
                           (0.25, "b"), (0.5, "b"), (0.75, "b"), (1.0, "b")]
    assert fake.counts["/ws"] == 1  # one websocket for the whole run
    assert not notes(caplog)  # nothing fell back
    for job, path in result.cell_paths.items():  # each cell is the image of its own graph
        graph = backend._graph(result.plan, job)
        assert np.array_equal(pixels(path), pixels(noise_png(json.dumps(graph, sort_keys=True))))


def test_older_servers_progress_without_prompt_id_counts(tiny_lora, tmp_path):
    def old(prompt_id: str) -> list[Any]:
        return [{"type": "executing", "data": {"node": "6"}},
                {"type": "progress", "data": {"value": 1, "max": 2}},
                {"type": "progress", "data": {"value": 2, "max": 2}},
                "history", {"type": "executing", "data": {"node": None}}]

    steps = Steps()
    with serve(FakeComfy(old)) as url:
        run_plan(comfy_plan(tiny_lora, ("a",)), ComfyUIBackend(url=url, poll_interval=0.01), tmp_path, on_step=steps)
    assert steps.calls == [(0.5, "a"), (1.0, "a")]


def test_a_cell_slower_than_the_timeout_lives_while_its_steps_advance(tiny_lora, tmp_path, caplog):
    fake = FakeComfy(progress_script(steps=8, pause=0.2))  # 1.6 s per cell, a step every 0.2 s
    steps = Steps()
    with serve(fake) as url:
        started = time.monotonic()
        result = run_plan(comfy_plan(tiny_lora, ("a",)), ComfyUIBackend(url=url, timeout=0.7, poll_interval=0.01),
                          tmp_path, on_step=steps)
        took = time.monotonic() - started
    assert result.rendered == 1 and took > 0.7  # it did outlive --timeout (this is what is tested, not speed)
    assert [fraction for fraction, _ in steps.calls] == [step / 8 for step in range(1, 9)]
    assert not notes(caplog)


def test_a_stalled_cell_fails_after_the_timeout_with_the_last_step(tiny_lora, tmp_path):
    def stalls(prompt_id: str) -> list[Any]:
        return [{"type": "execution_start", "data": {"prompt_id": prompt_id}},
                {"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": prompt_id, "node": "6"}},
                *[{"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": prompt_id, "node": "6"}}] * 3,
                *[{"type": "progress", "data": {"value": i, "max": 9, "prompt_id": "other"}} for i in range(9)],
                ("sleep", 3.0)]  # then silence (repeats and other prompts' steps are no sign of life)

    with serve(FakeComfy(stalls)) as url, pytest.raises(RenderError) as caught:
        run_plan(comfy_plan(tiny_lora, ("a",)), ComfyUIBackend(url=url, timeout=0.5, poll_interval=0.01), tmp_path)
    assert str(caught.value) == (f"{url}: GET /ws: cell 'a' showed no progress within 0.5 s (--timeout; the last "
                                 "was step 1 of 4)")


def test_a_server_refusing_the_upgrade_is_polled_with_one_note(tiny_lora, tmp_path, caplog):
    fake = FakeComfy(websocket=False)
    steps = Steps()
    with serve(fake) as url:
        result = run_plan(comfy_plan(tiny_lora, ("a", "b", "c")), ComfyUIBackend(url=url, poll_interval=0.01),
                          tmp_path, on_step=steps)
    assert result.rendered == 3
    assert notes(caplog) == [f"{url}: no websocket progress (the server refused the upgrade (HTTP 404)): following "
                             "each cell by polling /history (--timeout now bounds a cell from queueing to its image)"]
    assert fake.counts["/ws"] == 1  # tried once, not per cell
    assert sum(n for p, n in fake.counts.items() if p.startswith("/history/")) >= 3
    assert steps.calls == [(1.0, "a"), (1.0, "b"), (1.0, "c")]  # polling knows only the end of a cell


@pytest.mark.parametrize("kind", ["hang", "endless", "silent"])
def test_a_websocket_that_never_opens_is_given_up_after_the_connect_timeout(kind, tiny_lora, tmp_path, caplog):
    with serve(FakeComfy(websocket=kind)) as url:
        result = run_plan(comfy_plan(tiny_lora, ("a",)),
                          ComfyUIBackend(url=url, poll_interval=0.01, connect_timeout=0.5), tmp_path)
    assert result.rendered == 1
    assert notes(caplog) == [f"{url}: no websocket progress (no websocket handshake and status message within 0.5 "
                             "s): following each cell by polling /history (--timeout now bounds a cell from queueing "
                             "to its image)"]


def test_a_frame_over_the_cap_drops_the_websocket_for_polling(tiny_lora, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(comfy_ws, "MAX_MESSAGE", 64 << 10)

    def huge(prompt_id: str, step: int) -> list[Any]:
        return [b"\x00\x00\x00\x01" + bytes(100 << 10)] if step == 2 else []

    with serve(FakeComfy(progress_script(steps=3, extra=huge))) as url:
        result = run_plan(comfy_plan(tiny_lora, ("a", "b")), ComfyUIBackend(url=url, poll_interval=0.01), tmp_path)
    assert result.rendered == 2
    said = notes(caplog)
    assert len(said) == 1 and said[0].startswith(f"{url}: the websocket broke (WebSocketPayloadException: a frame "
                                                 "of 100 KiB, more than the 64 KiB lbw reads): following each cell")


def test_an_execution_error_on_the_websocket_is_a_failed_cell(tiny_lora, tmp_path):
    def fails(prompt_id: str) -> list[Any]:
        return [{"type": "execution_start", "data": {"prompt_id": prompt_id}},
                {"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": prompt_id, "node": "6"}},
                "history", {"type": "execution_error", "data": {"prompt_id": prompt_id, "node_type": "KSampler",
                                                                "exception_message": "CUDA OOM"}}]

    steps = Steps()
    with serve(FakeComfy(fails, fail=True)) as url, pytest.raises(RenderError) as caught:
        run_plan(comfy_plan(tiny_lora), ComfyUIBackend(url=url, poll_interval=0.01), tmp_path, on_step=steps)
    assert str(caught.value) == ("2 cells failed and were not cached (run the same command again to retry): a seed 1: "
                                 "ComfyUI: OutOfMemoryError in KSampler: CUDA OOM; b seed 1: ComfyUI: "
                                 "OutOfMemoryError in KSampler: CUDA OOM")
    assert steps.calls == [(0.25, "a"), (0.25, "b")]  # a failed cell never reaches 1
    assert not list((tmp_path / "cache").glob("*.png"))


def test_messages_are_parsed_defensively():
    assert comfy_ws.parse_message(b'{"type": "x", "data": {}}') == ("x", {})
    for junk in (b"", b"\xff\xfe", b"null", b'{"type": 1, "data": {}}', b'{"type": "x", "data": []}',
                 b"1" * 5000, b"[" * 100000, b" " * (comfy_ws.MAX_JSON + 1)):
        assert comfy_ws.parse_message(junk) is None
    for body in ({"value": 1}, {"value": -1, "max": 4}, {"value": 5, "max": 4}, {"value": 0, "max": 0},
                 {"value": "1", "max": 4}, {"value": 1, "max": float("inf")}, {"value": 10**400, "max": 10**401}):
        assert comfy_ws.progress_step(body) is None
    assert comfy_ws.progress_step({"value": 0, "max": 20}) == (0.0, 20.0)


# ---- 2. server pools -------------------------------------------------------------------------------------------


class FakeWebUI(Fake):
    """The endpoints the a1111 backend calls; an image depends only on the request (any server draws the same)."""

    def __init__(self, delay: float = 0.0, die_after: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.die_after = die_after
        self.drawn: list[str] = []

    def get_sdapi(self, handler, path, query, body):
        answers = {
            "/sdapi/v1/scripts": {"txt2img": ["lora block weight", "x/y/z plot"], "img2img": []},
            "/sdapi/v1/loras": [{"name": "face", "alias": "face", "path": "/l/face.safetensors", "metadata": {}}],
            "/sdapi/v1/sd-models": [{"title": "tiny.safetensors [0123abcd]", "model_name": "tiny",
                                     "sha256": "ab" * 32}],
            "/sdapi/v1/progress": {"progress": 0.5, "state": {"sampling_step": 2}},
        }
        return (200, answers[path]) if path in answers else (404, {"detail": "Not Found"})

    def post_sdapi(self, handler, path, query, body):
        if self.dead:
            handler.close_connection = True
            return None  # hang up without an answer
        if self.die_after is not None and len(self.drawn) >= self.die_after:
            self.die()  # mid-run: this request gets no answer, later ones are refused
            return None
        time.sleep(self.delay)
        self.drawn.append(body["prompt"] + f" seed {body['seed']}")
        image = noise_png(json.dumps([body["prompt"], body["seed"], body["alwayson_scripts"]], sort_keys=True))
        return 200, {"images": [base64.b64encode(image).decode()], "parameters": {}, "info": "{}"}


def pool_plan(count: int = 6, seeds: tuple[int, ...] = (1,)) -> Plan:
    cells = tuple(Cell(f"c{i}", (1.0,) * 16 + (i / 8,)) for i in range(count))
    return Plan(kind="custom", layout="SD17", cells=cells, model="tiny", loras=(LoraSpec(name="face"),),
                settings=Settings(prompt="1girl", seeds=seeds, width=SIZE, height=SIZE, steps=4))


def expected_image(plan: Plan, job: Any) -> np.ndarray:
    body = txt2img_payload(plan, job)
    return pixels(noise_png(json.dumps([body["prompt"], body["seed"], body["alwayson_scripts"]], sort_keys=True)))


def check_cells(result: Any) -> None:
    """Every job's cell file holds that job's own image (so results landed in plan order)."""
    assert len(result.cell_paths) == len(result.plan.jobs())
    for job in result.plan.jobs():
        assert np.array_equal(pixels(result.cell_paths[job]), expected_image(result.plan, job)), job.cell.label


def test_a_pool_draws_every_cell_once_over_its_servers(tmp_path, caplog):
    fast, slow = FakeWebUI(delay=0.05), FakeWebUI(delay=0.6)
    steps = Steps()
    plan = pool_plan(6, seeds=(1, 2))
    with serve(fast) as fast_url, serve(slow) as slow_url:
        backend = make_backend("a1111", url=f"{fast_url}, {slow_url}", backoff=0.01, poll_interval=0.05)
        assert isinstance(backend, ServerPool)
        result = run_plan(plan, backend, tmp_path, on_step=steps)
        again = run_plan(plan, make_backend("a1111", url=f"{fast_url},{slow_url}"), tmp_path)  # the cache is shared
    drawn = fast.drawn + slow.drawn
    assert result.rendered == 12 and len(drawn) == 12 and len(set(drawn)) == 12  # every cell once, none twice
    assert fast.drawn and slow.drawn  # both servers worked
    check_cells(result)
    hosts = {text.rsplit(" @ ", 1)[1] for _, text in steps.calls}
    assert hosts <= {fast_url[len("http://"):], slow_url[len("http://"):]} and hosts
    assert not notes(caplog)
    assert (again.rendered, again.reused) == (0, 12)


def test_a_server_dead_from_the_start_leaves_the_pool_with_a_note(tmp_path, caplog):
    live = FakeWebUI()
    dead = closed_port_url()
    with serve(live) as url:
        result = run_plan(pool_plan(4), make_backend("a1111", url=f"{dead},{url}", backoff=0.01), tmp_path)
    assert result.rendered == 4 and len(live.drawn) == 4
    check_cells(result)
    assert notes(caplog) == [f"{dead} left the pool: GET /sdapi/v1/scripts: connection refused (gave up after 2 "
                             "attempts); is the server running?"]


def test_a_server_dying_mid_run_hands_its_cell_to_another(tmp_path, caplog):
    dying, steady = FakeWebUI(delay=0.05, die_after=2), FakeWebUI(delay=0.1)
    with serve(dying) as dying_url, serve(steady) as steady_url:
        result = run_plan(pool_plan(8), make_backend("a1111", url=f"{dying_url},{steady_url}", backoff=0.01),
                          tmp_path)
    assert result.rendered == 8
    assert len(dying.drawn) == 2 and len(steady.drawn) == 6  # the cell the dying server held was drawn again
    assert set(dying.drawn).isdisjoint(steady.drawn)
    check_cells(result)
    said = notes(caplog)
    assert len(said) == 1 and said[0].startswith(f"{dying_url} left the pool: POST /sdapi/v1/txt2img: ")
    assert said[0].endswith("; its cells go to the other server")


def test_every_server_down_is_one_error(tmp_path):
    dead = [closed_port_url(), closed_port_url()]
    with pytest.raises(RenderError) as caught:
        run_plan(pool_plan(2), make_backend("a1111", url=",".join(dead), backoff=0.01), tmp_path)
    assert str(caught.value) == (f"no server of the pool can render: {dead[0]}, {dead[1]}: GET /sdapi/v1/scripts: "
                                 "connection refused (gave up after 2 attempts); is the server running?")
    dying2, dying3 = FakeWebUI(die_after=1), FakeWebUI(die_after=1)
    with serve(dying2) as url2, serve(dying3) as url3, pytest.raises(RenderError) as caught:
        run_plan(pool_plan(6), make_backend("a1111", url=f"{url2},{url3}", backoff=0.01), tmp_path / "two")
    message = str(caught.value)
    assert message.startswith("every server of the pool failed; finished cells are kept in the cache: run the same "
                              "command again to go on: ") and url2 in message and url3 in message
    assert len(list((tmp_path / "two" / "cache").glob("*.png"))) == 2  # what was drawn is kept


def test_a_comfyui_pool_with_websocket_progress(tiny_lora, tmp_path, caplog):
    one, two = FakeComfy(progress_script(steps=2, pause=0.05)), FakeComfy(progress_script(steps=2, pause=0.3))
    steps = Steps()
    labels = tuple(f"c{i}" for i in range(5))
    with serve(one) as url1, serve(two) as url2:
        pool = make_backend("comfyui", url=f"{url1},{url2}", poll_interval=0.01)
        result = run_plan(comfy_plan(tiny_lora, labels), pool, tmp_path, on_step=steps)
        pool.close()
    assert result.rendered == 5 and len(one.graphs) + len(two.graphs) == 5 and one.graphs and two.graphs
    per_cell: dict[str, list[float]] = {}
    for fraction, text in steps.calls:
        per_cell.setdefault(text.rsplit(" @ ", 1)[0], []).append(fraction)
    assert per_cell == {label: [0.5, 1.0] for label in labels}
    assert not notes(caplog)


def test_the_cli_records_the_pool_without_secrets_and_all_dead_is_one_line(tmp_path, capsys):
    presets = tmp_path / "presets.txt"
    presets.write_text("ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\nNONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n")
    first, second = FakeWebUI(), FakeWebUI()
    with serve(first) as url1, serve(second) as url2:
        secret = url1.replace("http://", "http://me:pw@") + "/?token=1"
        args = ["plot", str(presets), "--backend", "a1111", "--url", f"{secret},{url2}", "--lora", "face", "--model",
                "tiny", "--width", str(SIZE), "--height", str(SIZE), "--steps", "4", "--seeds", "1,2,3",
                "-o", str(tmp_path / "out"), "--allow-empty-prompt"]
        assert run(args) == 0
    saved = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert saved["backend"] == {"name": "a1111", "url": f"{url1}/,{url2}", "mode": "presets"}
    assert len(first.drawn) + len(second.drawn) == 6
    capsys.readouterr()
    dead = [closed_port_url(), closed_port_url()]
    args[args.index("--url") + 1] = ",".join(dead)
    assert run([*args[:-3], "-o", str(tmp_path / "dead"), "--allow-empty-prompt"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"lbw: error: no server of the pool can render: {dead[0]}, {dead[1]}: GET /sdapi/v1/scripts: connection "
        "refused (gave up after 2 attempts); is the server running?"]


def test_pool_urls_in_plans_are_checked():
    assert public_urls(" http://me:pw@a:1/x?t=1 ,https://b:2") == "http://a:1/x,https://b:2"
    plan = pool_plan(1)
    pooled = BackendSpec("comfyui", "http://10.0.0.2:8188,http://10.0.0.3:8188")
    from dataclasses import replace

    assert plan_from_json(plan_to_json(replace(plan, backend=pooled))).backend == pooled
    for url, said in (("http://a:1,,http://b:2", "an empty entry"), ("http://a:1,http://a:1", "named twice"),
                      ("http://a:1,http://me:pw@b:2", "without credentials"), ("http://a:1,ftp://b", "expected")):
        data = json.loads(plan_to_json(plan))
        data["backend"] = {"name": "a1111", "url": url, "mode": None}
        with pytest.raises(RenderError, match=said):
            plan_from_json(json.dumps(data))


def test_a_projects_url_may_name_a_pool():
    from lbw.errors import ProjectError
    from lbw.services.project_render import make_project_backend
    from lbw.services.project_settings import check_settings
    from lbw.services.project_types import ProjectSettings

    settings = ProjectSettings(lora="face", backend="comfyui", url="http://10.0.0.2:8188, http://10.0.0.3:8188")
    check_settings(settings)
    pool = make_project_backend(settings, {"timeout": 5.0})
    assert isinstance(pool, ServerPool) and pool.urls == ["http://10.0.0.2:8188", "http://10.0.0.3:8188"]
    assert [member.timeout for member in pool.members] == [5.0, 5.0]
    with pytest.raises(ProjectError, match="must start with http:// or https://, got 'ftp://b'"):
        check_settings(ProjectSettings(backend="a1111", url="http://a:1,ftp://b"))
