"""The annotator without a browser: its behaviour (Controller on a real SQLite store), its launch
safety, and a real Gradio server on loopback driven through gradio_client and plain HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client

from annotator.app import (
    AnnotateConfig,
    _outputs,
    build_app,
    launch,
    main,
    open_store,
    plain,
    store_path_for,
)
from annotator.render import COLOR_A, COLOR_B, PhotoCache, draw_overview, render_pair
from annotator.security import AuthFileError, UnsafeLaunchError, check_exposure, is_loopback, parse_auth
from annotator.session import Controller, InvalidNameError, clean_name, new_state
from rlhf.images import load_image
from rlhf.pairs import A_BETTER, B_BETTER, NO_PREFERENCE, Pair, load_pairs, pair_id, save_pairs
from rlhf.store import PreferenceStore, load_preference_data
from tests.annotator_fixtures import copy_photos, free_port, make_pairs, make_store

# gradio_client returns the outputs it can represent, in this order (State, layout and button
# updates are left out).
NAME_ERROR, CROP_A, CROP_B, OVERVIEW, PROGRESS, ANSWER, STATUS, SHOWN, SCREEN, IGNORED = range(10)


# -- behaviour (no server) ---------------------------------------------------------------------

def test_names_are_checked():
    assert clean_name("  Ada   Lovelace ") == "Ada Lovelace"
    for bad in ["", "   ", "x" * 41, "<script>", "simulated:bob", "import"]:
        with pytest.raises(InvalidNameError):
            clean_name(bad)


def test_choice_saves_and_moves_on_back_shows_and_changes(tmp_path):
    store, pairs = make_store(tmp_path, n=4)
    ctl = Controller(store)
    st = new_state()
    s = ctl.set_name(st, "ada")
    assert (s.position, s.done, s.total, s.answer) == (1, 0, 4, None)
    assert s.view.crop_a.shape == (200, 200, 3) and s.view.overview is not None
    s = ctl.choose(st, A_BETTER, pairs[0].id)
    assert "Saved: pair 1" in s.message and s.position == 2 and s.done == 1
    assert store.answer_of(pairs[0].id, "ada") == A_BETTER
    s = ctl.move(st, -1)
    assert s.position == 1 and s.answer == A_BETTER  # going back shows the earlier answer
    s = ctl.choose(st, B_BETTER, s.pair.id)
    assert store.answer_of(pairs[0].id, "ada") == B_BETTER and s.position == 2
    assert len(store.answers(pairs[0].id, "ada", history=True)) == 2  # the change is kept in history
    s = ctl.move(st, -1)
    s = ctl.move(st, -1)
    assert s.position == 1 and "first pair" in s.message
    secs = store.answers(pairs[0].id, "ada")[0].seconds
    assert secs is not None and 0 <= secs < 60


def test_keys_typed_ahead_are_ignored_never_applied(tmp_path):
    store, pairs = make_store(tmp_path, n=3)
    ctl = Controller(store)
    st = new_state()
    first = ctl.set_name(st, "ada")
    s = ctl.choose(st, A_BETTER, pairs[0].id, first.screen)
    # The next presses arrive before the browser showed pair 2: they still name pair 1's screen.
    for choice in (B_BETTER, NO_PREFERENCE):
        s2 = ctl.choose(st, choice, pairs[0].id, first.screen)
        assert s2.message.startswith("Ignored a key") and s2.screen == s.screen and s2.position == 2
    assert s2.ignored == 2 and store.answer_of(pairs[1].id, "ada") is None
    assert [a.choice for a in store.answers(pairs[0].id, history=True)] == [A_BETTER]
    # The last pair: answered once, a second quick key (same pair, the old screen) is ignored;
    # a key pressed after the screen confirmed the answer changes it, as the person meant.
    last = ctl.choose(st, NO_PREFERENCE, pairs[1].id, s.screen)
    s = ctl.choose(st, B_BETTER, pairs[2].id, last.screen)
    assert s.pair.id == pairs[2].id and s.screen == last.screen + 1
    assert ctl.choose(st, A_BETTER, pairs[2].id, last.screen).message.startswith("Ignored")
    assert store.answer_of(pairs[2].id, "ada") == B_BETTER
    ctl.choose(st, A_BETTER, pairs[2].id, s.screen)
    assert store.answer_of(pairs[2].id, "ada") == A_BETTER


def test_resume_starts_at_first_unanswered_and_sessions_are_separate(tmp_path):
    store, pairs = make_store(tmp_path, n=5)
    ctl = Controller(store)
    ada, bob = new_state(), new_state()
    ctl.set_name(ada, "ada")
    ctl.set_name(bob, "bob")
    for p in pairs[:3]:
        ctl.choose(ada, NO_PREFERENCE, p.id)
    s = ctl.show(bob, "")
    assert (s.position, s.done) == (1, 0)  # bob's screen did not move with ada's answers
    # A new session of ada (reload, or the app restarted) resumes at her first unanswered pair.
    again = ctl.start(new_state(), remembered="ada")
    assert (again.position, again.done, again.annotator) == (4, 3, "ada")
    # Answering the last pair goes back to the first one she skipped.
    ctl.move(ada, +1)
    s = ctl.choose(ada, A_BETTER, pairs[4].id)
    assert s.pair.id == pairs[3].id and "first you have not answered" in s.message
    s = ctl.choose(ada, B_BETTER, pairs[3].id)
    assert "All 5 pairs answered" in s.message
    assert ctl.start(new_state(), remembered="ada").message.startswith("You have answered all 5")


def test_name_is_asked_unless_fixed_or_logged_in(tmp_path):
    store, _ = make_store(tmp_path, n=2)
    assert Controller(store).start(new_state()).ask_name
    assert Controller(store).start(new_state(), username="eve").annotator == "eve"
    # With logins the login is the annotator, even over --annotator, and it cannot be renamed.
    st = new_state()
    assert Controller(store, fixed_annotator="joe").start(st, username="eve").annotator == "eve"
    s = Controller(store).set_name(st, "bob")
    assert s.annotator == "eve" and s.message.startswith("Refused: you are logged in as eve")
    assert Controller(store).change_name(st).annotator == "eve" and st["annotator"] == "eve"
    s = Controller(store).set_name(new_state(), "")
    assert s.ask_name and "type your name" in s.name_error
    s = Controller(store).choose(new_state(), A_BETTER)
    assert s.ask_name and not store.answers()


def test_missing_or_corrupt_photo_shows_a_message_and_the_app_goes_on(tmp_path):
    store, pairs = make_store(tmp_path, n=3)
    Path(pairs[0].image).unlink()  # astronaut gone
    Path(pairs[1].image).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # chelsea corrupt
    ctl = Controller(store)
    st = new_state()
    s = ctl.set_name(st, "ada")
    assert s.view.crop_a is None and "cannot be shown" in s.message and "no such file" in s.message
    assert "astronaut.jpg" in s.message
    s = ctl.choose(st, A_BETTER, pairs[0].id)
    assert "Not saved" in s.message and store.answer_of(pairs[0].id, "ada") is None
    s = ctl.move(st, +1)
    assert s.position == 2 and "corrupt" in s.message and "chelsea.jpg" in s.message
    s = ctl.move(st, +1)
    assert s.view.error is None and s.view.crop_b is not None  # the good pair still works
    ctl.choose(st, B_BETTER, s.pair.id)
    assert store.answer_of(pairs[2].id, "ada") == B_BETTER


def test_box_outside_photo_and_image_root(tmp_path):
    photos = copy_photos(tmp_path / "photos", ["chelsea"])  # 451 x 300
    cache = PhotoCache()
    v = render_pair(cache, str(photos[0]), (0, 0, 100, 100), (0, 0, 451, 301))
    assert v.error and "does not lie inside the 451x300 photo" in v.error
    outside = copy_photos(tmp_path / "elsewhere", ["coffee"])[0]
    v = render_pair(PhotoCache(image_root=tmp_path / "photos"), str(outside), (0, 0, 9, 9), (0, 0, 9, 9))
    assert v.error and "outside the allowed image folder" in v.error
    # '..' in a pair's path does not get around the root either.
    sneaky = str(tmp_path / "photos" / ".." / "elsewhere" / "coffee.jpg")
    v = render_pair(PhotoCache(image_root=tmp_path / "photos"), sneaky, (0, 0, 9, 9), (0, 0, 9, 9))
    assert v.error and "outside the allowed image folder" in v.error


def test_rendered_crops_are_the_photo_regions(tmp_path):
    photo = copy_photos(tmp_path, ["coffee"])[0]
    pixels = load_image(photo)
    v = render_pair(PhotoCache(), str(photo), (10, 20, 110, 220), (300, 0, 600, 400))
    assert np.array_equal(v.crop_a, pixels[20:220, 10:110])
    assert np.array_equal(v.crop_b, pixels[0:400, 300:600])
    before = pixels.copy()
    ov = draw_overview(pixels, (10, 20, 110, 220), (300, 0, 600, 400), max_side=300)
    assert max(ov.shape[:2]) == 300
    assert np.array_equal(pixels, before)  # the boxes are drawn on a copy, not on the photo
    assert tuple(ov[10, 30]) == COLOR_A and tuple(ov[100, 150]) == COLOR_B  # edges, at half size
    big = render_pair(PhotoCache(), str(photo), (0, 0, 600, 400), (0, 0, 300, 400), crop_max=256)
    assert big.crop_a.shape == (171, 256, 3)  # only shrunk, aspect kept


# -- launch safety and configuration ------------------------------------------------------------

def test_loopback_detection():
    for host in ["127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost", "LOCALHOST"]:
        assert is_loopback(host), host
    for host in ["0.0.0.0", "::", "192.168.1.10", "example.org", "10.0.0.1"]:
        assert not is_loopback(host), host


def test_exposure_needs_a_password():
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", [("ann", "pw")], False)
    with pytest.raises(UnsafeLaunchError, match="--host 0.0.0.0"):
        check_exposure("0.0.0.0", None, False)
    with pytest.raises(UnsafeLaunchError, match="share"):
        check_exposure("127.0.0.1", None, True)


def test_auth_values_and_file(tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("# annotators\nann:secret one\n\nbob:pw:with:colons\n")
    assert parse_auth(["cy:x"], f) == [("cy", "x"), ("ann", "secret one"), ("bob", "pw:with:colons")]
    f.write_text("ann:pw\nno-colon-here\n")
    with pytest.raises(AuthFileError, match=r"users.txt line 2"):
        parse_auth(None, f)
    with pytest.raises(AuthFileError, match="no such auth file"):
        parse_auth(None, tmp_path / "missing.txt")
    with pytest.raises(AuthFileError, match="more than once"):
        parse_auth(["ann:a", "ann:b"])
    with pytest.raises(AuthFileError) as e:
        parse_auth(["ann"])
    assert "user:password" in str(e.value)
    f.write_text("# nobody\n")
    with pytest.raises(AuthFileError, match="no user:password"):
        parse_auth(None, f)


def test_main_refuses_public_host_without_auth_and_touches_nothing(tmp_path, capsys):
    store = tmp_path / "new.sqlite"
    assert main(["--store", str(store), "--host", "0.0.0.0"]) == 2
    assert "--auth" in capsys.readouterr().err
    assert not store.exists()
    assert main(["--store", str(store), "--share"]) == 2
    assert main([]) == 2 and "--preferences" in capsys.readouterr().err


def test_main_reports_bad_inputs_and_loses_nothing(tmp_path, capsys):
    bad_json = tmp_path / "pairs.json"
    bad_json.write_text('{"version": 1, "pairs": [{"image": "x.jpg", "crop_a": [0, 0, 5, 5]')
    before = bad_json.read_bytes()
    assert main(["--preferences", str(bad_json)]) == 2
    err = capsys.readouterr().err
    assert "pairs.json" in err and "truncated" in err
    assert bad_json.read_bytes() == before
    not_a_store = tmp_path / "notes.sqlite"
    not_a_store.write_text("hello")
    assert main(["--store", str(not_a_store)]) == 2
    assert "not an SQLite preference store" in capsys.readouterr().err
    assert not_a_store.read_text() == "hello"
    assert main(["--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such store" in capsys.readouterr().err
    assert main(["--preferences", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such pairs file" in capsys.readouterr().err
    assert not (tmp_path / "nope.annotations.sqlite").exists()
    assert main(["--store", str(not_a_store), "--annotator", "a<b"]) == 2
    assert main(["--store", str(not_a_store), "--port", "70000"]) == 2


def test_preferences_json_uses_a_store_beside_it_and_save_writes_it_back(tmp_path):
    photos = copy_photos(tmp_path / "photos", ["astronaut", "coffee"])
    pairs = make_pairs(photos, 3)
    pairs[0].preference = B_BETTER  # answered earlier, in the seed's annotator
    pairs[1].extra["note"] = "kept"
    jpath = tmp_path / "pairs.json"
    save_pairs(jpath, pairs, relative_to=tmp_path)
    cfg = AnnotateConfig(preferences=str(jpath), annotator="ada")
    store, json_path = open_store(cfg)
    assert store.path == store_path_for(jpath).resolve() == (tmp_path / "pairs.annotations.sqlite").resolve()
    assert len(store) == 3 and store.answer_of(pairs[0].id, "ada") == B_BETTER
    ctl = Controller(store, json_path=json_path, fixed_annotator="ada")
    st = new_state()
    s = ctl.start(st)
    assert s.position == 2  # the JSON's earlier answer counts: resume skips it
    ctl.choose(st, A_BETTER, s.pair.id)
    s = ctl.save(st)
    assert "written to pairs.json" in s.message
    back = {p.id: p for p in load_pairs(jpath)}
    assert back[pairs[0].id].preference == B_BETTER and back[pairs[1].id].preference == A_BETTER
    assert back[pairs[2].id].preference is None and back[pairs[1].id].extra["note"] == "kept"
    assert json.loads(jpath.read_text())["pairs"][0]["image"] == "photos/astronaut.jpg"
    # What train-reward reads: the answered pairs, from the JSON alone.
    assert {p.id for p in load_preference_data(jpath)} == {pairs[0].id, pairs[1].id}
    # Reopening imports nothing twice.
    store2, _ = open_store(cfg)
    assert len(store2) == 3 and len(store2.answers()) == 2
    # The JSON deleted by mistake: the store beside it still has everything, and S rewrites it.
    jpath.unlink()
    store3, _ = open_store(cfg)
    Controller(store3, json_path=json_path, fixed_annotator="ada").save(new_state())
    assert {p.id: p.preference for p in load_pairs(jpath)} == {p.id: p.preference for p in back.values()}


# -- a real server on loopback -------------------------------------------------------------------

@pytest.fixture
def served(tmp_path):
    """A store with 5 pairs, served on a free loopback port; yields (url, store, pairs, tmp)."""
    store, pairs = make_store(tmp_path, n=5)
    demo = build_app(store)
    url = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url.rstrip("/"), store, pairs, tmp_path
    finally:
        demo.close()
        shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)


def test_api_keys_end_up_in_the_store(served):
    url, store, pairs, _ = served
    c = Client(url, verbose=False)
    r = c.predict("ada", api_name="/set_name")
    assert "answered **0 / 5**" in r[PROGRESS] and r[SHOWN] == pairs[0].id
    assert r[-1] == "ada"  # remembered in the browser for the next visit
    r = c.predict(pairs[0].id, api_name="/a_better")
    assert r[SHOWN] == pairs[1].id and "Saved: pair 1 → A better" in r[STATUS]
    r = c.predict(r[SHOWN], api_name="/b_better")
    r = c.predict(r[SHOWN], api_name="/no_preference")
    assert r[SHOWN] == pairs[3].id and "answered **3 / 5**" in r[PROGRESS]
    r = c.predict(api_name="/previous")
    assert r[SHOWN] == pairs[2].id and "no preference" in r[ANSWER]
    r = c.predict(api_name="/next")
    r = c.predict(api_name="/next")
    assert r[SHOWN] == pairs[4].id and r[ANSWER] == "Not answered yet."
    r = c.predict(api_name="/save")
    assert r[STATUS].startswith("Saved")
    got = {a.pair_id: a.choice for a in store.answers(annotator="ada")}
    assert got == {pairs[0].id: A_BETTER, pairs[1].id: B_BETTER, pairs[2].id: NO_PREFERENCE}
    # The crops come back as images of the right size.
    assert Path(r[CROP_A]).is_file() and Path(r[OVERVIEW]).is_file()


def test_two_api_sessions_keep_their_own_state(served):
    url, store, pairs, _ = served
    ada, bob = Client(url, verbose=False), Client(url, verbose=False)
    ra = ada.predict("ada", api_name="/set_name")
    rb = bob.predict("bob", api_name="/set_name")
    for _ in range(3):
        ra = ada.predict(ra[SHOWN], api_name="/a_better")
    rb = bob.predict(api_name="/next")
    assert ra[SHOWN] == pairs[3].id and "answered **3 / 5**" in ra[PROGRESS]
    assert rb[SHOWN] == pairs[1].id and "**bob** · answered **0 / 5**" in rb[PROGRESS]
    rb = bob.predict(rb[SHOWN], api_name="/b_better")
    assert store.progress("ada") == (3, 5) and store.progress("bob") == (1, 5)
    assert store.answer_of(pairs[1].id, "bob") == B_BETTER and store.answer_of(pairs[1].id, "ada") == A_BETTER
    # A third session as ada resumes where ada stopped.
    r = Client(url, verbose=False).predict("ada", api_name="/set_name")
    assert r[SHOWN] == pairs[3].id and "Welcome back" in r[STATUS]


def test_launch_refuses_public_host_without_auth(tmp_path):
    store, _ = make_store(tmp_path, n=1)
    demo = build_app(store)
    with pytest.raises(UnsafeLaunchError):
        launch(demo, host="0.0.0.0", port=free_port(), prevent_thread_lock=True, quiet=True)


def test_pairs_from_hand_written_json_with_relative_and_traversing_paths(tmp_path):
    photos = copy_photos(tmp_path / "set" / "photos", ["coffee"])
    doc = {"version": 1, "pairs": [
        {"image": "photos/coffee.jpg", "crop_a": [0, 0, 100, 100], "crop_b": [50, 50, 300, 300]},
        {"image": "../../../../../../etc/passwd", "crop_a": [0, 0, 10, 10], "crop_b": [0, 0, 20, 20]}]}
    jpath = tmp_path / "set" / "pairs.json"
    jpath.write_text(json.dumps(doc))
    store, json_path = open_store(AnnotateConfig(preferences=str(jpath)))
    ctl = Controller(store, PhotoCache(image_root=tmp_path / "set"), json_path)
    st = new_state()
    s = ctl.set_name(st, "ada")
    assert s.view.error is None and s.pair.image == str(photos[0].resolve())
    s = ctl.move(st, +1)
    assert s.view.crop_a is None and "outside the allowed image folder" in s.message
    # Without a root the file is still only decoded as an image, never sent: it is not one.
    s = Controller(store).show(st, "")
    assert s.view.crop_a is None and "not an image" in s.message
    assert pair_id("photos/coffee.jpg", [0, 0, 100, 100], [50, 50, 300, 300]) == store.pair_ids()[0]


def test_store_pairs_added_while_running_show_up(served):
    url, store, pairs, tmp = served
    c = Client(url, verbose=False)
    r = c.predict("ada", api_name="/set_name")
    assert "of 5" in r[PROGRESS]
    extra = make_pairs([Path(pairs[0].image)], 7)[5:]
    store.add_pairs(extra)
    r = c.predict(api_name="/next")
    assert "of 7" in r[PROGRESS]



def test_a_locked_store_says_not_saved_and_stays_on_the_pair(tmp_path):
    store, pairs = make_store(tmp_path, n=3)
    impatient = PreferenceStore(store.path, busy_timeout_s=0.2)
    ctl = Controller(impatient)
    st = new_state()
    ctl.set_name(st, "ada")
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock (a real one, not a mock)
    try:
        s = ctl.choose(st, A_BETTER, pairs[0].id)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.message.startswith("NOT saved") and "locked" in s.message
    assert s.position == 1 and store.answers() == []
    s = ctl.choose(st, A_BETTER, pairs[0].id)  # pressed again once the lock is gone
    assert s.position == 2 and store.answer_of(pairs[0].id, "ada") == A_BETTER


def test_unknown_pair_on_screen_is_refused(tmp_path):
    store, pairs = make_store(tmp_path, n=2)
    ctl = Controller(store)
    st = new_state()
    ctl.set_name(st, "ada")
    s = ctl.choose(st, A_BETTER, "p-no-such-pair")
    assert "no pair 'p-no-such-pair'" in s.message and store.answers() == [] and s.position == 1


def test_text_from_data_is_shown_literally(tmp_path):
    assert plain("<img src=x onerror=alert(1)> a_b *c*") == "&lt;img src=x onerror=alert(1)&gt; a\\_b \\*c\\*"
    store, pairs = make_store(tmp_path, n=1)
    odd = Pair("<img src=x onerror=alert(1)>", pairs[0].image, (0, 0, 50, 50), (0, 0, 60, 60))
    store.add_pairs([odd])
    st = new_state()
    ctl = Controller(store)
    ctl.set_name(st, "ada")
    progress = _outputs(ctl.move(st, +1), st)[7]
    assert "of 2" in progress and "<img" not in progress and "&lt;img" in progress


def test_busy_port_gives_a_clear_error(tmp_path):
    store, _ = make_store(tmp_path, n=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match="--port"):
            launch(build_app(store), port=port, prevent_thread_lock=True, quiet=True)


def test_server_shows_a_broken_photo_as_a_message_and_goes_on(served):
    url, store, pairs, _ = served
    Path(pairs[1].image).write_bytes(b"GIF89a truncated")  # chelsea: pair 2 breaks
    c = Client(url, verbose=False)
    r = c.predict("ada", api_name="/set_name")
    r = c.predict(r[SHOWN], api_name="/a_better")
    assert r[SHOWN] == pairs[1].id and r[CROP_A] is None and "cannot be shown" in r[STATUS]
    r = c.predict(r[SHOWN], api_name="/b_better")
    assert "Not saved" in r[STATUS] and store.answer_of(pairs[1].id, "ada") is None
    r = c.predict(api_name="/next")
    assert r[CROP_A] is not None and r[SHOWN] == pairs[2].id
    r = c.predict(r[SHOWN], api_name="/no_preference")
    assert store.progress("ada") == (2, 5)
