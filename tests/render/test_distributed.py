"""Rendering over Ray (``lbw.render.distributed``): a real local Ray with two CPU workers on the tiny model.

One Ray session and one ``RayBackend`` (2 workers, 1 CPU each) serve the module: starting Ray and importing torch
and diffusers in each worker costs seconds. The Ctrl-C test runs the real ``lbw plot --ray`` in a child process on
a pseudo-terminal with its own local Ray, like a user would.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbw.interfaces.cli.app import run
from lbw.render.backends.diffusers_backend import DiffusersBackend, batch_split
from lbw.render.plan import Axis, Cell, LoraSpec, Plan, load_plan, plan_to_json
from lbw.render.runner import run_plan
from lbw.services.demo_render import demo_settings

ray = pytest.importorskip("ray")

from lbw.render.distributed import (  # noqa: E402  (after the skip: the module needs Ray only when it runs)
    RAY_MISSING,
    RayBackend,
    RayOptions,
    Unit,
    combined_steps,
    next_unit,
    plan_files,
    ray_error_line,
    work_units,
    worker_plan,
)
from lbw.render.ray_worker import file_manifest  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")
MAIN = "from lbw.interfaces.cli.app import main; main()"
ONES17 = ",".join(["1"] * 17)


def _vector(**blocks: float) -> tuple[float, ...]:
    from lbw.domain.layouts import SD26

    return tuple(blocks.get(block, 1.0) for block in SD26.ids)


@pytest.fixture(scope="module")
def plan(tiny_assets: tuple[Path, Path]) -> Plan:
    """4 cells x 2 seeds, 2 steps, 64x64: BASE varied too (two text-encoder states)."""
    model, lora = tiny_assets
    cells = (Cell("ALL", _vector()), Cell("IN01_0", _vector(IN01=0.0), "IN01"),
             Cell("OUT11_0", _vector(OUT11=0.0), "OUT11"), Cell("BASE_0.5", _vector(BASE=0.5), "BASE"))
    return Plan(kind="custom", layout="SD26", cells=cells, settings=replace(demo_settings((1, 2)), steps=2),
                loras=(LoraSpec(path=str(lora), name="gobuhime-tiny"),), model=str(model))


@pytest.fixture(scope="module")
def shared(plan: Plan) -> Iterator[RayBackend]:
    """Two CPU workers with one torch thread each, in a local Ray that the backend starts (and stops)."""
    backend = RayBackend({"device": "cpu", "batch_size": 2}, RayOptions(workers=2, threads=1))
    try:
        backend.prepare(plan)
        assert backend.started_ray and len(backend.workers) == 2
        yield backend
    finally:
        backend.close()
    assert not ray.is_initialized()


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_two_workers_write_what_one_process_writes_and_a_rerun_renders_nothing(
    plan: Plan, shared: RayBackend, tmp_path: Path
) -> None:
    local = run_plan(plan, DiffusersBackend(device="cpu", batch_size=2), tmp_path / "local")
    before = list(shared.cells_per_worker)
    cells: list[tuple[int, int, str, bool]] = []
    steps: list[tuple[float, str, int]] = []
    spread = run_plan(plan, shared, tmp_path / "ray", on_cell=lambda *a: cells.append(a),
                      on_step=lambda *a: steps.append(a))
    assert (local.rendered, spread.rendered) == (8, 8)
    # The same batches (units of --batch-size 2) on the same CPU maths: every file byte for byte.
    assert _files(tmp_path / "ray" / "cells") == _files(tmp_path / "local" / "cells")
    assert _files(tmp_path / "ray" / "cache").keys() == _files(tmp_path / "local" / "cache").keys()
    assert (tmp_path / "ray" / "grid.png").read_bytes() == (tmp_path / "local" / "grid.png").read_bytes()
    assert (tmp_path / "ray" / "plan.json").read_bytes() == (tmp_path / "local" / "plan.json").read_bytes()
    images = {path.read_bytes() for path in spread.cell_paths.values()}
    assert len(images) == 8  # the cells differ: nothing was rendered as a copy of another
    done = [worker - earlier for worker, earlier in zip(shared.cells_per_worker, before, strict=True)]
    assert sum(done) == 8 and min(done) >= 2  # 4 units of 2: both workers rendered
    assert [c[0] for c in cells] == list(range(9)) and cells[-1][1] == 8  # the start (0 of 8), then every cell
    assert steps and all(0 < fraction <= 1 and count >= 2 for fraction, _, count in steps)
    again = run_plan(plan, shared, tmp_path / "ray")
    assert (again.rendered, again.reused) == (0, 8)
    assert [worker - earlier for worker, earlier in zip(shared.cells_per_worker, before, strict=True)] == done


def test_automatic_batches_stay_within_one_level(plan: Plan, shared: RayBackend, tmp_path: Path) -> None:
    """Without --batch-size a local run draws the 8 cells in one batch, each worker 4: float rounding may differ
    by one level of 255, never more (the documented tolerance of batching)."""
    local = run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "local")
    shared.batch_size = None
    try:
        spread = run_plan(plan, shared, tmp_path / "ray")
    finally:
        shared.batch_size = 2
    assert spread.rendered == 8
    for job, path in local.cell_paths.items():
        ours = np.asarray(Image.open(spread.cell_paths[job]), dtype=np.int16)
        theirs = np.asarray(Image.open(path), dtype=np.int16)
        assert np.abs(ours - theirs).max() <= 1, job.cell.label


def test_a_worker_refuses_files_that_differ_from_the_drivers(
    plan: Plan, shared: RayBackend, tiny_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """The driver's manifest against what the worker finds at the same paths (in a cluster, another node's disk;
    here the files change between the two)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_assets[0], model)
    lora = tmp_path / "copy.safetensors"
    shutil.copyfile(tiny_assets[1], lora)
    ours = replace(plan, model=str(model), loras=(LoraSpec(path=str(lora), name="copy"),))
    text = plan_to_json(worker_plan(ours))
    manifest = file_manifest(plan_files(ours, None))
    worker = shared.workers[0]
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    hint = "; the model and LoRA files must exist at the same paths on every node of the cluster"
    size = lora.stat().st_size

    def answer() -> str:
        return str(ray.get(worker.setup.remote(text, manifest), timeout=120).get("error"))

    assert ray.get(worker.setup.remote(text, manifest), timeout=120)["device"] == "cpu"  # as the driver sees it
    with open(lora, "ab") as handle:
        handle.write(b"\0")
    assert answer() == (f"Ray worker on {node}: {lora}: {size + 1} bytes on this node, {size} where the plan runs "
                        f"(another version of the file?){hint}")
    data = bytearray(tiny_assets[1].read_bytes())
    data[10] ^= 1
    lora.write_bytes(bytes(data))
    assert answer() == (f"Ray worker on {node}: {lora}: the file differs from the one where the plan runs (same size, "
                        f"other bytes in its first MiB){hint}")
    shutil.copyfile(tiny_assets[1], lora)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    assert answer() == f"Ray worker on {node}: {weights}: file not found on this node{hint}"
    shutil.rmtree(model)
    assert answer() == f"Ray worker on {node}: {model}: folder not found on this node{hint}"


def _group_processes(group: int) -> list[int]:
    """Processes still in process group ``group`` (Ray's raylet, GCS and workers started by the child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="needs a POSIX pseudo-terminal and /proc")
def test_ctrl_c_kills_the_workers_keeps_finished_cells_and_a_rerun_renders_the_rest(
    shared: RayBackend, tiny_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """``lbw plot --ray`` on a terminal; Ctrl-C reaches its whole process group, as a terminal sends it."""
    model, lora = tiny_assets
    presets = tmp_path / "p.txt"
    presets.write_text(f"ALL:{ONES17}\nNONE:{','.join(['0'] * 17)}\nIN01:1,0,{','.join(['1'] * 15)}\n")
    out = tmp_path / "out"
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", MAIN, "plot", str(presets), "--lora", str(lora), "--model", str(model), "--prompt",
         "1girl, gobuhime", "--steps", "8", "--width", "64", "--height", "64", "--seeds", "1,2,3,4,5,6",
         "--batch-size", "1", "--ray", "--workers", "2", "--threads", "1", "-o", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=terminal, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(terminal)
    screen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not list((out / "cache").glob("*.png")):
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(controller)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace")).replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.startswith("lbw:")]
    assert process.returncode == 130 and stdout == b""
    assert len(lines) == 1 and lines[0].startswith("lbw: interrupted: stopped after "), text
    assert "Traceback" not in text and "raylet" not in text and "WARNING" not in text and "cells" in text
    deadline = time.monotonic() + 30
    while _group_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_processes(process.pid) == []  # Ray and its workers are gone with lbw
    kept = len(list((out / "cache").glob("*.png")))
    assert 1 <= kept < 18
    rerun = run_plan(load_plan(out / "plan.json"), shared, out)  # the same cache keys as the CLI's workers
    assert (rerun.rendered, rerun.reused) == (18 - kept, kept)


def test_without_ray_lbw_works_and_asking_for_ray_is_one_line(tiny_assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, lora = tiny_assets
    presets = tmp_path / "p.txt"
    presets.write_text(f"ALL:{ONES17}\n")
    blocked = "import sys; sys.modules['ray'] = None; "
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", blocked + MAIN, "plot", str(presets), "--lora", str(lora), "--model", str(model),
         "--prompt", "x", "--ray", "-o", str(tmp_path / "out")], env=env, capture_output=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (2, b"", f"lbw: error: {RAY_MISSING}\n".encode())
    assert not (tmp_path / "out").exists()
    assert RAY_MISSING == ("rendering over Ray (--ray, --ray-address) needs Ray: install lbw[ray] (pip install "
                           "'lbw[ray]')")
    local = subprocess.run(
        [sys.executable, "-c", blocked + "import lbw.render.distributed; from lbw.services.plot import make_backend; "
         "print(type(make_backend('diffusers', device='cpu')).__name__)"], env=env, capture_output=True, timeout=120)
    assert (local.returncode, local.stdout) == (0, b"DiffusersBackend\n"), local.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--workers", "2"], "--workers goes with --ray or --ray-address"),
    (["--ray", "--backend", "a1111"], "--ray distributes the diffusers backend; a1111 renders on its own server "
                                      "(--url)"),
    (["--ray", "--device", "cuda:1"], "--device cuda:1: with Ray each worker renders on its own device; use auto "
                                      "(GPUs when the cluster has them), cuda or cpu"),
    (["--ray", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["--ray-address", " "], "--ray-address ' ': expected auto, HOST:PORT (the head's GCS, 6379 by default) or "
                             "ray://HOST:PORT (Ray Client, 10001)"),
    (["--ray-address", "ray://head"], "--ray-address 'ray://head': expected auto, HOST:PORT (the head's GCS, 6379 by "
                                      "default) or ray://HOST:PORT (Ray Client, 10001)"),
])
def test_ray_options_are_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    presets = tmp_path / "p.txt"
    presets.write_text(f"ALL:{ONES17}\n")
    code = run(["plot", str(presets), "--lora", "x", "--model", "m", "--prompt", "x", "-o", str(tmp_path / "o"),
                *extra])
    assert (code, capsys.readouterr().err) == (2, f"lbw: error: {message}\n")
    assert not (tmp_path / "o").exists()


def test_an_address_where_nothing_answers_is_one_line(tiny_assets: tuple[Path, Path], tmp_path: Path) -> None:
    """Ray itself would retry for many minutes, printing warnings from its C++ core."""
    model, lora = tiny_assets
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    presets = tmp_path / "p.txt"
    presets.write_text(f"ALL:{ONES17}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(  # a process of its own: this one's Ray (the module's) would be used as it is
        [sys.executable, "-c", MAIN, "plot", str(presets), "--lora", str(lora), "--model", str(model), "--prompt", "x",
         "-o", str(tmp_path / "o"), "--ray-address", f"127.0.0.1:{port}"], env=env, capture_output=True, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 2 and done.stdout == b"" and err.count("\n") == 1, err
    assert err.startswith(f"lbw: error: --ray-address 127.0.0.1:{port}: nothing answers there (")
    assert err.endswith("); is the Ray cluster running (ray start --head)?\n")
    assert not (tmp_path / "o").exists()


def test_the_cause_of_a_remote_error_is_the_line_shown() -> None:
    remote = ("The actor died because of an error raised in its creation task, \x1b[36mray::RenderWorker.__init__()"
              "\x1b[39m (pid=494)\n   ^^^^\nRuntimeError: The actor with name RenderWorker failed to import on the "
              "worker:\n\n\x1b[36mray::RenderWorker\x1b[39m\nModuleNotFoundError: No module named 'lbw'")
    assert ray_error_line(RuntimeError(remote)) == "ModuleNotFoundError: No module named 'lbw'"
    assert ray_error_line(RuntimeError("\n  lost\nmore")) == "lost"
    assert ray_error_line(ValueError("")) == "ValueError"


def test_work_units_are_the_local_batches_grouped_by_checkpoint(plan: Plan) -> None:
    axis = replace(plan, axis=Axis("checkpoint", ("/models/a", "/models/b")),
                   settings=replace(plan.settings, seeds=(1, 2, 3, 4, 5)))
    jobs = axis.jobs()  # 2 checkpoints x 4 cells x 5 seeds
    units = work_units(axis, jobs, workers=2, batch_size=8)
    assert [(u.model, len(u.indices)) for u in units] == [("/models/a", 7), ("/models/a", 7), ("/models/a", 6),
                                                          ("/models/b", 7), ("/models/b", 7), ("/models/b", 6)]
    assert [i for u in units for i in u.indices] == list(range(40))  # every job once, in the plan's order
    sizes, pending = [], 20
    while pending:  # what DiffusersBackend._render_batches draws locally for one checkpoint
        sizes.append(batch_split(pending, 8))
        pending -= sizes[-1]
    assert sizes == [7, 7, 6]
    assert [len(u.indices) for u in work_units(axis, jobs, workers=2)] == [20, 20]  # one unit per worker
    assert [len(u.indices) for u in work_units(plan, plan.jobs()[:7], workers=3)] == [3, 2, 2]
    merged = work_units(plan, plan.jobs(), workers=1, batch_size=8, group=lambda job: job.cell.label)
    assert [len(u.indices) for u in merged] == [2, 2, 2, 2]  # merge mode: one weights group per unit


def test_workers_keep_their_checkpoint() -> None:
    from collections import deque

    units = deque([Unit("a", (0,)), Unit("a", (1,)), Unit("b", (2,)), Unit("c", (3,))])
    assert next_unit(units, {0: "a"}, 1) == Unit("b", (2,))  # worker 1 holds nothing: a checkpoint nobody holds
    assert next_unit(units, {0: "a", 1: "b"}, 0) == Unit("a", (0,))
    assert next_unit(units, {0: "a", 1: "b"}, 1) == Unit("c", (3,))
    assert next_unit(units, {0: "a", 1: "c"}, 1) == Unit("a", (1,))  # nothing else left


def test_steps_of_the_batches_in_flight_are_combined() -> None:
    assert combined_steps({0: (0.5, "IN01 (+3)", 4), 1: (1.0, "OUT11 (+3)", 4)}) == (
        0.75, "2 workers: IN01 (+3), OUT11 (+3)", 8)
    assert combined_steps({1: (0.25, "ALL", 1)}) == (0.25, "ALL", 1)
