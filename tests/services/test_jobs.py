"""The per-device job queue: one job at a time per device, in order, cancellable, with progress and ETA."""

from __future__ import annotations

import threading

from lbw.errors import RenderError
from lbw.services.jobs import CANCELLED, DONE, FAILED, JobQueue


def test_one_job_at_a_time_per_device_in_order():
    queue = JobQueue()
    lock = threading.Lock()
    running = {"now": 0, "max": 0}
    order: list[str] = []
    gate = threading.Event()

    def work(name):
        def run(job):
            with lock:
                running["now"] += 1
                running["max"] = max(running["max"], running["now"])
            gate.wait(5)
            for i in range(3):
                job.report(i + 1, 3)
            with lock:
                running["now"] -= 1
                order.append(name)
            return name

        return run

    jobs = [queue.submit("cuda:0", work(f"j{i}"), label=f"j{i}") for i in range(4)]
    other = queue.submit("cpu", lambda job: "cpu", label="other")  # another device runs beside
    assert other.wait(5).state == DONE and other.result == "cpu"
    snapshot = jobs[3].snapshot()
    assert snapshot.state == "queued" and snapshot.ahead == 3
    gate.set()
    for job in jobs:
        assert job.wait(10).state == DONE
    assert order == ["j0", "j1", "j2", "j3"] and running["max"] == 1
    final = jobs[0].snapshot()
    assert final.finished and final.done == 3 and final.total == 3 and final.eta is None


def test_cancel_a_queued_and_a_running_job():
    queue = JobQueue()
    started, release = threading.Event(), threading.Event()
    progress = []

    def slow(job):
        started.set()
        for i in range(1000):
            release.wait(0.01)
            job.report(i + 1, 1000)
            progress.append(job.snapshot())
        return "finished"

    first = queue.submit("cpu", slow, label="render")
    second = queue.submit("cpu", lambda job: "never", label="next")
    assert started.wait(5)
    second.cancel()
    assert second.state == CANCELLED and second.result is None
    while not progress:
        release.wait(0.01)
    assert progress[-1].eta is not None and progress[-1].eta > 0
    first.cancel()
    assert first.wait(10).state == CANCELLED and first.error == "render cancelled" and first.result is None
    assert queue.get(first.id) is first


def test_failure_is_one_line_and_the_worker_survives():
    queue = JobQueue()

    def bad(job):
        raise RenderError("the model folder has no model_index.json", where="models/x")

    failed = queue.submit("cpu", bad).wait(5)
    assert failed.state == FAILED and failed.error == "models/x: the model folder has no model_index.json"
    crashed = queue.submit("cpu", lambda job: 1 / 0).wait(5)
    assert crashed.state == FAILED and crashed.error.startswith("ZeroDivisionError")
    assert queue.submit("cpu", lambda job: "ok").wait(5).result == "ok"


def test_step_progress_counts_inside_a_cell():
    queue = JobQueue()

    def work(job):
        job.report(2, 4)
        job.on_step(0.5, "SubIN05_0")
        return job.snapshot().done

    assert queue.submit("cpu", work).wait(5).result == 2.5

    def batch(job):  # a batch of 4 cells half drawn: 2 cells' worth
        job.report(1, 8)
        job.on_step(0.5, "4 cells", 4)
        return job.snapshot().done

    assert queue.submit("cpu", batch).wait(5).result == 3.0


def test_a_pool_and_one_of_its_servers_never_run_together_and_a_waiting_job_can_be_cancelled():
    from lbw.services.jobs import RESOURCES, resources
    from lbw.services.projects import ProjectSettings
    from lbw.services.workbench import device_key

    pool = device_key(ProjectSettings(backend="comfyui", url="http://b:8188/, http://a:8188"))
    single = device_key(ProjectSettings(backend="comfyui", url="http://a:8188"))
    assert pool == f"comfyui:http://a:8188{RESOURCES}comfyui:http://b:8188" and single == "comfyui:http://a:8188"
    assert resources(pool) == ("comfyui:http://a:8188", "comfyui:http://b:8188") and resources("cpu") == ("cpu",)
    queue = JobQueue()
    started, gate = threading.Event(), threading.Event()
    log: list[str] = []

    def holding(job):
        started.set()
        gate.wait(5)
        log.append("pool done")
        return "pool"

    first = queue.submit(pool, holding, label="pool")
    assert started.wait(5)
    waiting = queue.submit(single, lambda job: log.append("single ran") or "single", label="single")
    other = queue.submit("comfyui:http://c:8188", lambda job: "c", label="c")  # another server runs beside
    assert other.wait(5).state == DONE
    dropped = queue.submit(f"comfyui:http://b:8188{RESOURCES}cpu", lambda job: log.append("dropped ran"))
    snapshot = waiting.snapshot()
    assert snapshot.state == "queued" and snapshot.ahead == 1  # the pool's job holds its server
    dropped.cancel()
    assert dropped.wait(5).state == CANCELLED and dropped.error.endswith("cancelled")
    gate.set()
    assert first.wait(5).state == DONE and waiting.wait(5).state == DONE
    assert log == ["pool done", "single ran"]
