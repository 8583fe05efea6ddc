"""The annotator in a real headless Chromium (found through $CHROMIUM or the PATH, driven by Playwright).

Keys pressed on the page must end up in the store; two browser sessions as two annotators must not
see each other's state; an answer the screen confirmed must survive the server being killed; keys
typed faster than the page answer only the pair that was on screen; at 1280x900 both crops and the
whole photo are in view.
Without a Chromium these tests are skipped, unless REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotator.app import build_app, launch
from rlhf.pairs import A_BETTER, B_BETTER, NO_PREFERENCE
from rlhf.store import PreferenceStore
from tests.annotator_fixtures import (
    CHROMIUM_ARGS,
    REPO,
    find_chromium,
    free_port,
    make_store,
    results_dir,
    wait_for_http,
)

pytestmark = pytest.mark.browser
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    if chromium is None:
        reason = "no Chromium: set $CHROMIUM or put chromium on the PATH (apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def served(tmp_path):
    store, pairs = make_store(tmp_path, n=5)
    demo = build_app(store)
    url = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url, store, pairs
    finally:
        demo.close()
        shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)


def _expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


def _open(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(url)
    return ctx, page


def _sign_in(page, name: str) -> None:
    expect = _expect()
    box = page.locator("#name-box input, #name-box textarea").first
    expect(box).to_be_visible()
    box.fill(name)
    box.press("Enter")
    expect(page.locator("#progress")).to_contain_text(f"{name} · answered")


def test_keys_end_up_in_the_store(browser, served):
    url, store, pairs = served
    expect = _expect()
    out = results_dir("annotator-browser")
    ctx, page = _open(browser, url)
    try:
        box = page.locator("#name-box input, #name-box textarea").first
        expect(box).to_be_visible()
        page.screenshot(path=str(out / "name-screen.png"))
        # Digits and S typed into the name box are text, not answers.
        box.click()
        page.keyboard.type("dora120s")
        expect(box).to_have_value("dora120s")
        page.keyboard.press("Enter")
        progress, status, answer = page.locator("#progress"), page.locator("#status"), page.locator("#answer-line")
        expect(progress).to_contain_text("dora120s · answered 0 / 5 · showing pair 1 of 5")
        assert store.answers() == []

        page.keyboard.press("1")
        expect(status).to_contain_text("Saved: pair 1 → A better")
        page.keyboard.press("2")
        expect(status).to_contain_text("Saved: pair 2 → B better")
        page.keyboard.press("0")
        expect(status).to_contain_text("Saved: pair 3 → no preference")
        expect(progress).to_contain_text("answered 3 / 5 · showing pair 4 of 5")
        page.keyboard.press("ArrowLeft")
        expect(progress).to_contain_text("showing pair 3 of 5")
        expect(answer).to_contain_text("no preference")
        page.keyboard.press("ArrowLeft")
        expect(progress).to_contain_text("showing pair 2 of 5")
        expect(answer).to_contain_text("B better")
        expect(page.locator("#btn-b")).to_have_class(_has("primary"))  # the earlier answer, highlighted
        page.wait_for_timeout(400)  # let the button's colour transition finish for the picture
        page.screenshot(path=str(out / "annotator-review.png"), full_page=True)
        page.keyboard.press("1")  # change it
        expect(status).to_contain_text("Saved: pair 2 → A better")
        expect(progress).to_contain_text("showing pair 3 of 5")
        page.keyboard.press("ArrowRight")
        expect(progress).to_contain_text("showing pair 4 of 5")

        # A key typed into any text field on the page stays text there.
        page.evaluate("() => { const t = document.createElement('textarea'); t.id = 'probe';"
                      " document.body.appendChild(t); t.focus(); }")
        page.keyboard.type("1 2 0 s")
        expect(page.locator("#probe")).to_have_value("1 2 0 s")
        page.evaluate("() => document.getElementById('probe').remove()")
        expect(progress).to_contain_text("answered 3 / 5 · showing pair 4 of 5")

        page.keyboard.press("s")
        expect(status).to_contain_text("Saved — every answer is stored")
        # The crops and the overview are real images, loaded by the browser.
        for sel in ["#crop-a img", "#crop-b img", "#overview img"]:
            expect(page.locator(sel)).to_be_visible()
            assert page.locator(sel).evaluate("img => img.naturalWidth") > 0, sel
        page.screenshot(path=str(out / "annotator.png"), full_page=True)
    finally:
        ctx.close()
    got = {a.pair_id: a.choice for a in store.answers(annotator="dora120s")}
    assert got == {pairs[0].id: A_BETTER, pairs[1].id: A_BETTER, pairs[2].id: NO_PREFERENCE}
    assert [a.choice for a in store.answers(pairs[1].id, history=True)] == [B_BETTER, A_BETTER]
    assert (out / "annotator.png").stat().st_size > 10_000


def _has(cls: str):
    return re.compile(rf"(^|\s){cls}(\s|$)")


def test_two_browser_sessions_as_two_annotators(browser, served):
    url, store, pairs = served
    expect = _expect()
    ctx_a, ann = _open(browser, url)
    ctx_b, ben = _open(browser, url)
    try:
        _sign_in(ann, "ann")
        _sign_in(ben, "ben")
        ann.keyboard.press("1")
        expect(ann.locator("#status")).to_contain_text("Saved: pair 1")
        # The next key only after the screen moved on: a key pressed while it updates is ignored.
        expect(ann.locator("#progress")).to_contain_text("ann · answered 1 / 5 · showing pair 2 of 5")
        ann.keyboard.press("1")
        expect(ann.locator("#progress")).to_contain_text("ann · answered 2 / 5 · showing pair 3 of 5")
        # Ben's screen is his own: nothing answered, still on pair 1.
        ben.keyboard.press("ArrowRight")
        expect(ben.locator("#progress")).to_contain_text("ben · answered 0 / 5 · showing pair 2 of 5")
        expect(ben.locator("#answer-line")).to_contain_text("Not answered yet")
        ben.keyboard.press("2")
        expect(ben.locator("#progress")).to_contain_text("ben · answered 1 / 5 · showing pair 3 of 5")
        ann.keyboard.press("ArrowLeft")
        expect(ann.locator("#progress")).to_contain_text("ann · answered 2 / 5 · showing pair 2 of 5")
        expect(ann.locator("#answer-line")).to_contain_text("A better")
        # Reopening the page resumes ann (her name is remembered in her browser only).
        ann.reload()
        expect(ann.locator("#progress")).to_contain_text("ann · answered 2 / 5 · showing pair 3 of 5")
        ben.reload()
        expect(ben.locator("#progress")).to_contain_text("ben · answered 1 / 5 · showing pair 1 of 5")
    finally:
        ctx_a.close()
        ctx_b.close()
    assert store.progress("ann") == (2, 5) and store.progress("ben") == (1, 5)
    assert store.answer_of(pairs[1].id, "ann") == A_BETTER and store.answer_of(pairs[1].id, "ben") == B_BETTER


def _start_server(store_path: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "annotator", "--store", str(store_path), "--port", str(port),
         "--annotator", "cy"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
    except BaseException:
        proc.kill()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
        raise RuntimeError(f"annotator server did not start:\n{out[-3000:]}") from None
    return proc


def test_answer_survives_a_killed_server(browser, tmp_path):
    store, pairs = make_store(tmp_path, n=4)
    expect = _expect()
    port = free_port()
    proc = _start_server(store.path, port)
    ctx, page = _open(browser, f"http://127.0.0.1:{port}/")
    try:
        expect(page.locator("#progress")).to_contain_text("cy · answered 0 / 4 · showing pair 1 of 4")
        page.keyboard.press("2")
        expect(page.locator("#status")).to_contain_text("Saved: pair 1 → B better")
        proc.send_signal(signal.SIGKILL)  # the moment the screen confirmed
        proc.wait(timeout=10)
        assert PreferenceStore(store.path).answer_of(pairs[0].id, "cy") == B_BETTER
        # Opened again (in this process, which is quicker to start), the app resumes at the first
        # pair cy has not answered.
        demo = build_app(PreferenceStore(store.path), annotator="cy")
        url = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            page.goto(url)
            expect(page.locator("#progress")).to_contain_text("cy · answered 1 / 4 · showing pair 2 of 4")
        finally:
            demo.close()
            shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)
    finally:
        ctx.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)


# Records, for every key, the pair and screen number the page showed when it was pressed, and the
# moment each pair first appeared; installed on window (capture) so it runs before the app's keys.
_RECORDER = """() => {
  const val = (sel) => { const el = document.querySelector(sel); return el ? el.value : null; };
  window.__keys = []; window.__firstShown = {};
  const look = () => {
    const pid = val('#shown-pair textarea, #shown-pair input');
    if (pid && !(pid in window.__firstShown)) window.__firstShown[pid] = Date.now();
    requestAnimationFrame(look);
  };
  look();
  window.addEventListener('keydown', (e) => window.__keys.push({key: e.key, t: Date.now(),
    pair: val('#shown-pair textarea, #shown-pair input'),
    screen: val('#shown-screen input')}), true);
}"""


def _ignored_on_page(page) -> int:
    m = re.search(r"(\d+) keys? ignored", page.locator("#ignored-note").inner_text())
    return int(m.group(1)) if m else 0


def test_keys_typed_ahead_answer_only_the_pair_on_screen(browser, tmp_path):
    store, pairs = make_store(tmp_path, n=12)
    demo = build_app(store)
    url = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    expect = _expect()
    ctx, page = _open(browser, url)
    try:
        _sign_in(page, "tia")
        page.keyboard.press("2")  # one answer given at a person's pace, before the burst
        expect(page.locator("#progress")).to_contain_text("tia · answered 1 / 12 · showing pair 2 of 12")
        page.evaluate(_RECORDER)
        page.wait_for_timeout(100)
        keys = "1201201201"
        for k in keys:
            page.keyboard.press(k)
            page.wait_for_timeout(40)
        # Every key gets an answer from the server: stored, or ignored and counted on the page.
        end = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < end:
            if len(store.answers(annotator="tia")) - 1 + _ignored_on_page(page) == len(keys):
                break
            page.wait_for_timeout(100)
        page.wait_for_timeout(500)  # nothing late may still arrive
        pressed = page.evaluate("() => window.__keys")
        first_shown = page.evaluate("() => window.__firstShown")
        ignored = _ignored_on_page(page)
        page.screenshot(path=str(results_dir("annotator-typing-ahead") / "after-burst.png"))
    finally:
        ctx.close()
        demo.close()
        shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)
    choice_of = {"1": A_BETTER, "2": B_BETTER, "0": NO_PREFERENCE}
    assert [k["key"] for k in pressed] == list(keys)
    # The pair on screen at each key; the first key seen on a pair is the one that answers it.
    expected: dict[str, int] = {}
    for k in pressed:
        expected.setdefault(k["pair"], choice_of[k["key"]])
    got = {a.pair_id: a.choice for a in store.answers(annotator="tia") if a.pair_id != pairs[0].id}
    assert got == expected, (pressed, got)
    assert len(got) + ignored == len(keys), (len(got), ignored)
    # No earlier answer changed: every pair was answered exactly once, the slow one included.
    history = store.answers(annotator="tia", history=True)
    assert sorted(a.pair_id for a in history) == sorted([pairs[0].id, *got])
    assert store.answer_of(pairs[0].id, "tia") == B_BETTER
    # No pair answered before the page showed it (the first sight of a pair: the animation-frame
    # watch, or a key that saw it on screen, whichever came first; clocks in whole ms).
    for k in pressed:
        first_shown[k["pair"]] = min(first_shown.get(k["pair"], k["t"]), k["t"])
    for a in history[1:]:
        assert a.timestamp * 1000 >= first_shown[a.pair_id] - 1, a
    assert list(got) == [p.id for p in pairs[1:1 + len(got)]]
    print(f"typing ahead: {len(keys)} keys 40 ms apart -> {len(got)} answered, {ignored} ignored")


def test_crops_and_overview_fit_1280x900_without_scrolling(browser, served):
    url, _, _ = served
    expect = _expect()
    ctx, page = _open(browser, url)
    try:
        _sign_in(page, "vic")
        for sel in ["#crop-a img", "#crop-b img", "#overview img"]:
            expect(page.locator(sel)).to_be_visible()
            page.wait_for_function(f"() => document.querySelector('{sel}').naturalWidth > 0")
        assert page.evaluate("() => window.scrollY") == 0
        vw, vh = page.viewport_size["width"], page.viewport_size["height"]
        for sel in ["#crop-a", "#crop-b", "#overview", "#crop-a img", "#crop-b img", "#overview img",
                    "#btn-a", "#btn-b", "#btn-none", "#progress"]:
            box = page.locator(sel).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0, sel
            assert box["x"] >= 0 and box["y"] >= 0, (sel, box)
            assert box["x"] + box["width"] <= vw and box["y"] + box["height"] <= vh, (sel, box)
        crop = page.locator("#crop-a img").bounding_box()
        assert crop["height"] >= 0.4 * vh or crop["width"] >= 0.3 * vw, crop  # large, not thumbnails
        page.screenshot(path=str(results_dir("annotator-layout") / "1280x900.png"))
    finally:
        ctx.close()


def test_login_in_the_browser_is_the_annotator(browser, tmp_path):
    store, pairs = make_store(tmp_path, n=3)
    demo = build_app(store)
    url = launch(demo, port=free_port(), auth=[("alice", "pw-a"), ("bob", "pw-b")],
                 prevent_thread_lock=True, quiet=True)
    expect = _expect()
    ctx, page = _open(browser, url)
    try:
        inputs = page.locator("input")
        expect(inputs.nth(1)).to_be_visible()
        inputs.nth(0).fill("alice")
        inputs.nth(1).fill("pw-a")
        inputs.nth(1).press("Enter")
        expect(page.locator("#progress")).to_contain_text("alice · answered 0 / 3 · showing pair 1 of 3")
        expect(page.locator("#btn-who")).to_be_hidden()  # a login is not renamed
        page.keyboard.press("1")
        expect(page.locator("#progress")).to_contain_text("alice · answered 1 / 3 · showing pair 2 of 3")
    finally:
        ctx.close()
        demo.close()
        shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)
    assert [(a.pair_id, a.annotator, a.choice) for a in store.answers()] == [(pairs[0].id, "alice", A_BETTER)]
