"""``lbw web`` without a browser: its options, the language redirect, the host check, the --listen warning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbw.interfaces.cli.app import run

ROOT = Path(__file__).resolve().parents[2]


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert run(["web", "--lang", "fr", "--workspace", str(tmp_path / "ws")]) == 2
    assert capsys.readouterr().err.strip() == "lbw: error: --lang expects ja or en, got 'fr'"
    assert run(["web", "--project", "missing", "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lbw: error:") and "missing" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from lbw.interfaces.web.context import WebContext, WebOptions
    from lbw.interfaces.web.server import create_app

    ctx = WebContext.create(WebOptions(workspace=tmp_path_factory.mktemp("srv") / "ws", lang=None))
    forced = WebContext.create(WebOptions(workspace=tmp_path_factory.mktemp("srv2") / "ws", lang="ja"))
    with TestClient(create_app(ctx), base_url="http://127.0.0.1") as free, \
            TestClient(create_app(forced), base_url="http://127.0.0.1") as japanese:
        yield free, japanese


def test_root_redirects_by_language(client):
    free, japanese = client
    for header, target in (("ja,en;q=0.5", "/ja/"), ("en-US", "/en/"), ("de", "/en/"), (None, "/en/")):
        headers = {"Accept-Language": header} if header else {}
        answer = free.get("/?project=demo", headers=headers, follow_redirects=False)
        assert answer.status_code == 307 and answer.headers["location"] == f"{target}?project=demo"
    answer = japanese.get("/", headers={"Accept-Language": "en"}, follow_redirects=False)
    assert answer.headers["location"] == "/ja/"  # --lang wins over the browser
    page = free.get("/ja/")
    assert page.status_code == 200 and "lbw ワークベンチ" in page.text
    assert "lbw workbench" in free.get("/en/").text


def test_only_this_machines_host_names_are_answered(client):
    free, _ = client
    assert free.get("/en/", headers={"Host": "evil.example"}).status_code == 400
    assert free.get("/en/", headers={"Host": "localhost"}).status_code == 200


def test_listen_warns_before_serving(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from lbw.interfaces.cli.app import main; main()", "web", "--listen",
         "--workspace", str(tmp_path / "ws"), "--port", "1"],  # port 1: it never serves
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 240
        lines = []
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "WARNING" in line:
                break
    finally:
        process.kill()
        process.wait(30)
    warning = next(line for line in lines if "WARNING" in line)
    assert "--listen" in warning and "every network interface" in warning
