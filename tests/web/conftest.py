"""Fixtures for the browser tests: a real ``lbw web`` server in a subprocess on a free 127.0.0.1 port (bounded in
time), and Playwright driving Debian's ``chromium`` (never a downloaded browser). Without chromium or Playwright the
browser tests skip and say why; ``make test`` installs chromium (and a CJK font) on Debian when it runs as root.

Screenshots go to ``out/screenshots/`` (``LBW_SCREENSHOTS`` moves them); docs/workbench.md shows a few of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
SCREENSHOTS = Path(os.environ.get("LBW_SCREENSHOTS", ROOT / "out" / "screenshots"))
START_LIMIT_S = 240


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return ("Debian's chromium is not installed (apt-get install chromium; `make test` does it as root): "
                "browser tests skipped")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]'): browser tests skipped"
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running ``lbw web`` subprocess."""

    def __init__(self, workspace: Path, args: list[str], log: Path) -> None:
        self.workspace = workspace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                                                                 "1"),
               "GRADIO_ANALYTICS_ENABLED": "False"}
        command = [sys.executable, "-c", "from lbw.interfaces.cli.app import main; main()", "web",
                   "--workspace", str(workspace), "--port", str(self.port), "--device", "cpu", *args]
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                        cwd=str(workspace.parent))
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"lbw web exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/en/", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lbw web did not answer within {START_LIMIT_S} s:\n{self.output()}")
            time.sleep(0.5)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        self._log_file.close()


@pytest.fixture(scope="session")
def browser():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        engine = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield engine
        engine.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, browser):
    """``lbw web --demo`` on a fresh workspace, with an extra LoRA folder holding a link that leaves it."""
    base = tmp_path_factory.mktemp("web")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"not a LoRA the page may read")
    loras = base / "loras"
    loras.mkdir()
    (loras / "leak.safetensors").symlink_to(outside / "secret.safetensors")
    server = Server(base / "ws", ["--demo", "--loras", str(loras), "--max-upload-mb", "0.05"], base / "server.log")
    server.outside = outside  # type: ignore[attr-defined]
    server.loras = loras  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page_factory(browser):
    """New pages (each its own browser context, like two windows) in a language; closed after the test."""
    contexts = []

    def make(lang: str = "en"):
        context = browser.new_context(viewport={"width": 1300, "height": 1000},
                                      locale="ja-JP" if lang == "ja" else "en-US")
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def shoot():
    """``shoot(page, name)``: a full-page screenshot under the screenshot folder (``element=``: of that locator
    only); returns its path."""

    def take(page, name: str, element=None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if element is not None:
            element.screenshot(path=str(path))
        else:
            page.screenshot(path=str(path), full_page=True)
        return path

    return take
