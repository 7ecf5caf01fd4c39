"""The workbench in a real browser (Debian's chromium through Playwright) against a real ``lbw web --demo`` server:
the founding tutorial's loop end to end, the pages in Japanese, two tabs on one project, path escapes, cancel.

What the page shows is checked in the page; what it wrote is checked in the project store and on disk.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from lbw.services.projects import (
    create_project,
    get_iteration,
    get_project,
    list_iterations,
    open_workspace,
    update_settings,
)

TABS = {
    "en": ("Project", "Analyze", "Sheet", "Plot", "History", "Bake & share"),
    "ja": ("プロジェクト", "分析", "シート", "プロット", "履歴", "焼き込みと配布"),
}


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def open_project(page, server, project: str = "demo", lang: str = "en") -> None:
    page.goto(f"{server.url}/{lang}/?project={project}")
    expect(page.locator("#lbw-project-picker input")).to_have_value(project, timeout=90_000)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


PENDING = re.compile(r"^\s*(processing|queue:|\d+(\.\d+)?s)")  # Gradio's status while an event waits or runs


def tick(page) -> str:
    """The session tick of the page's last finished redraw."""
    return page.locator("#lbw-tick").text_content() or ""


def act(page, click, needle: str, timeout: float = 400, *, redraw: bool = True) -> str:
    """Click, then wait until the message line changes to a text containing ``needle`` and (unless the action
    failed or ``redraw=False``) the page has redrawn from the store; returns the message."""
    line = page.locator("#lbw-message")
    before, drawn = line.inner_text(), tick(page)
    click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = line.inner_text()
        if PENDING.match(now):  # Gradio's timer while an event runs
            page.wait_for_timeout(100)
            continue
        if now != before and (needle in now or "⚠" in now):
            assert needle in now, now
            while redraw and "⚠" not in now and tick(page) == drawn and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"no message with {needle!r} within {timeout} s (still {line.inner_text()!r})")


def store_of(server):
    return open_workspace(server.workspace)


def thumbnails(page, gallery: str = "#lbw-cells-a"):
    return page.locator(f"{gallery} button.thumbnail-item")


def test_tutorial_loop(demo_server, page_factory, shoot):
    store = store_of(demo_server)
    page = page_factory("en")
    open_project(page, demo_server)
    line = act(page, lambda: page.get_by_role("button", name="Test connection").click(), "Connected", redraw=False)
    settings = get_project(store, "demo").settings
    assert Path(settings.model).name in line and Path(settings.lora).stem in line
    shoot(page, "en-1-project")

    # 1. the Effective Block Analyzer, with progress, then its ranked table
    tab(page, "Analyze")
    act(page, lambda: page.locator("#lbw-analyze").click(), "Rendered iteration 1")
    analysis = get_iteration(store, "demo", 1).analysis
    assert analysis is not None and len(analysis.rows) == 26 and not analysis.no_change
    table = page.locator("#lbw-analysis-table")
    expect(table).to_contain_text(analysis.rows[0].block)
    note = page.locator("#lbw-analysis-note")
    expect(note).to_contain_text("important")
    counts = {c: sum(r.category == c for r in analysis.rows) for c in ("important", "unneeded", "unclear")}
    expect(note).to_have_text(re.compile(rf"important {counts['important']}, unneeded {counts['unneeded']}"))
    shoot(page, "en-2-analyze")
    # a page opened later shows the pixel threshold the run measured with (not the field's default)
    from lbw.services.workbench import analysis_pixel_threshold

    used = analysis_pixel_threshold(store, "demo")
    assert used is not None and used != 20  # 64-px renders: 5 levels
    later = page_factory("en")
    open_project(later, demo_server)
    tab(later, "Analyze")
    expect(later.locator("#lbw-analyze-threshold input")).to_have_value(str(used))
    later.close()

    # 2. thresholds move, the classes follow at once, nothing is rendered again
    page.locator("#lbw-important input").fill("99")
    page.locator("#lbw-important input").press("Tab")
    expect(note).to_contain_text("important 0,")
    assert len(list_iterations(store, "demo")) == 1
    page.locator("#lbw-important input").fill("5")
    page.locator("#lbw-important input").press("Tab")
    expect(note).to_contain_text(f"important {counts['important']},")

    # 3. start the sheet from the analysis: important 1 fixed, unneeded 0 fixed, unclear 0.5 open
    act(page, lambda: page.locator("#lbw-start-sheet").click(), "open:")
    sheet = get_project(store, "demo").sheet
    unclear = [r.block for r in analysis.rows if r.category == "unclear"]
    assert len(unclear) >= 3, "the demo LoRA should leave a few blocks unclear (two to click, one for SubAdd)"
    assert set(sheet.unfixed_ids) == set(unclear)
    assert all(sheet.value(b) == 0.5 for b in unclear)

    # 4. render Sub: one row per open block (and the base), one column per seed
    tab(page, "Plot")
    act(page, lambda: page.locator("#lbw-render").click(), "Rendered iteration 2")
    seeds = len(get_project(store, "demo").settings.seeds)
    expect(thumbnails(page)).to_have_count((1 + len(unclear)) * seeds)
    iteration = get_iteration(store, "demo", 2)
    cells = sorted(iteration.cells, key=lambda c: (c.position, c.seed))
    assert [c.label for c in cells[:seeds]] == ["Sub"] * seeds

    # 5. click two cells: take the first variant's value, keep the second's base value
    first, second = cells[seeds], cells[2 * seeds]
    thumbnails(page).nth(seeds).click()
    expect(page.locator("#lbw-selected")).to_contain_text(first.label)
    expect(page.locator("#lbw-take")).to_contain_text(f"fix {first.block} at 0")
    shoot(page, "en-4-plot")
    act(page, lambda: page.locator("#lbw-take").click(), f"{first.block} fixed at 0")
    thumbnails(page).nth(2 * seeds).click()
    expect(page.locator("#lbw-keep")).to_contain_text(f"fix {second.block} at 0.5")
    act(page, lambda: page.locator("#lbw-keep").click(), f"{second.block} fixed at 0.5")
    view = get_project(store, "demo")
    assert view.sheet.value(first.block) == 0.0 and first.block in view.sheet.fixed
    assert view.sheet.value(second.block) == 0.5 and second.block in view.sheet.fixed
    decisions = get_iteration(store, "demo", 2).decisions
    assert [(d.action, d.block, d.source) for d in decisions] == [("take", first.block, "click"),
                                                                  ("keep", second.block, "click")]

    # 6. reload the page: the state is kept (it lives in the store, not in the page)
    page.reload()
    expect(page.locator("#lbw-project-picker input")).to_have_value("demo", timeout=90_000)
    tab(page, "Sheet")
    expect(page.locator("#lbw-weight textarea")).to_have_value(view.sheet.weight_line())
    expect(page.locator("#lbw-sheet-status")).to_contain_text(f"{len(unclear) - 2} blocks not fixed yet")
    shoot(page, "en-3-sheet")

    # 7. SubAdd at step 0.25
    page.locator("#lbw-step input").fill("0.25")
    act(page, lambda: page.locator("#lbw-sheet-apply").click(), "Saved")
    assert get_project(store, "demo").sheet.step == 0.25
    tab(page, "Plot")
    act(page, lambda: page.locator("#lbw-plot-mode").get_by_text("SubAdd", exact=True).click(), "Mode: SubAdd")
    act(page, lambda: page.locator("#lbw-render").click(), "Rendered iteration 3")
    open_blocks = len(unclear) - 2
    expect(thumbnails(page)).to_have_count((2 + 2 * open_blocks) * seeds)
    labels = [c.label for c in sorted(get_iteration(store, "demo", 3).cells, key=lambda c: (c.position, c.seed))]
    assert any(label.endswith("_0.25") for label in labels) and any(label.endswith("_0.75") for label in labels)

    # 8. finish: every remaining block fixed by clicking its Sub cell (take) in this SubAdd grid
    for _ in range(open_blocks):
        remaining = get_project(store, "demo").sheet.unfixed_ids
        cells3 = sorted(get_iteration(store, "demo", 3).cells, key=lambda c: (c.position, c.seed))
        index = next(i for i, c in enumerate(cells3) if c.block == remaining[0] and c.label.startswith("Sub"))
        thumbnails(page).nth(index).click()
        expect(page.locator("#lbw-take")).to_contain_text(f"fix {remaining[0]} at")
        act(page, lambda: page.locator("#lbw-take").click(), f"{remaining[0]} fixed at")
    done = get_project(store, "demo").sheet
    assert done.is_done
    expect(page.locator("#lbw-plot-status")).to_contain_text("All blocks fixed")
    tab(page, "History")
    expect(page.locator("#lbw-history-table")).to_contain_text("SubAdd")
    shoot(page, "en-5-history")

    # 9. bake the finished sheet; verify shows the maximum relative error per block
    tab(page, "Bake & share")
    expect(page.locator("#lbw-bake-state")).to_contain_text("All blocks fixed")
    act(page, lambda: page.locator("#lbw-bake").click(), "Written: baked/")
    expect(page.locator("#lbw-bake-result")).to_contain_text("verify: max")
    baked = sorted((demo_server.workspace / "baked").glob("*.safetensors"))
    assert len(baked) == 1
    from lbw.services.sources import Defaults, SourceSpec, open_source
    from lbw.services.verify import verify

    source = get_project(store, "demo").settings.lora
    opened = open_source(SourceSpec(source, None, done.weight_line(), "x"), Defaults())
    report = verify(baked[0], [opened])
    opened.lora.close()
    assert report.passed and report.blocks
    shown = page.locator("#lbw-verify-table")
    for block in (report.blocks[0], report.blocks[-1]):
        expect(shown).to_contain_text(block.block)

    # 10. metadata with a cover chosen from a rendered cell
    expect(page.locator("#lbw-meta-file input")).to_have_value(f"baked/{baked[0].name}")
    page.locator("#lbw-meta-cover input").click()
    page.get_by_role("option").first.click()
    page.locator("#lbw-meta-keywords textarea, #lbw-meta-keywords input").first.fill("gobuhime, long hair")
    shoot(page, "en-6-bake")
    act(page, lambda: page.locator("#lbw-meta-write").click(), "Saved")
    expect(page.locator("#lbw-meta-result")).to_contain_text("sshs_model_hash")
    from lbw.services.meta import show_meta

    meta = show_meta(baked[0])
    assert meta.metadata.get("ssmd_keywords") == "gobuhime, long hair"
    assert meta.metadata.get("ssmd_cover_images", "").startswith('["')
    assert meta.hashes["stored"] == meta.hashes["computed"]
    sidecar = json.loads(baked[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["activation text"] == "gobuhime, long hair"


def test_pages_in_japanese(demo_server, page_factory, shoot):
    page = page_factory("ja")
    page.goto(f"{demo_server.url}/?project=demo")  # the browser's language picks /ja/
    expect(page.locator("#lbw-project-picker input")).to_have_value("demo", timeout=90_000)
    assert "/ja/" in page.url
    for number, name in enumerate(TABS["ja"], start=1):
        tab(page, name)
        page.wait_for_timeout(800)
        shoot(page, f"ja-{number}-{TABS['en'][number - 1].split()[0].lower()}")
    tab(page, "シート")
    for word in ("固定", "重み", "‖ΔW‖ %", "分析の変更量 %"):
        expect(page.locator("#lbw-sheet-table")).to_contain_text(word)
    tab(page, "プロット")
    expect(page.locator("#lbw-plot-mode")).to_contain_text("減算")


def test_two_tabs_on_one_project(demo_server, page_factory):
    store = store_of(demo_server)
    settings = get_project(store, "demo").settings
    create_project(store, "twin", settings)
    first, second = page_factory("en"), page_factory("en")
    open_project(first, demo_server, "twin")
    open_project(second, demo_server, "twin")
    tab(first, "Plot")
    tab(second, "Plot")
    act(first, lambda: first.locator("#lbw-plot-mode").get_by_text("Add", exact=True).click(), "Mode: Add")
    # the second tab still shows the old version: its change is refused, nothing is lost
    act(second, lambda: second.locator("#lbw-plot-mode").get_by_text("SubAdd", exact=True).click(),
        "changed in another tab")
    assert get_project(store, "twin").mode == "add"
    tab(second, "Project")
    act(second, lambda: second.locator("#lbw-reload").click(), "Reloaded")
    tab(second, "Plot")
    expect(second.locator("#lbw-plot-mode input[value='add']")).to_be_checked()
    act(second, lambda: second.locator("#lbw-plot-mode").get_by_text("SubAdd", exact=True).click(),
        "Mode: SubAdd")
    assert get_project(store, "twin").mode == "subadd"


def _http_status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_paths_outside_the_folders_are_refused(demo_server, page_factory):
    store = store_of(demo_server)
    before = get_project(store, "demo").settings
    page = page_factory("en")
    open_project(page, demo_server)
    outside = demo_server.outside / "secret.safetensors"
    attempts = {
        "../outside/secret.safetensors": "'..' is not allowed",
        "demo-assets/../../outside/secret.safetensors": "'..' is not allowed",
        str(outside): "outside the lora folders",
        "/etc/passwd": "outside the lora folders",
        str(demo_server.loras / "leak.safetensors"): "outside the lora folders",  # a link leaving the folder
    }
    box = page.locator("#lbw-lora input")
    for typed, reason in attempts.items():
        box.fill(typed)
        box.press("Enter")
        act(page, lambda: page.locator("#lbw-save-settings").click(), reason)
    assert get_project(store, "demo").settings == before
    # the link that leaves the LoRA folder is not even listed
    page.get_by_text("LoRAs in the LoRA folders").click()
    listed = page.locator("#lbw-loras-table")
    expect(listed).to_contain_text(Path(get_project(store, "demo").settings.lora).name)
    expect(listed).not_to_contain_text("leak")

    # a bake may only write inside the workspace
    tab(page, "Bake & share")
    name = page.locator("#lbw-bake-name input, #lbw-bake-name textarea").first
    for typed, reason in (("../escape.safetensors", "'..' is not allowed"),
                          (str(demo_server.outside / "escape.safetensors"), "outside the workspace")):
        name.fill(typed)
        act(page, lambda: page.locator("#lbw-bake").click(), reason)
    assert not list(demo_server.outside.glob("escape*")) and not (demo_server.workspace.parent / "escape.safetensors"
                                                                     ).exists()

    # Gradio's file route serves nothing outside the workspace, and not the database
    for path in (outside, demo_server.workspace / "lbw.sqlite", "/etc/passwd"):
        assert _http_status(f"{demo_server.url}/en/gradio_api/file={path}") in (403, 404)
    # uploads are limited (this server: 0.05 MB)
    body = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.toml\"\r\n" \
           b"Content-Type: application/octet-stream\r\n\r\n" + b"#" * 200_000 + b"\r\n--x--\r\n"
    status = _http_status(f"{demo_server.url}/en/gradio_api/upload", body,
                          {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 413
    # a page elsewhere cannot reach the server through another host name (DNS rebinding)
    assert _http_status(f"{demo_server.url}/en/", headers={"Host": "attacker.example"}) == 400


def test_cancel_keeps_the_page_alive_and_records_nothing(demo_server, page_factory):
    store = store_of(demo_server)
    count = len(list_iterations(store, "demo"))
    # many steps: the render must still run when the cancel comes, however fast this machine is
    before = get_project(store, "demo")
    update_settings(store, "demo", {"steps": 200}, expected_version=before.version)
    try:
        _cancel_an_analysis(demo_server, page_factory)
    finally:
        now = get_project(store, "demo")
        update_settings(store, "demo", {"steps": before.settings.steps}, expected_version=now.version)
    assert len(list_iterations(store, "demo")) == count


def _cancel_an_analysis(demo_server, page_factory):
    page = page_factory("en")
    open_project(page, demo_server)
    tab(page, "Analyze")
    page.locator("#lbw-probe input").fill("0.3")  # new cells: nothing in the cache
    page.locator("#lbw-analyze").click()
    expect(page.locator("#lbw-analyze-progress")).to_contain_text("cells, ", timeout=120_000)
    # the page answers while the render runs (the server, not only the browser)
    tab(page, "Project")
    act(page, lambda: page.locator("#lbw-reload").click(), "Reloaded", timeout=30, redraw=False)
    tab(page, "Analyze")
    assert "▶" in page.locator("#lbw-analyze-progress").inner_text(), "the render ended before the cancel"
    act(page, lambda: page.locator("#lbw-analyze-cancel").click(), "Cancelled", redraw=False)


# ------------------------------------------------------------------------------------------------ Auto (lbw tune)


def _auto_project(store, name: str) -> None:
    """A project of its own (the demo's sheet may be finished by the tutorial test), the face region, one seed no
    other test renders (so the tune's cells are not in the workspace cache: the cancel comes mid-run)."""
    settings = get_project(store, "demo").settings
    create_project(store, name, settings.with_changes({"seeds": [21]}))


def _auto_form(page, *, box: str = "", budget: str = "40", held_out: str = "-") -> None:
    page.locator("#lbw-auto-box textarea, #lbw-auto-box input").first.fill(box)
    page.locator("#lbw-auto-budget input").fill(budget)
    page.locator("#lbw-auto-strategy").get_by_text("Tutorial's loop", exact=True).click()
    page.locator("#lbw-auto-held-out textarea, #lbw-auto-held-out input").first.fill(held_out)


def _run_auto(page, until: str, *, cancel_at: int | None = None, timeout: float = 300,
              shot=None) -> list[tuple[str, str, str]]:
    """Press Auto and poll until the message line says ``until`` (and the page redrew); returns the (progress line,
    sheet status, Auto summary) seen while the tune ran. ``cancel_at``: press Cancel once the progress passes that many
    cells; ``shot``: called once with the page when the best candidate so far first shows."""
    line, progress = page.locator("#lbw-message"), page.locator("#lbw-auto-progress")
    status, summary = page.locator("#lbw-sheet-status"), page.locator("#lbw-auto-summary")
    before, drawn = line.inner_text(), tick(page)
    page.locator("#lbw-auto").click()
    seen: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = line.inner_text()
        if now != before and not PENDING.match(now) and (until in now or "⚠" in now):
            assert until in now, now
            while tick(page) == drawn and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            return seen
        shown = progress.inner_text()
        if shown.startswith("▶"):
            seen.append((shown, status.inner_text(), summary.inner_text()))
            if shot is not None and "best so far" in shown:
                shot(page)
                shot = None
            cells = re.search(r"(\d+)/\d+ cells", shown)
            if cancel_at is not None and cells and int(cells.group(1)) >= cancel_at:
                page.locator("#lbw-auto-cancel").click()
                cancel_at = None
        page.wait_for_timeout(150)
    raise AssertionError(f"no message with {until!r} within {timeout} s (still {line.inner_text()!r})")


def test_auto_tunes_live_cancels_continues_and_history_takes_any_round(demo_server, page_factory, shoot):
    from lbw.services.tune_live import last_tune, score_rows

    store = store_of(demo_server)
    _auto_project(store, "auto")
    page = page_factory("en")
    open_project(page, demo_server, "auto")
    tab(page, "Sheet")
    expect(page.locator("#lbw-auto-summary")).to_contain_text("No tune yet")
    _auto_form(page)

    # 1. Auto, cancelled during the analyzer: the page redrew from the store while it ran (the references were
    # recorded), the state is kept, the page says how to continue
    seen = _run_auto(page, "Cancelled; what the tune did is kept", cancel_at=6)
    assert any(re.search(r"references \(ALL, LoRA off\): \d+/40 cells, \d+ s elapsed", shown) for shown, *_ in seen)
    assert any("Unfinished tune: 2 of 40 cells" in summary for *_, summary in seen), seen
    stopped = last_tune(store, "auto")
    assert stopped is not None and not stopped.finished and stopped.cells >= 6
    expect(page.locator("#lbw-auto-summary")).to_contain_text(f"Unfinished tune: {stopped.cells} of 40 cells")

    # 2. Auto again continues it (the best candidate so far shows); the sheet follows each recorded round
    seen = _run_auto(page, "Tuned: Tutorial's loop won",
                     shot=lambda p: shoot(p, "en-7-auto-running", element=p.locator("#lbw-auto-section")))
    assert any("best so far: effect kept" in shown for shown, *_ in seen), seen
    expect(page.locator("#lbw-sheet-status")).to_contain_text("All blocks fixed")
    done = last_tune(store, "auto")
    assert done is not None and done.finished and done.report is not None and done.cells <= 40
    report = done.report
    assert done.cells > stopped.cells

    # 3. the score table, the summary and the grid; the sheet holds the report's weights
    table = page.locator("#lbw-auto-table")
    for name, *numbers in score_rows(report):
        shown = {"ALL": "ALL (the whole LoRA)", "tutorial": "Tutorial's loop", "OFF": "LoRA off"}[name]
        expect(table).to_contain_text(shown)
        expect(table).to_contain_text(numbers[0])
    summary = page.locator("#lbw-auto-summary")
    expect(summary).to_contain_text(report["weights"])
    expect(summary).to_contain_text(f"{done.cells} of 40 cells rendered")
    expect(page.locator("#lbw-auto-grid img")).to_be_visible()
    assert get_project(store, "auto").sheet.weight_line() == report["weights"]
    expect(page.locator("#lbw-weight textarea")).to_have_value(report["weights"])
    expect(page.locator("#lbw-auto-progress")).to_contain_text("cells rendered in")
    shoot(page, "en-7-auto")
    shoot(page, "en-7-auto-section", element=page.locator("#lbw-auto-section"))

    # 4. History lists every round; going back to one of them makes its sheet the current one (a click)
    iterations = list_iterations(store, "auto")
    assert [it.number for it in iterations] == list(range(1, len(iterations) + 1))
    assert set(report["iterations"]) <= {it.number for it in iterations} and len(iterations) >= 2
    assert iterations[0].kind == "eba" and {it.kind for it in iterations[1:]} == {"sub"}
    tab(page, "History")
    expect(page.locator("#lbw-history-table")).to_contain_text("EBA")
    round_one = iterations[1].number
    page.locator("#lbw-history-pick input").click()
    expect(page.get_by_role("option")).to_have_count(len(iterations))
    page.get_by_role("option", name=f"#{round_one} Sub", exact=True).click()
    expect(page.locator("#lbw-history-details")).to_contain_text("(auto")
    act(page, lambda: page.locator("#lbw-go-back").click(), f"Back to the sheet of iteration {round_one}")
    before = get_iteration(store, "auto", round_one).sheet_before
    assert get_project(store, "auto").sheet.values == before.values
    tab(page, "Sheet")
    expect(page.locator("#lbw-weight textarea")).to_have_value(before.weight_line())

    # 5. the same section in Japanese
    ja = page_factory("ja")
    open_project(ja, demo_server, "auto", "ja")
    tab(ja, "シート")
    expect(ja.locator("#lbw-auto-summary")).to_contain_text("前回の自動調整")
    expect(ja.locator("#lbw-auto-table")).to_contain_text("チュートリアルの手順")
    # the before/after grid drawn with Japanese words, beside the English one
    expect(ja.locator("#lbw-auto-grid img")).to_have_attribute("src", re.compile(r"before-after\.ja\.png"))
    assert Path(done.grid).with_name("before-after.ja.png").is_file()
    ja.locator("#lbw-auto-grid img").scroll_into_view_if_needed()  # the browser loads it lazily
    ja.wait_for_function("() => { const i = document.querySelector('#lbw-auto-grid img');"
                         " return i && i.complete && i.naturalWidth > 0; }")  # loaded, for the screenshots
    shoot(ja, "ja-7-auto")
    shoot(ja, "ja-7-auto-section", element=ja.locator("#lbw-auto-section"))


def test_auto_mistakes_are_one_readable_line(demo_server, page_factory):
    store = store_of(demo_server)
    _auto_project(store, "auto-errors")
    before = get_project(store, "auto-errors")
    page = page_factory("en")
    open_project(page, demo_server, "auto-errors")
    tab(page, "Sheet")
    for fields, needle in (
        ({"box": "0,0,1"}, "keep box '0,0,1': expected four numbers x0,y0,x1,y1, found 3"),
        ({"box": "nan,0,1,1"}, "expected four finite numbers"),
        ({"box": "0,0,1,1"}, "covers the whole"),
        ({"budget": "2.5"}, "the budget: 2.5 is not a whole number of cells"),
        ({"held_out": "7, x"}, "held-out seeds: seed 'x' is not a whole number"),
        ({"budget": "3"}, "--budget 3 is too small"),  # checked by the tune itself, in the job
    ):
        _auto_form(page, **fields)
        message = act(page, lambda: page.locator("#lbw-auto").click(), needle, redraw=False)
        assert message.startswith("⚠ Error: ") and "Traceback" not in message and "\n" not in message.strip()
    after = get_project(store, "auto-errors")
    assert (after.settings, after.sheet, after.version) == (before.settings, before.sheet, before.version)
    assert list_iterations(store, "auto-errors") == []


def test_auto_keep_mask_drawn_on_the_cell_is_saved_where_painted(demo_server, page_factory, shoot):
    from PIL import Image

    from lbw.services.keep_draw import drawn_mask_path

    store = store_of(demo_server)
    _auto_project(store, "auto-mask")
    page = page_factory("en")
    open_project(page, demo_server, "auto-mask")
    tab(page, "Sheet")
    page.locator("#lbw-auto-mask-section button").first.click()       # open the drawing
    canvas = page.locator("#lbw-auto-mask-editor canvas").first
    expect(canvas).to_be_visible()
    page.wait_for_timeout(500)
    area = canvas.bounding_box()
    x, y = area["x"] + area["width"] / 2 - 80, area["y"] + area["height"] / 2 - 40   # above the middle
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 21):                                          # a horizontal stroke, left to right
        page.mouse.move(x + step * 8, y, steps=2)
    page.mouse.up()
    message = act(page, lambda: page.locator("#lbw-auto-mask-save").click(), "Drawn mask saved", redraw=False)
    expect(page.locator("#lbw-auto-use-mask input")).to_be_checked()
    settings = get_project(store, "auto-mask").settings
    with Image.open(drawn_mask_path(store, "auto-mask")) as image:
        mask = np.asarray(image) > 127
    assert mask.shape == (settings.height, settings.width)
    rows, columns = np.nonzero(mask)
    assert f"{rows.size} of {mask.size} pixels kept" in message
    # kept where painted: a band above the middle, wider than tall, nothing near the top or bottom edge
    assert rows.size > 0 and rows.max() < settings.height / 2 and rows.min() > settings.height / 6
    assert columns.max() - columns.min() > 3 * (rows.max() - rows.min())
    shoot(page, "en-7-auto-mask", element=page.locator("#lbw-auto-mask-section"))
    ja = page_factory("ja")
    open_project(ja, demo_server, "auto-mask", "ja")
    tab(ja, "シート")
    ja.locator("#lbw-auto-mask-section button").first.click()
    expect(ja.locator("#lbw-auto-mask-note")).to_contain_text(f"{rows.size} ピクセルを残します")
    shoot(ja, "ja-7-auto-mask", element=ja.locator("#lbw-auto-mask-section"))
