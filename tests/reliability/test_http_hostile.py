"""The a1111 and comfyui backends against hostile local servers (issue #8 part D, issue #14.2 and #14.3).

Every server here is a real HTTP server on 127.0.0.1 in a thread; it stops by itself (a watchdog shuts it down
after 60 s, and a handler told to hang waits at most 10 s). Timeouts in these tests are fractions of a second, so
every failure arrives within a few seconds. Each failure must be one RenderError line naming the endpoint.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import socket
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lbw.errors import RenderError
from lbw.interfaces.cli.app import run
from lbw.render.backends.a1111 import A1111Backend
from lbw.render.backends.comfyui import ComfyUIBackend
from lbw.render.backends.http import HttpClient
from lbw.render.plan import Axis, Cell, LoraSpec, Plan, Settings, plan_to_json
from lbw.render.runner import run_plan
from lbw.services.analyze import eba_plan, run_eba

SIZE = 16
ALL = "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
NONE = "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"


def noise_png(text: str, size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    rng = np.random.default_rng(abs(hash(text)) % (1 << 32))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def flat_png(size: tuple[int, int] = (SIZE, SIZE), colour: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Request:
    """What a route sees: the handler (to write anything at all), method, path, query and decoded JSON body."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str], body: Any):
        self.handler, self.method, self.path, self.query, self.body = handler, method, path, query, body

    def json(self, status: int, payload: Any) -> None:
        self.raw(status, json.dumps(payload).encode(), "application/json")

    def raw(self, status: int, data: bytes, kind: str = "application/octet-stream") -> None:
        self.handler.send_response(status)
        self.handler.send_header("Content-Type", kind)
        self.handler.send_header("Content-Length", str(len(data)))
        self.handler.end_headers()
        self.handler.wfile.write(data)


Route = Callable[[Request], None]


class Server:
    """Routes by path (the first route whose key the path starts with); counts requests per path."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.sent = 0
        self.progress_polls = 0

    def hang(self, request: Request) -> None:
        self.stop.wait(10)  # never answers; gives up by itself (the connection then closes unanswered)


@contextmanager
def serve(server: Server) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _route(self, method: str) -> None:
            parsed = urllib.parse.urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            server.counts[parsed.path] += 1
            request = Request(self, method, parsed.path, dict(urllib.parse.parse_qsl(parsed.query)), body)
            for prefix, route in server.routes.items():
                if parsed.path.startswith(prefix):
                    with suppress(BrokenPipeError, ConnectionResetError):
                        route(request)
                    self.close_connection = True
                    return
            request.json(404, {"detail": "Not Found"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        server.stop.set()
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ---- a web UI that answers well unless a route is replaced ----------------------------------------------------

XYZ_CHOICES = ["Nothing", "Seed", "Prompt S/R"]
XYZ_DEFAULTS = [1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False]


def _txt2img(black: set[str] | None = None) -> Route:
    """txt2img as the web UI answers it: one noise image per cell; cells whose preset vector is in ``black`` come
    back as a flat black image (NaNs with --disable-nan-check, or X/Y/Z's filler for a failed cell)."""

    def vector_of(body: dict, prompt: str) -> str:
        presets = dict(line.split(":", 1) for line in body["alwayson_scripts"]["LoRA Block Weight"]["args"][0]
                       .splitlines())
        return presets[prompt.split("lbw=")[1].split(">")[0]]

    def image(body: dict, prompt: str) -> str:
        vector = vector_of(body, prompt)
        size = (body["width"], body["height"])
        return b64(flat_png(size) if black and vector in black else noise_png(f"{vector} {body['seed']}", size))

    def route(request: Request) -> None:
        body = request.body
        if body.get("script_name") == "x/y/z plot":
            names = next(csv.reader(io.StringIO(body["script_args"][1])))
            cells = [image(body, body["prompt"].replace(names[0], name)) for name in names]
            request.json(200, {"images": [b64(noise_png("grid")), *cells], "info": "{}"})
        else:
            request.json(200, {"images": [image(body, body["prompt"])], "info": "{}"})

    return route


def webui(**replaced: Route) -> Server:
    """A web UI with LBW, X/Y/Z and one LoRA ``face`` and checkpoint ``tiny``; ``replaced`` routes by path."""
    routes: dict[str, Route] = {
        "/sdapi/v1/scripts": lambda r: r.json(200, {"txt2img": ["lora block weight", "x/y/z plot"], "img2img": []}),
        "/sdapi/v1/script-info": lambda r: r.json(200, [{"name": "x/y/z plot", "is_img2img": False, "args": [
            {"value": 1, "choices": XYZ_CHOICES}, *({"value": v} for v in XYZ_DEFAULTS[1:])]}]),
        "/sdapi/v1/loras": lambda r: r.json(200, [{"name": "face", "alias": "face", "path": "/l/face.safetensors",
                                                   "metadata": {"sshs_model_hash": "aa"}}]),
        "/sdapi/v1/sd-models": lambda r: r.json(200, [{"title": "tiny [0123]", "model_name": "tiny",
                                                       "filename": "/m/tiny.safetensors", "sha256": "ab" * 32}]),
        "/sdapi/v1/options": lambda r: r.json(200, {"sd_model_checkpoint": "tiny [0123]"}),
        "/sdapi/v1/progress": lambda r: r.json(200, {"progress": 0.0, "state": {"sampling_step": 0}}),
        "/sdapi/v1/refresh-loras": lambda r: r.json(200, None),
        "/sdapi/v1/txt2img": _txt2img(),
    }
    routes.update({path: route for path, route in replaced.items()})
    return Server(routes)


def plan(*vectors: str, seeds: tuple[int, ...] = (5,), model: str | None = "tiny") -> Plan:
    cells = tuple(Cell(f"cell{i}", tuple(float(v) for v in vector.split(","))) for i, vector in enumerate(vectors))
    return Plan(kind="presets", layout="SD17", cells=cells or (Cell("ALL", (1.0,) * 17),),
                loras=(LoraSpec(name="face"),), model=model,
                settings=Settings(prompt="1girl", width=SIZE, height=SIZE, steps=4, seeds=seeds))


def fail(backend: Any, tmp_path: Path, the_plan: Plan | None = None) -> str:
    with pytest.raises(RenderError) as caught:
        run_plan(the_plan or plan(), backend, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


# ---- 1. servers that never answer ----------------------------------------------------------------------------


def test_a_server_that_never_answers_fails_after_the_read_timeout(tmp_path):
    server = Server({"/": Server.hang})
    server.routes["/"] = server.hang
    with serve(server) as url:
        message = fail(A1111Backend(url=url, timeout=0.3), tmp_path)
        assert message == f"{url}: GET /sdapi/v1/scripts: no answer within 0.3 s (--timeout)"
        message = fail(ComfyUIBackend(url=url, timeout=0.3), tmp_path, replace(plan(), model="tiny.safetensors"))
        assert message == f"{url}: GET /object_info/LoraLoaderBlockWeight%20%2F%2FInspire: no answer within 0.3 s " \
                          "(--timeout)"
    assert server.counts["/sdapi/v1/scripts"] == 1  # a silent server is not asked again
    assert not (tmp_path / "plan.json").exists()


def test_txt2img_without_progress_times_out_and_progress_keeps_a_slow_one_alive(tmp_path):
    server = webui()
    server.routes["/sdapi/v1/txt2img"] = server.hang  # progress stays at 0: the web UI is stuck
    with serve(server) as url:
        message = fail(A1111Backend(url=url, timeout=0.4, poll_interval=0.05), tmp_path)
    assert message == f"{url}: POST /sdapi/v1/txt2img: no answer and no progress within 0.4 s (--timeout)"
    assert server.counts["/sdapi/v1/txt2img"] == 1 and server.counts["/sdapi/v1/progress"] >= 1

    slow = webui()
    answer = _txt2img()

    def progress(request: Request) -> None:  # every poll sees one more sampling step
        slow.progress_polls += 1
        request.json(200, {"progress": min(slow.progress_polls / 100, 1), "state": {
            "sampling_step": slow.progress_polls, "job_no": 0}})

    def txt2img(request: Request) -> None:  # answers after four read timeouts, with progress all along
        slow.stop.wait(2.4)
        answer(request)

    slow.routes.update({"/sdapi/v1/progress": progress, "/sdapi/v1/txt2img": txt2img})
    with serve(slow) as url:
        result = run_plan(plan(), A1111Backend(url=url, timeout=0.6, poll_interval=0.05), tmp_path / "slow")
    assert result.rendered == 1 and slow.counts["/sdapi/v1/txt2img"] == 1


def test_the_deadline_stops_a_run_whose_progress_never_ends(tmp_path):
    server = webui()

    def progress(request: Request) -> None:
        server.progress_polls += 1
        request.json(200, {"progress": 0.5, "state": {"sampling_step": server.progress_polls}})

    server.routes.update({"/sdapi/v1/progress": progress, "/sdapi/v1/txt2img": server.hang})
    with serve(server) as url:
        message = fail(A1111Backend(url=url, timeout=0.6, deadline=1.5, poll_interval=0.05), tmp_path)
    assert message == ("POST /sdapi/v1/txt2img: the run reached its deadline of 1.5 s (--deadline); finished cells "
                       "are kept in the cache: run the same command again to go on")


def test_comfyui_that_never_finishes_a_cell(tiny_lora, tmp_path):
    server = comfy()
    server.routes["/history/"] = lambda r: r.json(200, {})  # queued forever
    with serve(server) as url:
        message = fail(ComfyUIBackend(url=url, timeout=0.3, poll_interval=0.02), tmp_path, comfy_plan(tiny_lora))
    assert message.endswith(": GET /history/p1: cell 'a' not finished within 0.3 s (--timeout)")


def test_a_connection_that_cannot_open_times_out_and_is_retried():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    try:
        for _ in range(20):  # fill the accept queue: further connection attempts get no answer at all
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            held.append(probe)
        client = HttpClient(f"http://127.0.0.1:{port}", connect_timeout=0.2, retries=1, backoff=0.0)
        with pytest.raises(RenderError) as caught:
            client.get_json("/sdapi/v1/scripts")
        assert str(caught.value) == (f"http://127.0.0.1:{port}: GET /sdapi/v1/scripts: no connection within 0.2 s "
                                     "(--connect-timeout) (gave up after 2 attempts)")
        assert client.attempts == 2
    finally:
        for probe in held:
            probe.close()
        listener.close()


# ---- 2. answers cut off mid-body -------------------------------------------------------------------------------


def cut_short(request: Request) -> None:
    request.handler.send_response(200)
    request.handler.send_header("Content-Type", "application/json")
    request.handler.send_header("Content-Length", "100000")
    request.handler.end_headers()
    request.handler.wfile.write(b'{"images": ["iVBOR')


def cut_chunked(request: Request) -> None:
    request.handler.send_response(200)
    request.handler.send_header("Transfer-Encoding", "chunked")
    request.handler.end_headers()
    request.handler.wfile.write(b"400\r\n" + b"x" * 100)


@pytest.mark.parametrize("route, said", [
    (cut_short, "the server closed the connection mid-answer: 18 bytes of 97.7 KiB received"),
    (cut_chunked, "the server closed the connection mid-answer after 100 bytes (IncompleteRead"),
])
@pytest.mark.parametrize("path", ["/sdapi/v1/scripts", "/sdapi/v1/loras", "/sdapi/v1/txt2img"])
def test_an_answer_cut_off_mid_body_is_one_line_and_not_retried(path, route, said, tmp_path):
    server = webui(**{path: route})
    with serve(server) as url:
        message = fail(A1111Backend(url=url), tmp_path)
    method = "POST" if path.endswith("txt2img") else "GET"
    assert message.startswith(f"{url}: {method} {path}: {said}")
    assert server.counts[path] == 1


# ---- 3. JSON of the wrong shape, for every endpoint lbw calls ----------------------------------------------------

PNG_WRONG_SIZE = b64(noise_png("big", (512, 512)))
A1111_SHAPES = [
    ("/sdapi/v1/scripts", [], "GET /sdapi/v1/scripts: the answer is a list, expected a mapping"),
    ("/sdapi/v1/scripts", {"img2img": []}, "GET /sdapi/v1/scripts: txt2img is missing (expected a list of script"),
    ("/sdapi/v1/scripts", {"txt2img": "lbw"}, "GET /sdapi/v1/scripts: txt2img is text, expected a list"),
    ("/sdapi/v1/scripts", {"txt2img": [1]}, "GET /sdapi/v1/scripts: txt2img[0] is a number, expected text"),
    ("/sdapi/v1/loras", {"face": {}}, "GET /sdapi/v1/loras: the answer is a mapping, expected a list"),
    ("/sdapi/v1/loras", [{"alias": "face"}], "GET /sdapi/v1/loras: [0].name is missing (expected text)"),
    ("/sdapi/v1/loras", [{"name": "face", "metadata": "x"}], "GET /sdapi/v1/loras: [0].metadata is text, expected"),
    ("/sdapi/v1/loras", [7], "GET /sdapi/v1/loras: [0] is a number, expected a mapping"),
    ("/sdapi/v1/sd-models", [{"model_name": "tiny"}], "GET /sdapi/v1/sd-models: [0].title is missing"),
    ("/sdapi/v1/sd-models", None, "GET /sdapi/v1/sd-models: the answer is null, expected a list"),
    ("/sdapi/v1/txt2img", {"images": "iVBOR"}, "POST /sdapi/v1/txt2img: images is text, expected a list"),
    ("/sdapi/v1/txt2img", {"info": "{}"}, "POST /sdapi/v1/txt2img: images is missing (expected a list of base64"),
    ("/sdapi/v1/txt2img", {"images": []}, "POST /sdapi/v1/txt2img: the answer holds 0 image(s) for 'ALL', expected"),
    ("/sdapi/v1/txt2img", {"images": [{"png": 1}]}, "POST /sdapi/v1/txt2img: images[0] is a mapping, expected text"),
    ("/sdapi/v1/txt2img", {"images": ["@@@@"]}, "the web UI sent an image for 'ALL' that is not base64"),
    ("/sdapi/v1/txt2img", {"images": [b64(b"GIF89a")]}, "the web UI sent an image for 'ALL' lbw cannot decode"),
    ("/sdapi/v1/txt2img", {"images": [PNG_WRONG_SIZE]},
     "the web UI sent a 512x512 image for 'ALL'; the plan asks for 16x16"),
    ("/sdapi/v1/txt2img", b"<html>Bad Gateway</html>", "POST /sdapi/v1/txt2img: the answer is not JSON (24 bytes"),
]


@pytest.mark.parametrize("path, answer, said", A1111_SHAPES)
def test_a1111_wrong_shapes_are_one_line_naming_the_endpoint(path, answer, said, tmp_path):
    def route(request: Request) -> None:
        if isinstance(answer, bytes):
            request.raw(200, answer, "text/html")
        else:
            request.json(200, answer)

    with serve(webui(**{path: route})) as url:
        message = fail(A1111Backend(url=url), tmp_path)
    assert said in message


@pytest.mark.parametrize("path, answer, said", [
    ("/sdapi/v1/options", [], "GET /sdapi/v1/options: the answer is a list, expected a mapping"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": 3}, "GET /sdapi/v1/options: sd_model_checkpoint is a number"),
])
def test_a1111_current_checkpoint_shapes(path, answer, said, tmp_path):
    with serve(webui(**{path: lambda r: r.json(200, answer)})) as url:
        assert said in fail(A1111Backend(url=url), tmp_path, plan(model=None))


@pytest.mark.parametrize("answer, said", [
    ({}, "GET /sdapi/v1/script-info: the answer is a mapping, expected a list"),
    ([{"name": "x/y/z plot", "args": "x"}], "GET /sdapi/v1/script-info: [0].args is text, expected a list"),
    ([{"name": "x/y/z plot", "args": [{"value": 0}] * 18}], "script-info: [0].args[0].choices is missing"),
    ([{"name": "x/y/z plot", "args": [{"choices": [None]}] * 18}], "[0].args[0].choices[0] is null, expected text"),
    ([{"name": "other"}], "GET /sdapi/v1/script-info: the answer lists no txt2img 'x/y/z plot' script"),
])
def test_a1111_xyz_script_info_shapes(answer, said, tmp_path):
    with serve(webui(**{"/sdapi/v1/script-info": lambda r: r.json(200, answer)})) as url:
        assert said in fail(A1111Backend(url=url, mode="xyz"), tmp_path)


def test_a1111_refresh_and_progress_answers(tmp_path):
    # a progress answer of the wrong shape is no sign of life, but no failure either: the render goes on
    with serve(webui(**{"/sdapi/v1/progress": lambda r: r.json(200, ["busy"])})) as url:
        assert run_plan(plan(), A1111Backend(url=url, poll_interval=0.01), tmp_path / "ok").rendered == 1
    late = replace(plan(), loras=(LoraSpec(name="late"),))  # unknown at first: lbw asks the web UI to refresh
    with serve(webui(**{"/sdapi/v1/refresh-loras": lambda r: r.raw(200, b"<html>", "text/html")})) as url:
        message = fail(A1111Backend(url=url), tmp_path, late)
    assert message == f"{url}: POST /sdapi/v1/refresh-loras: the answer is not JSON (6 bytes: '<html>')"


# ---- ComfyUI -----------------------------------------------------------------------------------------------------

LOADER_PATH = "/object_info/LoraLoaderBlockWeight%20%2F%2FInspire"


def comfy(**replaced: Route) -> Server:
    loader = "LoraLoaderBlockWeight //Inspire"
    outputs = {"9": {"images": [{"filename": "lbw_1.png", "subfolder": "", "type": "output"}]}}
    routes: dict[str, Route] = {
        "/object_info/LoraLoaderBlockWeight": lambda r: r.json(200, {loader: {"input": {"required": {
            "lora_name": [["face.safetensors"], {}]}}}}),
        "/object_info/CheckpointLoaderSimple": lambda r: r.json(200, {"CheckpointLoaderSimple": {"input": {
            "required": {"ckpt_name": [["tiny.safetensors"]]}}}}),
        "/prompt": lambda r: r.json(200, {"prompt_id": "p1", "number": 1, "node_errors": {}}),
        "/history/": lambda r: r.json(200, {"p1": {"outputs": outputs, "status": {
            "status_str": "success", "completed": True, "messages": []}}}),
        "/view": lambda r: r.raw(200, noise_png("view"), "image/png"),
    }
    routes.update(replaced)
    return Server(routes)


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small kohya LoRA file with real SD1.5 module names in two blocks (IN04 and OUT06)."""
    import torch

    from lbw.files.writer import save_lora

    tensors = {}
    for module in ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                   "lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn1_to_q"):
        tensors[f"{module}.lora_down.weight"] = torch.full((2, 640), 0.01)  # both layers are 640 wide
        tensors[f"{module}.lora_up.weight"] = torch.full((640, 2), 0.01)
        tensors[f"{module}.alpha"] = torch.tensor(2.0)
    path = tmp_path_factory.mktemp("lora") / "face.safetensors"
    save_lora(tensors, {"ss_network_module": "networks.lora"}, path)
    return path


def comfy_plan(lora: Path) -> Plan:
    return Plan(kind="custom", layout="SD17", cells=(Cell("a", (1.0,) * 17),), model="tiny.safetensors",
                loras=(LoraSpec(path=str(lora), name="face.safetensors"),),
                settings=Settings(seeds=(1,), width=SIZE, height=SIZE, steps=2))


COMFY_SHAPES = [
    ("/object_info/LoraLoaderBlockWeight", lambda r: r.json(200, []), f"GET {LOADER_PATH}: the answer is a list"),
    ("/object_info/LoraLoaderBlockWeight", lambda r: r.json(200, {"LoraLoaderBlockWeight //Inspire": []}),
     f"GET {LOADER_PATH}: LoraLoaderBlockWeight //Inspire is a list, expected a mapping"),
    ("/object_info/CheckpointLoaderSimple", lambda r: r.json(200, {"CheckpointLoaderSimple": {"input": {
        "required": {"ckpt_name": [[None]]}}}}),
     "GET /object_info/CheckpointLoaderSimple: CheckpointLoaderSimple.input.required.ckpt_name[0][0] is null"),
    ("/prompt", lambda r: r.json(200, {"number": 1}), "POST /prompt: prompt_id is missing (expected text)"),
    ("/prompt", lambda r: r.json(200, {"prompt_id": 12}), "POST /prompt: prompt_id is a number, expected text"),
    ("/prompt", lambda r: r.json(200, {"prompt_id": "p1", "node_errors": {"lora0": {
        "class_type": "LoraLoaderBlockWeight //Inspire", "errors": [{"message": "Value not in list",
                                                                  "details": "lora_name: 'x'"}]}}}),
     "ComfyUI rejected the graph: node lora0 (LoraLoaderBlockWeight //Inspire): Value not in list: lora_name: 'x'"),
    ("/history/", lambda r: r.json(200, []), "GET /history/p1: the answer is a list, expected a mapping"),
    ("/history/", lambda r: r.json(200, {"p1": []}), "GET /history/p1: p1 is a list, expected a mapping"),
    ("/history/", lambda r: r.json(200, {"p1": {"status": {"completed": True}}}),
     "GET /history/p1: p1.outputs is missing (expected the prompt's outputs)"),
    ("/history/", lambda r: r.json(200, {"p1": {"status": {"completed": "yes"}, "outputs": {}}}),
     "GET /history/p1: p1.status.completed is text, expected true or false"),
    ("/history/", lambda r: r.json(200, {"p1": {"outputs": {"9": {"images": [{"name": "x"}]}}}}),
     "GET /history/p1: p1.outputs.9.images[0].filename is missing (expected text)"),
    ("/history/", lambda r: r.json(200, {"p1": {"outputs": {}}}), "GET /history/p1: p1.outputs holds no image"),
    ("/view", lambda r: r.raw(200, b"not an image"), "ComfyUI sent an image for 'a' lbw cannot decode"),
    ("/view", lambda r: r.raw(200, noise_png("big", (4096, 64))), "ComfyUI sent a 4096x64 image for 'a'"),
]


@pytest.mark.parametrize("path, route, said", COMFY_SHAPES)
def test_comfyui_wrong_shapes_are_one_line_naming_the_endpoint(tiny_lora, path, route, said, tmp_path):
    with serve(comfy(**{path: route})) as url:
        message = fail(ComfyUIBackend(url=url, poll_interval=0.0), tmp_path, comfy_plan(tiny_lora))
    assert said in message


def test_comfyui_execution_error_is_a_failed_cell(tiny_lora, tmp_path):
    status = {"status_str": "error", "completed": False, "messages": [["execution_start", {}], ["execution_error", {
        "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError", "exception_message": "CUDA OOM"}]]}
    with serve(comfy(**{"/history/": lambda r: r.json(200, {"p1": {"outputs": {}, "status": status}})})) as url:
        message = fail(ComfyUIBackend(url=url, poll_interval=0.0), tmp_path, comfy_plan(tiny_lora))
    assert message == ("1 cell failed and was not cached (run the same command again to retry): a seed 1: ComfyUI: "
                       "OutOfMemoryError in KSampler: CUDA OOM")


# ---- 4. answers that never end ---------------------------------------------------------------------------------


def endless(server: Server, *, declared: int | None) -> Route:
    def route(request: Request) -> None:
        request.handler.send_response(200)
        request.handler.send_header("Content-Type", "application/json")
        if declared is not None:
            request.handler.send_header("Content-Length", str(declared))
        request.handler.end_headers()
        request.handler.wfile.write(b'{"images": ["')
        chunk = b"A" * (1 << 16)
        for _ in range(1024):  # 64 MiB, unless the reader hangs up first
            if server.stop.is_set():
                return
            request.handler.wfile.write(chunk)
            server.sent += len(chunk)

    return route


@pytest.mark.parametrize("declared", [None, 64 << 20, 1 << 30])
def test_huge_answers_are_capped(declared, tmp_path):
    server = webui()
    server.routes["/sdapi/v1/txt2img"] = endless(server, declared=declared)
    with serve(server) as url:
        message = fail(A1111Backend(url=url, max_bytes=1 << 20), tmp_path)
        sent = server.sent
    if declared is None:
        assert message == (f"{url}: POST /sdapi/v1/txt2img: the answer is larger than the 1 MiB lbw accepts "
                           "(stopped reading at 1 MiB)")
    else:
        size = "64 MiB" if declared == 64 << 20 else "1 GiB"
        assert message == (f"{url}: POST /sdapi/v1/txt2img: the answer is {size}, more than the 1 MiB lbw accepts "
                           "(not read)")
    assert sent < 32 << 20  # the client hung up early: the server could not push its 64 MiB


# ---- 5. names from outside that must not become paths outside the output folder ----------------------------------

HOSTILE_NAMES = ["x/../../../escaped", "/tmp/abs/model", "..", "nul\x00name", "esc\x1b[31mred\r\nnext", "a/model",
                 "b/model"]


def test_server_names_never_leave_the_output_folder(tmp_path):
    models = [{"title": name, "model_name": name, "sha256": f"{i:064x}"} for i, name in enumerate(HOSTILE_NAMES)]
    server = webui(**{"/sdapi/v1/sd-models": lambda r: r.json(200, models)})
    out = tmp_path / "deep" / "out"
    the_plan = eba_plan(LoraSpec(name="face"), model=None, blocks=("IN01", "OUT03"),
                        settings=Settings(prompt="p", width=SIZE, height=SIZE, steps=2, seeds=(1,)),
                        axis=Axis("checkpoint", tuple(HOSTILE_NAMES)))
    with serve(server) as url:
        report = run_eba(the_plan, A1111Backend(url=url), out)
        server.routes["/sdapi/v1/loras"] = lambda r: r.json(200, [{"name": "fase\x1b[2J\x00", "metadata": {}}])
        wrong = replace(the_plan, loras=(LoraSpec(name="fase"),))
        message = fail(A1111Backend(url=url), tmp_path / "wrong", wrong)
    assert "did you mean 'fase\\x1b[2J\\x00'?" in message  # one line; the name shown escaped
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "wrong" not in p.parts]
    assert files and all(p.resolve().is_relative_to(out.resolve()) for p in files)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert folders == ["checkpoint_esc_31mred_next", "checkpoint_escaped", "checkpoint_model", "checkpoint_model-6",
                       "checkpoint_model-7", "checkpoint_nul_name", "checkpoint_value3"]
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(cells) == 3 * 7 and len(set(cells)) == len(cells)  # a/model and b/model stay distinct
    assert all(c.isascii() and c.isprintable() and c.endswith(".png") for c in cells)
    assert len(report.seeds) == 7


def test_hostile_labels_in_a_saved_plan_stay_inside(tmp_path):
    labels = ["../../../outside", "/etc/cron.d/x", "a\x00b", "..", "CON", "x" * 300]
    cells = tuple(Cell(label, (float(i % 2),) * 17) for i, label in enumerate(labels))
    the_plan = replace(plan(), cells=cells)
    (tmp_path / "plan.json").write_text(plan_to_json(the_plan))
    with serve(webui()) as url:
        result = run_plan(the_plan, A1111Backend(url=url), tmp_path / "out")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != tmp_path / "plan.json"]
    assert files and all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in files)
    names = [p.name for p in result.cell_paths.values()]
    assert names[:5] == ["000_outside_seed5.png", "001_etc_cron.d_x_seed5.png", "002_a_b_seed5.png",
                         "003_cell_seed5.png", "004__CON_seed5.png"]
    assert len(names[5]) < 100 and names[5].startswith("005_xxxx")


# ---- 6. HTTP errors: what is retried and what fails at once -------------------------------------------------------

NANS = {"error": "NansException", "detail": "", "body": "",
        "errors": "A tensor with NaNs was produced in Unet. Use --disable-nan-check commandline argument to disable"
                  " this check."}


@pytest.mark.parametrize("status, body, said", [
    (500, NANS, "HTTP 500: NansException: A tensor with NaNs was produced in Unet. Use --disable-nan-check"),
    (500, b"Internal Server Error", "HTTP 500: Internal Server Error"),
    (422, {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer"}]},
     "HTTP 422: body.steps: value is not a valid integer"),
    (404, {"detail": "Not Found"}, "HTTP 404: Not Found"),
    (400, {"error": "bad\x00\nthing"}, "HTTP 400: bad thing"),
])
def test_errors_that_a_retry_cannot_fix_fail_at_once_with_the_servers_text(status, body, said, tmp_path):
    def route(request: Request) -> None:
        if isinstance(body, bytes):
            request.raw(status, body, "text/plain")
        else:
            request.json(status, body)

    server = webui(**{"/sdapi/v1/txt2img": route})
    with serve(server) as url:
        message = fail(A1111Backend(url=url, backoff=0.01), tmp_path)
    assert message.startswith(f"{url}: POST /sdapi/v1/txt2img: {said}")
    assert "is the server running" not in message and "attempts" not in message
    assert server.counts["/sdapi/v1/txt2img"] == 1


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_errors_a_retry_can_fix_are_retried(status, tmp_path):
    server = webui()
    good = server.routes["/sdapi/v1/txt2img"]

    def route(request: Request) -> None:
        if server.counts["/sdapi/v1/txt2img"] == 1:
            request.json(status, {"detail": "busy"})
        else:
            good(request)

    server.routes["/sdapi/v1/txt2img"] = route
    waits: list[float] = []
    with serve(server) as url:
        backend = A1111Backend(url=url, backoff=0.01)
        backend.client.sleep = waits.append
        result = run_plan(plan(), backend, tmp_path)
    assert result.rendered == 1 and server.counts["/sdapi/v1/txt2img"] == 2 and waits == [0.01]


# ---- 7. flat (black) cells --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["presets", "inline", "xyz"])
def test_a_flat_black_cell_is_failed_not_cached_and_retried(mode, tmp_path):
    the_plan = plan(ALL, NONE, seeds=(5, 6))
    black = {NONE}
    route = inline_txt2img(black=black) if mode == "inline" else _txt2img(black=black)
    with serve(webui(**{"/sdapi/v1/txt2img": route})) as url:
        message = fail(A1111Backend(url=url, mode=mode), tmp_path, the_plan)
        assert message == (
            "2 cells failed and were not cached (run the same command again to retry): cell1 seed 5: the image is "
            "one flat colour (0, 0, 0): NaNs in the UNet or VAE, or a failed cell; cell1 seed 6: the image is one "
            "flat colour (0, 0, 0): NaNs in the UNet or VAE, or a failed cell")
        assert len(list((tmp_path / "cache").glob("*.png"))) == 2  # the good cells are kept
        black.clear()  # the web UI renders that cell properly now
        again = run_plan(the_plan, A1111Backend(url=url, mode=mode), tmp_path)
    assert (again.rendered, again.reused) == (2, 2)  # only the failed cells render again


def inline_txt2img(black: set[str] | None = None) -> Route:
    def route(request: Request) -> None:
        vector = request.body["prompt"].split("lbw=")[1].split(">")[0]
        size = (request.body["width"], request.body["height"])
        png = flat_png(size) if black and vector in black else noise_png(f"{vector} {request.body['seed']}", size)
        request.json(200, {"images": [b64(png)]})

    return route


# ---- 8. through the command line: one line on stderr, exit code 2 -------------------------------------------------


def cli(url: str, tmp_path: Path, *extra: str) -> list[str]:
    presets = tmp_path / "presets.txt"
    presets.write_text(f"ALL:{ALL}\nNONE:{NONE}\n")
    return ["plot", str(presets), "--backend", "a1111", "--url", url, "--lora", "face", "--model", "tiny",
            "--width", str(SIZE), "--height", str(SIZE), "--steps", "4", "-o", str(tmp_path / "out"),
            "--allow-empty-prompt", *extra]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    server = webui(**{"/sdapi/v1/txt2img": lambda r: r.json(500, NANS)})
    with serve(server) as url:
        assert run(cli(url, tmp_path)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"lbw: error: {url}: POST /sdapi/v1/txt2img: HTTP 500: NansException: A tensor with NaNs")
    assert server.counts["/sdapi/v1/txt2img"] == 1

    hung = Server({})
    hung.routes["/"] = hung.hang
    with serve(hung) as url:
        assert run(cli(url, tmp_path, "--timeout", "0.3", "--connect-timeout", "1")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lbw: error: {url}: GET /sdapi/v1/scripts: no answer within 0.3 s (--timeout)"]

    with serve(webui(**{"/sdapi/v1/txt2img": _txt2img(black={NONE})})) as url:
        assert run(cli(url, tmp_path)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lbw: error: 1 cell failed and was not cached (run the same command again to retry): NONE seed 1: the image "
        "is one flat colour (0, 0, 0): NaNs in the UNet or VAE, or a failed cell")

    for option, value in (("--timeout", "0"), ("--deadline", "-1"), ("--connect-timeout", "nan")):
        assert run(cli("http://127.0.0.1:9", tmp_path, option, value)) == 2
        assert "must be a positive number of seconds" in capsys.readouterr().err
