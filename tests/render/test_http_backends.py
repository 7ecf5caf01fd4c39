"""The a1111 and comfyui backends against small local HTTP servers implementing the documented API shapes."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lbw.errors import RenderError
from lbw.files.lora_file import LoraFile
from lbw.render.backends.a1111 import MODES, A1111Backend, lora_prompt_tag, txt2img_payload, xyz_script_args
from lbw.render.backends.comfyui import ComfyUIBackend
from lbw.render.backends.http import HttpClient
from lbw.render.plan import Cell, LoraSpec, Plan, Settings
from lbw.render.runner import run_plan


def _png(seed_text: str, size: tuple[int, int] = (16, 16)) -> bytes:
    """A noise image determined by ``seed_text`` (never one flat colour: lbw refuses those as failed cells)."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeServer:
    """State shared by the handler: routes answer from here, requests are recorded."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.requests: list[tuple[str, str, Any]] = []
        self.failures_left = options.get("fail_first", 0)
        self.history_polls: dict[str, int] = {}
        self.refreshed = False

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        route = getattr(self, f"{method.lower()}_{path.strip('/').split('/')[0]}", None)
        if route is None:
            return 404, {"detail": "Not Found"}
        return route(path, query, body)


XYZ_CHOICES = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
               "Extra axis of a fork", "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name"]
XYZ_DEFAULTS = [1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False,
                "fork-extra", 3]


def _lbw_tags(body: dict) -> list[tuple[str, str, str, str | None]]:
    """(name, te, unet, resolved vector or None) per LoRA tag, resolving presets as LBW does."""
    presets = {}
    for title, script in (body.get("alwayson_scripts") or {}).items():
        if title.lower() == "lora block weight":
            for line in script["args"][0].splitlines():
                name, _, values = line.partition(":")
                presets[name.strip()] = values
    tags = []
    for inner in re.findall(r"<lora:([^>]+)>", body["prompt"]):
        items = inner.split(":")
        named = dict(item.split("=", 1) for item in items[1:] if "=" in item)
        positional = [item for item in items[1:] if "=" not in item]
        te = named.get("te", positional[0] if positional else "1")
        unet = named.get("unet", positional[1] if len(positional) > 1 else te)
        weights = named.get("lbw")
        if weights in presets:
            weights = presets[weights]
        elif weights is not None and weights.count(",") + 1 not in (12, 17, 20, 26, 61):
            weights = None  # LBW silently ignores what it cannot resolve
        tags.append((items[0], te, unet, weights))
    return tags


class FakeA1111(FakeServer):
    """A web UI with LBW, including the two caches that decide whether one request's weights reach the next.

    - Text-encoder output: webui keeps the last prompt's conditioning (``StableDiffusionProcessing.cached_c`` and
      ``cached_uc``, "Persistent cond cache" on by default) keyed by the prompt text, the extra-network arguments
      (the tag's items), clip skip and the checkpoint, and reuses it while those are unchanged, so the text-encoder
      weights of that earlier request (the LoRA's BASE ratio and TE strength) stay in the image.
    - Network weights: ``networks.network_apply_weights`` re-applies a layer's LoRA deltas only when the loaded
      networks' ``(name, te, unet, dyn)`` change; LBW renames each network it weights (``NAME_in_LBW_`` plus a
      random suffix; here a counter), so the UNet weights are re-applied on every request.

    The image depends on the UNet weights of this request and the text-encoder state the conditioning was made
    with: a cell renders as it would alone exactly when its conditioning was not reused from another vector.
    """

    def render_cell(self, body: dict) -> bytes:
        tags = _lbw_tags(body)
        overrides = body["override_settings"]
        key = (body["prompt"], body["negative_prompt"], overrides.get("CLIP_stop_at_last_layers"),
               overrides.get("sd_model_checkpoint"))
        te_state = [(name, te, (vector or "1").split(",")[0]) for name, te, _, vector in tags]
        cached = getattr(self, "cond_cache", None)
        if cached is not None and cached[0] == key:
            te_state = cached[1]  # the web UI reuses the conditioning made with the earlier weights
        else:
            self.cond_cache = (key, te_state)
        self.renames = getattr(self, "renames", 0) + 1
        wanted = [(f"{name}_in_LBW_{self.renames}", te, unet) for name, te, unet, _ in tags]
        if wanted != getattr(self, "applied", None):
            self.applied = wanted
            self.unet_state = [(name, unet, (vector or "").split(",")[1:]) for name, _, unet, vector in tags]
        plain = re.sub(r"\s*<lora:[^>]+>", "", body["prompt"])
        state = [plain, body["negative_prompt"], body["seed"], body["steps"], body["cfg_scale"], body["sampler_name"],
                 body.get("scheduler"), overrides, te_state, self.unet_state]
        return _png(json.dumps(state, sort_keys=True), (body["width"], body["height"]))

    def get_sdapi(self, path, query, body):
        if path == "/sdapi/v1/scripts":
            titles = ["prompt matrix", "x/y/z plot"]
            if self.options.get("lbw", True):
                titles.append("lora block weight")
            return 200, {"txt2img": titles, "img2img": []}
        if path == "/sdapi/v1/script-info":
            choices = self.options.get("choices", XYZ_CHOICES)
            args = [{"label": "X type", "value": 1, "choices": choices}]
            args += [{"label": f"arg {i}", "value": value, "choices": None} for i, value in enumerate(XYZ_DEFAULTS[1:])]
            return 200, [{"name": "x/y/z plot", "is_alwayson": False, "is_img2img": True, "args": []},
                         {"name": "x/y/z plot", "is_alwayson": False, "is_img2img": False, "args": args},
                         {"name": "lora block weight", "is_alwayson": True, "is_img2img": False, "args": []}]
        if path == "/sdapi/v1/loras":
            names = ["face", "style"] + (["late"] if self.refreshed else [])
            return 200, [{"name": n, "alias": n, "path": f"/loras/{n}.safetensors",
                          "metadata": {"sshs_model_hash": f"hash-{n}"}} for n in names]
        if path == "/sdapi/v1/sd-models":
            return 200, [{"title": "tiny.safetensors [0123abcd]", "model_name": "tiny", "filename": "/m/tiny",
                          "hash": "0123abcd", "sha256": self.options.get("model_sha", "0123abcd" * 8)}]
        if path == "/sdapi/v1/progress":
            return 200, {"progress": 0.5, "eta_relative": 1.0, "state": {}}
        if path == "/sdapi/v1/options":
            return 200, {"sd_model_checkpoint": "tiny.safetensors [0123abcd]", "CLIP_stop_at_last_layers": 1}
        return 404, {"detail": "Not Found"}

    def post_sdapi(self, path, query, body):
        if path == "/sdapi/v1/refresh-loras":
            self.refreshed = True
            return 200, None
        if path != "/sdapi/v1/txt2img":
            return 404, {"detail": "Not Found"}
        if self.failures_left:
            self.failures_left -= 1
            return 503, {"detail": "Service Unavailable"}
        for title in body.get("alwayson_scripts", {}):
            if title.lower() != "lora block weight":
                return 422, {"detail": f"always on script {title} not found"}
        time.sleep(self.options.get("delay", 0))
        if body.get("script_name") == "x/y/z plot":
            return self.xyz(body)
        image = base64.b64encode(self.render_cell(body)).decode()
        return 200, {"images": [image], "parameters": body, "info": json.dumps({"seed": body["seed"]})}

    def xyz(self, body):
        """X/Y/Z plot with X = Prompt S/R, as webui 1.6-1.10 runs it (one cell per X value, X order)."""
        args = body["script_args"]
        choices = self.options.get("choices", XYZ_CHOICES)
        assert len(args) == len(XYZ_DEFAULTS) and args[18:] == XYZ_DEFAULTS[18:]  # fork arguments kept
        assert choices[args[0]] == "Prompt S/R" and args[3] == args[6] == 0  # X only
        values = next(csv.reader(io.StringIO(args[1])))
        if values[0] not in body["prompt"] and values[0] not in body["negative_prompt"]:
            return 500, {"detail": f"Prompt S/R did not find {values[0]} in prompt or negative prompt."}
        cells = []
        for value in values:
            single = {k: v for k, v in body.items() if k not in ("script_name", "script_args")}
            single["prompt"] = body["prompt"].replace(values[0], value)
            single["negative_prompt"] = body["negative_prompt"].replace(values[0], value)
            cells.append(base64.b64encode(self.render_cell(single)).decode())
        grid = base64.b64encode(_png("grid")).decode()
        images = [grid, *cells] if args[10] else [grid]
        return 200, {"images": images, "parameters": body, "info": "{}"}


class FakeComfy(FakeServer):
    def get_object_info(self, path, query, body):
        node = urllib.parse.unquote(path.split("/", 2)[2])
        if node == "LoraLoaderBlockWeight //Inspire":
            if not self.options.get("inspire", True):
                return 200, {}
            return 200, {node: {"input": {"required": {"lora_name": [["face.safetensors", "other.safetensors"]]}}}}
        if node == "CheckpointLoaderSimple":
            return 200, {node: {"input": {"required": {"ckpt_name": [["tiny.safetensors"]]}}}}
        return 404, {}

    def post_prompt(self, path, query, body):
        prompt_id = f"p{len(self.history_polls) + 1}"
        self.history_polls[prompt_id] = 0
        self.graphs = [*getattr(self, "graphs", []), body["prompt"]]
        return 200, {"prompt_id": prompt_id, "number": len(self.history_polls), "node_errors": {}}

    def get_history(self, path, query, body):
        prompt_id = path.rsplit("/", 1)[1]
        self.history_polls[prompt_id] += 1
        if self.history_polls[prompt_id] < 2:
            return 200, {}  # still running
        if self.options.get("fail_execution"):
            status = {"status_str": "error", "completed": False,
                      "messages": [["execution_error", {"exception_message": "CUDA out of memory"}]]}
            return 200, {prompt_id: {"outputs": {}, "status": status}}
        images = [{"filename": f"lbw_{prompt_id}.png", "subfolder": "", "type": "output"}]
        return 200, {prompt_id: {"outputs": {"9": {"images": images}},
                                 "status": {"status_str": "success", "completed": True, "messages": []}}}

    def get_view(self, path, query, body):
        return 200, _png(query["filename"] + json.dumps(self.graphs[-1], sort_keys=True))


@contextmanager
def serve(state: FakeServer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            parsed = urllib.parse.urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = dict(urllib.parse.parse_qsl(parsed.query))
            status, payload = state.handle(method, parsed.path, query, body)
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _name(prefix: str, vector: str) -> str:
    """The preset name lbw derives from a vector: prefix + 12 hex digits of SHA-256 of the vector text."""
    return prefix + hashlib.sha256(vector.encode()).hexdigest()[:12]


SUB = "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
SUB_IN01 = "1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"


def _cells() -> tuple[Cell, ...]:
    base = (1.0,) * 17
    return (Cell("Sub", base), Cell("SubIN01_0", (1.0, 0.0, *base[2:]), "IN01"))


def _plan(lora: LoraSpec, model: str | None = "tiny") -> Plan:
    return Plan(kind="sub", layout="SD17", cells=_cells(), loras=(lora,), model=model,
                settings=Settings(prompt="1girl", negative_prompt="lowres", steps=20, cfg=7, width=16, height=16,
                                  sampler="DPM++ 2M Karras", clip_skip=2, seeds=(5, 6)))


def test_a1111_renders_each_cell_with_presets_in_the_always_on_args(tmp_path):
    state = FakeA1111(delay=0.1)
    with serve(state) as url:
        backend = A1111Backend(url=url, backoff=0.01, poll_interval=0.01)
        plan = _plan(LoraSpec(name="face", strength=0.8))
        steps: list[float] = []
        result = run_plan(plan, backend, tmp_path, on_step=lambda fraction, label: steps.append(fraction))
        assert (result.rendered, result.reused) == (4, 0)
        bodies = [body for method, path, body in state.requests if path == "/sdapi/v1/txt2img"]
        assert [b["seed"] for b in bodies] == [5, 6, 5, 6]
        second = bodies[2]
        assert second["prompt"] == f"1girl <lora:face:0.8:lbw={_name('lbwcell', SUB_IN01)}>"
        assert bodies[0]["prompt"] == f"1girl <lora:face:0.8:lbw={_name('lbwcell', SUB)}>"  # one name per vector
        assert second["alwayson_scripts"] == {
            "LoRA Block Weight": {"args": [f"{_name('lbwcell', SUB_IN01)}:{SUB_IN01}", True, 0]}}
        assert (second["sampler_name"], second["scheduler"], second["steps"], second["cfg_scale"]) == (
            "DPM++ 2M Karras", "Karras", 20, 7.0)
        assert second["override_settings"] == {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny"}
        assert (second["batch_size"], second["n_iter"], second["send_images"], second["save_images"]) == (
            1, 1, True, False)
        assert "script_name" not in second
        assert 0.5 in steps and steps[-1] == 1.0  # progress read from /sdapi/v1/progress, then done
        count = len(state.requests)
        again = run_plan(plan, A1111Backend(url=url), tmp_path)
        assert (again.rendered, again.reused) == (0, 4)
        assert not any(p == "/sdapi/v1/txt2img" for _, p, _ in state.requests[count:])
    with serve(FakeA1111(model_sha="f" * 64)) as url:  # same name, another checkpoint file: render again
        assert run_plan(plan, A1111Backend(url=url), tmp_path).rendered == 4
        current = replace(plan, model=None)  # the web UI's current checkpoint, keyed by its hash as well
        assert run_plan(current, A1111Backend(url=url), tmp_path / "current").rendered == 4
    with serve(FakeA1111()) as url:
        assert run_plan(current, A1111Backend(url=url), tmp_path / "current").rendered == 4
    assert result.grids[0].is_file()


def test_a1111_inline_and_xyz_modes_render_the_same_cells(tmp_path):
    state = FakeA1111()
    plan = _plan(LoraSpec(name="face", strength=0.8))
    with serve(state) as url:
        results = {mode: run_plan(plan, A1111Backend(url=url, mode=mode), tmp_path / mode) for mode in MODES}
        bodies = [body for _, path, body in state.requests if path == "/sdapi/v1/txt2img"]
        inline, xyz = bodies[4:8], bodies[8:]
        assert len(xyz) == 2  # X/Y/Z: one request per seed renders both cells
        more = run_plan(plan.with_settings(seeds=(5, 6, 7)), A1111Backend(url=url, mode="xyz"), tmp_path / "xyz")
        assert (more.rendered, more.reused) == (2, 4)
        assert len([1 for _, path, _ in state.requests if path == "/sdapi/v1/txt2img"]) == 11
    for job in plan.jobs():  # the web UI resolves the same weights whichever way they were sent
        images = [np.asarray(results[mode].image(job)) for mode in MODES]
        assert all(np.array_equal(images[0], other) for other in images[1:])
    assert inline[2]["prompt"] == "1girl <lora:face:0.8:lbw=1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>"
    assert "alwayson_scripts" not in inline[2]
    body = xyz[0]
    sub, sub_in01 = _name("lbwcell", SUB), _name("lbwcell", SUB_IN01)
    assert body["seed"] == 5 and body["prompt"] == f"1girl <lora:face:0.8:lbw={sub}>"
    assert body["script_name"] == "x/y/z plot"
    assert body["script_args"] == [8, f"{sub},{sub_in01}", [], 0, "", [], 0, "", [], True, True, False,
                                   False, False, False, False, 0, False, "fork-extra", 3]
    assert body["alwayson_scripts"] == {"LoRA Block Weight": {"args": [
        f"{sub}:{SUB}\n{sub_in01}:{SUB_IN01}", True, 0]}}


def test_a1111_xyz_mode_refusals(tmp_path):
    plan = _plan(LoraSpec(name="face"))
    with serve(FakeA1111(choices=XYZ_CHOICES[:8])) as url:
        with pytest.raises(RenderError, match="X type has no 'Prompt S/R' choice"):
            run_plan(plan, A1111Backend(url=url, mode="xyz"), tmp_path)
        with pytest.raises(RenderError, match="must not contain 'lbwcell'"):
            run_plan(replace(plan, settings=replace(plan.settings, prompt="lbwcell")),
                     A1111Backend(url=url, mode="xyz"), tmp_path)
    with pytest.raises(RenderError, match="takes 15 arguments; lbw knows the 18-argument layout"):
        xyz_script_args([{"name": "x/y/z plot", "is_img2img": False, "args": [{"value": 0}] * 15}])
    with pytest.raises(RenderError, match="unknown a1111 mode 'grid'"):
        A1111Backend(mode="grid")
    assert not (tmp_path / "plan.json").exists()  # refused before anything was written


def test_a1111_tag_forms_and_untuned_loras():
    assert lora_prompt_tag("face", 1, 1, "lbwcell") == "<lora:face:1:lbw=lbwcell>"
    assert lora_prompt_tag("face", 0.5, 1, None) == "<lora:face:te=0.5:unet=1>"
    assert lora_prompt_tag("face", 0.5, 1, "1,0,1,1,1,1,1,1,1,1,1,1") == (
        "<lora:face:te=0.5:unet=1:lbw=1,0,1,1,1,1,1,1,1,1,1,1>")
    with pytest.raises(RenderError, match="contains ':'"):
        lora_prompt_tag("a:b", 1, 1, None)
    plan = Plan(kind="sub", layout="SD17", cells=_cells(), settings=Settings(prompt="p"),
                loras=(LoraSpec(name="face"), LoraSpec(name="style", tuned=False, strength=0.5,
                                                      weights=(1.0,) + (0.0,) * 11),
                       LoraSpec(name="plain", tuned=False, te_strength=0.5)))
    body = txt2img_payload(plan, plan.jobs()[1])
    cell, fixed = _name("lbwcell", SUB_IN01), _name("lbwfixed", "1,0,0,0,0,0,0,0,0,0,0,0")
    assert body["prompt"] == f"p <lora:face:1:lbw={cell}> <lora:style:0.5:lbw={fixed}> <lora:plain:te=0.5:unet=1>"
    assert body["alwayson_scripts"]["LoRA Block Weight"]["args"][0].splitlines() == [
        f"{cell}:{SUB_IN01}", f"{fixed}:1,0,0,0,0,0,0,0,0,0,0,0"]
    inline = txt2img_payload(plan, plan.jobs()[1], "inline")
    assert inline["prompt"] == ("p <lora:face:1:lbw=1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1> "
                                "<lora:style:0.5:lbw=1,0,0,0,0,0,0,0,0,0,0,0> <lora:plain:te=0.5:unet=1>")
    assert "alwayson_scripts" not in inline


def test_a1111_reports_missing_extension_lora_and_checkpoint(tmp_path):
    missing = pytest.raises(RenderError, match="LoRA Block Weight extension is not installed")
    with serve(FakeA1111(lbw=False)) as url, missing:
        run_plan(_plan(LoraSpec(name="face")), A1111Backend(url=url), tmp_path)
    state = FakeA1111()
    with serve(state) as url:
        with pytest.raises(RenderError, match=r"LoRA 'fase' is not known to the web UI; did you mean 'face'\?"):
            run_plan(_plan(LoraSpec(name="fase")), A1111Backend(url=url), tmp_path)
        assert state.refreshed
        run_plan(_plan(LoraSpec(name="late")), A1111Backend(url=url), tmp_path / "late")  # found after refresh
        with pytest.raises(RenderError, match="checkpoint 'sdxl' is not known"):
            run_plan(_plan(LoraSpec(name="face"), model="sdxl"), A1111Backend(url=url), tmp_path)


def test_server_that_fails_then_recovers(tmp_path):
    state = FakeA1111(fail_first=2)
    waits: list[float] = []
    with serve(state) as url:
        backend = A1111Backend(url=url, retries=3, backoff=0.01)
        backend.client.sleep = waits.append
        result = run_plan(_plan(LoraSpec(name="face")), backend, tmp_path)
    assert result.rendered == 4
    assert waits == [0.01, 0.02]  # exponential backoff, then success
    txt2img = [p for _, p, _ in state.requests if p == "/sdapi/v1/txt2img"]
    assert len(txt2img) == 4 + 2


def test_server_that_never_recovers_and_no_server():
    with serve(FakeA1111(fail_first=100)) as url:
        client = HttpClient(url, retries=2, backoff=0.0)
        with pytest.raises(RenderError, match=r"POST /sdapi/v1/txt2img: HTTP 503: Service Unavailable \(gave up "
                                              r"after 3 attempts\)$"):
            client.post_json("/sdapi/v1/txt2img", {})
    closed = HttpClient(url, retries=1, backoff=0.0, read_timeout=2)  # the server is gone now
    with pytest.raises(RenderError, match=r"GET /sdapi/v1/scripts: connection refused \(gave up after 2 attempts\); "
                                          r"is the server running\?$"):
        closed.get_json("/sdapi/v1/scripts")
    with pytest.raises(RenderError, match="must look like http://HOST:PORT"):
        HttpClient("localhost:7860")


def test_comfyui_graph_with_inspire_vectors(tiny_assets, tmp_path):
    _, lora_path = tiny_assets
    present = LoraFile.open(lora_path).inspire_blocks
    state = FakeComfy()
    with serve(state) as url:
        backend = ComfyUIBackend(url=url, poll_interval=0.0)
        plan = Plan(kind="sub", layout="SD26", cells=(
            Cell("all", (1.0,) * 26), Cell("IN01_0", (1.0, 1.0, 0.0) + (1.0,) * 23, "IN01")),
            loras=(LoraSpec(path=str(lora_path), name="face.safetensors"),), model="tiny.safetensors",
            settings=Settings(prompt="1girl", steps=4, width=16, height=16, seeds=(3,), clip_skip=2))
        result = run_plan(plan, backend, tmp_path)
    assert result.rendered == 2
    loader = state.graphs[1]["lora0"]
    assert loader["class_type"] == "LoraLoaderBlockWeight //Inspire"
    vector = loader["inputs"]["block_vector"].split(",")
    assert len(vector) == 1 + len(present) and present[0] == ("input", 1)
    assert vector[:3] == ["1", "0", "1"] and set(vector[3:]) == {"1"}
    assert state.graphs[0]["lora0"]["inputs"]["block_vector"] == ",".join(["1"] * (1 + len(present)))
    sampler = state.graphs[1]["6"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["sampler_name"], sampler["scheduler"]) == (
        3, 4, "euler", "normal")
    assert state.graphs[1]["2"]["inputs"]["stop_at_clip_layer"] == -2


def test_comfyui_reports_missing_pack_lora_and_execution_errors(tiny_assets, tmp_path):
    _, lora_path = tiny_assets
    plan = Plan(kind="custom", layout="SD17", cells=(Cell("a", (1.0,) * 17),), model="tiny.safetensors",
                loras=(LoraSpec(path=str(lora_path), name="face.safetensors"),), settings=Settings(seeds=(1,)))
    no_pack = pytest.raises(RenderError, match="install ltdrdata/ComfyUI-Inspire-Pack")
    with serve(FakeComfy(inspire=False)) as url, no_pack:
        run_plan(plan, ComfyUIBackend(url=url), tmp_path)
    with serve(FakeComfy(fail_execution=True)) as url:
        wrong = replace(plan, loras=(LoraSpec(path=str(lora_path), name="face"),))
        with pytest.raises(RenderError, match="LoRA 'face' is not in ComfyUI's lora list"):
            run_plan(wrong, ComfyUIBackend(url=url), tmp_path)
        with pytest.raises(RenderError, match=r"^1 cell failed and was not cached \(run the same command again to "
                                              r"retry\): a seed 1: ComfyUI: CUDA out of memory$"):
            run_plan(plan, ComfyUIBackend(url=url, poll_interval=0.0), tmp_path)
        assert not list((tmp_path / "cache").glob("*.png"))


def _decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_every_cell_renders_as_it_would_alone_in_every_mode(tmp_path):
    """Issue #14.1: a grid cell must equal the same cell rendered alone on a fresh web UI, whatever came before.

    The fake web UI reuses the text-encoder output of the previous request while the prompt text is unchanged, as
    webui does; with one preset name for every cell (the old ``lbw=lbwcell``) NONE after ALL keeps ALL's BASE.
    """
    cells = (Cell("ALL", (1.0,) * 17), Cell("NONE", (0.0,) * 17), Cell("BASE0", (0.0,) + (1.0,) * 16, "BASE"),
             Cell("IN01_0", (1.0, 0.0) + (1.0,) * 15, "IN01"), Cell("HALF", (0.5,) * 17))
    plan = replace(_plan(LoraSpec(name="face", strength=0.8)), kind="presets", cells=cells)
    alone = {}
    for job in plan.jobs():
        single = replace(plan, cells=(job.cell,), settings=replace(plan.settings, seeds=(job.seed,)))
        with serve(FakeA1111()) as url:  # a fresh web UI: nothing cached
            result = run_plan(single, A1111Backend(url=url), tmp_path / "alone" / f"{job.cell.label}-{job.seed}")
        alone[(job.cell.label, job.seed)] = np.asarray(result.image(single.jobs()[0]))
    assert len({a.tobytes() for a in alone.values()}) == len(alone)  # every cell and seed looks different
    for mode in MODES:
        with serve(FakeA1111()) as url:
            result = run_plan(plan, A1111Backend(url=url, mode=mode), tmp_path / mode)
        for job in plan.jobs():
            assert np.array_equal(np.asarray(result.image(job)), alone[(job.cell.label, job.seed)]), (mode, job)
    # The old requests (one name, "lbwcell", for every cell) leak: the fake reproduces the defect it models.
    leaked = []
    with serve(FakeA1111()) as url:
        client = HttpClient(url)
        for job in plan.jobs():
            body = txt2img_payload(plan, job)
            name = body["prompt"].split("lbw=")[1].rstrip(">")
            old = json.loads(json.dumps(body).replace(name, "lbwcell"))
            image = _decode(client.post_json("/sdapi/v1/txt2img", old)["images"][0])
            if not np.array_equal(image, alone[(job.cell.label, job.seed)]):
                leaked.append((job.cell.label, job.seed))
    # ALL's conditioning (BASE 1) is reused by every later request: wrong wherever a cell's BASE is not 1
    assert leaked == [(label, seed) for label in ("NONE", "BASE0", "HALF") for seed in (5, 6)]
