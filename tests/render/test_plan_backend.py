"""A plan records its backend (name, server URL without secrets, a1111 mode); re-running it repeats that backend
unless ``--backend`` switches it. A tokenizer longer than its text encoder is refused in one line."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import replace

import pytest
import torch

from lbw.errors import RenderError
from lbw.interfaces.cli.app import run
from lbw.render.plan import BackendSpec, Cell, Plan, plan_from_json, plan_to_json, public_url

TINY = ["--allow-empty-prompt", "--steps", "4", "--width", "64", "--height", "64", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from lbw.services.demo_render import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("plan-backend"))


def _plan(**changes) -> Plan:
    return replace(Plan(kind="custom", layout="SD17", cells=(Cell("ALL", (1.0,) * 17),)), **changes)


def test_urls_are_recorded_without_secrets():
    assert public_url("http://me:secret@127.0.0.1:7860/sd/?token=abc#part") == "http://127.0.0.1:7860/sd/"
    assert public_url(" https://[::1]:8188 ") == "https://[::1]:8188"
    for bad in ("ftp://host", "127.0.0.1:7860", "http://", "http://host:99999"):
        with pytest.raises(RenderError, match="server URL"):
            public_url(bad)


def test_the_backend_round_trips_and_old_plans_read_the_same():
    plan = _plan(backend=BackendSpec("a1111", "http://127.0.0.1:7860", "xyz"))
    assert plan_from_json(plan_to_json(plan)).backend == BackendSpec("a1111", "http://127.0.0.1:7860", "xyz")
    assert "backend" not in json.loads(plan_to_json(_plan()))  # a plan without a record reads as before
    assert plan_from_json(plan_to_json(_plan())).backend is None


@pytest.mark.parametrize(("backend", "message"), [
    ({"name": "a1111", "url": "http://me:pw@127.0.0.1:7860"}, "without credentials"),
    ({"name": "a1111", "url": "http://127.0.0.1:7860/?token=1"}, "without credentials"),
    ({"name": "forge"}, "unknown backend \"forge\""),
    ({"name": "comfyui", "mode": "xyz"}, "only a1111 has modes"),
    ({"name": "diffusers", "url": "http://127.0.0.1:1"}, "takes no server URL"),
    ({"name": "a1111", "secret": "x"}, "unknown plan field \"secret\" in backend"),
])
def test_recorded_backends_are_checked(backend, message):
    data = json.loads(plan_to_json(_plan()))
    data["backend"] = backend
    with pytest.raises(RenderError, match=message) as error:
        plan_from_json(json.dumps(data), where="plan.json")
    assert error.value.where == "plan.json"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_rerun_repeats_the_recorded_backend_unless_switched(assets, tmp_path, capsys):
    model, lora = assets
    out = tmp_path / "plot"
    assert run(["eba", str(lora), "--model", str(model), "--blocks", "IN01", "-o", str(out), *TINY]) == 0
    capsys.readouterr()
    plan_file = out / "plan.json"
    data = json.loads(plan_file.read_text())
    assert data["backend"] == {"name": "diffusers", "url": None, "mode": None}
    port = _closed_port()
    data["backend"] = {"name": "comfyui", "url": f"http://127.0.0.1:{port}", "mode": None}
    plan_file.write_text(json.dumps(data))
    assert run(["plot", str(plan_file), "--threads", "1", "--allow-empty-prompt", "--connect-timeout", "2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lbw: error: ") and f"127.0.0.1:{port}" in error and len(error.splitlines()) == 1
    assert run(["plot", str(plan_file), "--backend", "diffusers", "--threads", "1", "--allow-empty-prompt"]) == 0
    assert "Effective Block Analyzer" in capsys.readouterr().out
    assert json.loads(plan_file.read_text())["backend"]["name"] == "diffusers"  # the switch is recorded


def test_a_tokenizer_longer_than_its_text_encoder_is_refused(assets, tmp_path):
    from lbw.render.backends.diffusers_backend import load_pipeline

    model, _ = assets
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    config_path = copy / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 1000
    config_path.write_text(json.dumps(config))
    expected = (r"tokenizer/tokenizer_config.json: model_max_length is 1000 but text_encoder has 77 positions; "
                r"set \"model_max_length\": 77")
    with pytest.raises(RenderError, match=expected) as error:
        load_pipeline(copy, device="cpu", dtype=torch.float32)
    assert error.value.where == str(copy)
