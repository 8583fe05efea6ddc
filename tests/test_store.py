"""The SQLite preference store: real files, real processes, real SIGKILL."""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rlhf.pairs import Pair, PairsFormatError, load_pairs, pair_id, save_pairs
from rlhf.store import (
    Answer,
    PreferenceStore,
    StoreError,
    UnknownPairError,
    consensus,
    is_store_file,
    load_preference_data,
)
from rlhf.store_sqlite import StoreFile

IMG = "/photos/cat.jpg"


def make_pairs(n: int, image: str = IMG, start: int = 0) -> list[Pair]:
    out = []
    for i in range(start, start + n):
        a, b = (0, 0, 10 + i, 10), (i, 0, 40 + i, 30)
        out.append(Pair(pair_id(image, a, b), image, a, b, None, {"k": i}))
    return out


@pytest.fixture
def store(tmp_path) -> PreferenceStore:
    s = PreferenceStore(tmp_path / "prefs.sqlite")
    s.add_pairs(make_pairs(6))
    return s


def test_file_settings_wal_and_full_sync(store):
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    con.close()
    con = StoreFile(store.path, store.busy_timeout_s).connect()  # the store's own settings
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    con.close()


def test_add_pairs_order_duplicates_and_get(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    first = make_pairs(4)
    assert s.add_pairs(first) == 4
    assert s.add_pairs(first[2:] + make_pairs(2, start=4)) == 2  # known ids ignored
    assert s.pair_ids() == [p.id for p in make_pairs(6)]
    assert len(s) == 6
    got = s.get(first[1].id)
    assert got == first[1] and got.extra == {"k": 1} and isinstance(got.crop_a, tuple)
    with pytest.raises(UnknownPairError, match=r"s.db: no pair with id 'nope'"):
        s.get("nope")
    assert s.image_paths() == {IMG}
    s.add_pairs(make_pairs(1, image="/photos/dog.jpg"))
    assert s.image_paths() == {IMG, "/photos/dog.jpg"}


def test_conflicting_pair_is_refused_and_nothing_added(store):
    ids = store.pair_ids()
    clash = Pair(ids[0], IMG, (1, 1, 5, 5), (2, 2, 9, 9))
    with pytest.raises(StoreError, match="already holds a different pair"):
        store.add_pairs(make_pairs(3, start=50) + [clash])
    assert store.pair_ids() == ids


def test_add_pairs_validates(store):
    with pytest.raises(PairsFormatError, match="field 'image'.*absolute"):
        store.add_pairs([Pair("r", "relative.jpg", (0, 0, 2, 2), (0, 0, 3, 3))])
    with pytest.raises(PairsFormatError, match="field 'crop_b'.*left < right"):
        store.add_pairs([Pair("r", IMG, (0, 0, 2, 2), (5, 0, 3, 3))])
    with pytest.raises(TypeError, match="not a Pair"):
        store.add_pairs([{"id": "x"}])


def test_add_pairs_takes_numpy_boxes(tmp_path):
    np = pytest.importorskip("numpy")
    s = PreferenceStore(tmp_path / "np.sqlite")
    box = np.array([0, 0, 12, 9], dtype=np.int64)
    s.add_pairs([Pair("n1", IMG, tuple(box), box, None)])
    got = s.get("n1")
    assert got.crop_a == (0, 0, 12, 9) == got.crop_b and all(type(v) is int for v in got.crop_a)
    with pytest.raises(PairsFormatError, match="integers"):
        s.add_pairs([Pair("n2", IMG, (0.0, 0.0, 12.5, 9.0), box)])


def test_answer_validation(store):
    pid = store.pair_ids()[0]
    for bad in (3, -1, "1", True, None, 1.0):
        with pytest.raises(ValueError, match="choice must be"):
            store.answer(pid, "ann", bad)
    with pytest.raises(UnknownPairError):
        store.answer("missing", "ann", 1)
    with pytest.raises(ValueError, match="annotator"):
        store.answer(pid, "  ", 1)
    with pytest.raises(ValueError, match="seconds"):
        store.answer(pid, "ann", 1, seconds=-2)
    assert store.answers() == []  # nothing half-recorded


def test_answer_change_keeps_latest_and_history(store):
    pid = store.pair_ids()[2]
    a1 = store.answer(pid, "ann", 1, seconds=3.5)
    assert isinstance(a1, Answer) and a1.seconds == 3.5
    time.sleep(0.01)
    store.answer(pid, "ann", 2, seconds=1.0)
    assert store.answer_of(pid, "ann") == 2
    (cur,) = store.answers(pair_id=pid)
    assert (cur.annotator, cur.choice, cur.seconds) == ("ann", 2, 1.0) and cur.timestamp >= a1.timestamp
    hist = store.answers(pair_id=pid, history=True)
    assert [h.choice for h in hist] == [1, 2]
    assert store.progress("ann") == (1, 6)
    assert store.answer_of(pid, "other") is None


def test_resume_next_unanswered_across_reopen(store):
    ids = store.pair_ids()
    assert store.next_unanswered("ann").id == ids[0]
    store.answer(ids[0], "ann", 1)
    store.answer(ids[1], "ann", 0)
    store.answer(ids[3], "ann", 2)
    reopened = PreferenceStore(store.path)  # a restarted annotator app
    assert reopened.next_unanswered("ann").id == ids[2]
    assert reopened.next_unanswered("ann", exclude=[ids[2]]).id == ids[4]
    assert reopened.next_unanswered("someone_else").id == ids[0]
    assert reopened.progress("ann") == (3, 6)
    for pid in ids:
        reopened.answer(pid, "ann", 1)
    assert reopened.next_unanswered("ann") is None
    assert reopened.progress("ann") == (6, 6)


def test_consensus_rule():
    assert consensus([]) is None
    assert consensus([2]) == 2
    assert consensus([1, 1, 2]) == 1
    assert consensus([1, 2]) == 0
    assert consensus([1, 0]) == 0
    assert consensus([0, 0, 2]) == 0
    assert consensus([2, 2, 1, 1, 0]) == 0


def test_pairs_filters_and_preferences(store):
    ids = store.pair_ids()
    store.answer(ids[0], "ann", 1)
    store.answer(ids[0], "bob", 1)
    store.answer(ids[1], "ann", 1)
    store.answer(ids[1], "bob", 2)
    store.answer(ids[2], "bob", 2)
    assert store.annotators() == ["ann", "bob"]
    everyone = store.pairs()
    assert [p.id for p in everyone] == ids
    assert [p.preference for p in everyone] == [1, 0, 2, None, None, None]
    assert [p.id for p in store.pairs(answered=True)] == ids[:3]
    assert [p.id for p in store.pairs(answered=False)] == ids[3:]
    ann = store.pairs(answered=True, annotator="ann")
    assert [(p.id, p.preference) for p in ann] == [(ids[0], 1), (ids[1], 1)]
    assert [p.id for p in store.pairs(answered=False, annotator="ann")] == ids[2:]
    assert [p.preference for p in store.pairs(annotator="bob")] == [1, 2, 2, None, None, None]
    assert store.pairs(annotator="nobody", answered=True) == []
    assert len(store.answers(annotator="bob")) == 3


def test_import_export_round_trip(tmp_path, store):
    ids = store.pair_ids()
    store.answer(ids[0], "ann", 1, seconds=2.0)
    store.answer(ids[0], "bob", 2)
    store.answer(ids[4], "simulated:tight", 0)
    out = tmp_path / "export" / "pairs.json"
    store.export_json(out)
    doc = json.loads(out.read_text())
    assert doc["version"] == 1 and [p["id"] for p in doc["pairs"]] == ids
    assert doc["pairs"][0]["preference"] == 0  # consensus of a 1-vs-2 tie
    assert doc["pairs"][0]["k"] == 0  # extra keys survive the store
    assert {a["annotator"]: a["choice"] for a in doc["pairs"][0]["annotations"]} == {"ann": 1, "bob": 2}
    assert doc["pairs"][1]["preference"] is None and doc["pairs"][1]["annotations"] == []

    fresh = PreferenceStore(tmp_path / "fresh.sqlite")
    assert fresh.import_json(out) == 6
    assert fresh.pair_ids() == ids
    assert fresh.answers() == store.answers()  # annotator, choice, seconds, timestamp all kept
    assert fresh.pairs() == store.pairs()
    assert fresh.import_json(out) == 0
    assert len(fresh.answers(history=True)) == 3  # a re-import records nothing twice

    store.export_json(out, annotator="ann")
    assert [p.preference for p in load_pairs(out)] == [1, None, None, None, None, None]
    # A file exported elsewhere and edited back in: newer answers win, older ones join the history.
    store.answer(ids[0], "ann", 2)
    fresh.import_json(out)
    assert fresh.answer_of(ids[0], "ann") == 1
    store.export_json(out)
    fresh.import_json(out)
    assert fresh.answer_of(ids[0], "ann") == 2


def test_import_plain_file_records_preferences_under_a_name(tmp_path):
    (tmp_path / "photos").mkdir()
    pairs = make_pairs(4, image=str(tmp_path / "photos" / "a.jpg"))
    for p, pref in zip(pairs, [1, None, 0, 2], strict=True):
        p.preference = pref
    path = tmp_path / "pairs.json"
    save_pairs(path, pairs, relative_to=tmp_path)
    s = PreferenceStore(tmp_path / "s.sqlite")
    assert s.import_json(path, annotator="alice") == 4
    assert s.image_paths() == {str(tmp_path / "photos" / "a.jpg")}
    assert [p.preference for p in s.pairs(annotator="alice")] == [1, None, 0, 2]
    assert s.import_json(path, annotator="alice") == 0
    assert len(s.answers(history=True)) == 3
    s2 = PreferenceStore(tmp_path / "s2.sqlite")
    s2.import_json(path)
    assert s2.annotators() == ["import"]


def test_import_is_all_or_nothing(tmp_path, store):
    ids = store.pair_ids()
    bad = tmp_path / "bad.json"
    doc = {"version": 1, "pairs": [p.to_json() for p in make_pairs(3, start=100)]}
    doc["pairs"][2]["crop_a"] = [5, 5, 1, 1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(PairsFormatError, match=r"pair #2 .*field 'crop_a'"):
        store.import_json(bad)
    doc["pairs"][2] = store.get(ids[0]).to_json()
    doc["pairs"][2]["crop_b"] = [0, 0, 3, 3]  # a known id with other boxes
    bad.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="different pair"):
        store.import_json(bad)
    bad.write_text(json.dumps(doc)[:-30])
    with pytest.raises(PairsFormatError, match="truncated"):
        store.import_json(bad)
    assert store.pair_ids() == ids


def test_refuses_non_store_files(tmp_path):
    notes = tmp_path / "notes.sqlite"
    notes.write_text("hello, not a database")
    with pytest.raises(StoreError, match="notes.sqlite: not an SQLite preference store"):
        PreferenceStore(notes)
    assert notes.read_text() == "hello, not a database"
    with pytest.raises(StoreError, match="pairs JSON file, not a store"):
        PreferenceStore(tmp_path / "pairs.json")
    with pytest.raises(StoreError, match="folder"):
        PreferenceStore(tmp_path)


def test_load_preference_data_from_store_or_json(tmp_path, store):
    ids = store.pair_ids()
    store.answer(ids[0], "ann", 1)
    store.answer(ids[1], "ann", 2)
    store.answer(ids[1], "bob", 1)
    store.answer(ids[2], "bob", 0)
    out = tmp_path / "e.json"
    store.export_json(out)
    assert is_store_file(store.path) and not is_store_file(out)
    for src in (store.path, out):
        ann = load_preference_data(src, annotator="ann")
        assert [(p.id, p.preference) for p in ann] == [(ids[0], 1), (ids[1], 2)], src
        cons = load_preference_data(src)
        assert [(p.id, p.preference) for p in cons] == [(ids[0], 1), (ids[1], 0), (ids[2], 0)], src
    assert len(load_preference_data(out, answered_only=False)) == 6
    with pytest.raises(FileNotFoundError):
        load_preference_data(tmp_path / "none.sqlite")


def test_threads_share_one_store_object(store):
    """Gradio calls handlers from worker threads: one store object used by many threads at once."""
    ids = store.pair_ids()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(10):
                pid = ids[(k + j) % len(ids)]
                store.answer(pid, f"t{k}", (k + j) % 3)
                store.next_unanswered(f"t{k}")
                store.pairs(answered=True)
        except BaseException as e:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.answers(history=True)) == 60
    assert all(store.progress(f"t{k}") == (6, 6) for k in range(6))


def _writer(path: str, annotator: str, ids: list[str], start, results) -> None:
    try:
        s = PreferenceStore(path, busy_timeout_s=30)
        start.wait(timeout=60)  # both processes are up and hold the store: race from here
        for i, pid in enumerate(ids):
            s.answer(pid, annotator, i % 3, seconds=0.1)
            if i % 10 == 0:
                s.pairs(answered=True)  # readers and writers interleave too
        results.put((annotator, "ok"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put((annotator, repr(e)))


N_RACE = 150


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    PreferenceStore(path).add_pairs(make_pairs(N_RACE))
    ids = PreferenceStore(path).pair_ids()
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), name, ids, start, results))
             for name in ("proc_a", "proc_b")]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == {"proc_a": "ok", "proc_b": "ok"}  # no "database is locked"
    s = PreferenceStore(path)
    assert s.progress("proc_a") == (N_RACE, N_RACE) and s.progress("proc_b") == (N_RACE, N_RACE)
    assert len(s.answers(history=True)) == 2 * N_RACE
    assert [s.answer_of(pid, "proc_b") for pid in ids] == [i % 3 for i in range(N_RACE)]
    # The two writers really overlapped in time (otherwise this test would prove nothing).
    spans = {}
    for a in s.answers(history=True):
        lo, hi = spans.get(a.annotator, (a.timestamp, a.timestamp))
        spans[a.annotator] = (min(lo, a.timestamp), max(hi, a.timestamp))
    (a0, a1), (b0, b1) = spans["proc_a"], spans["proc_b"]
    assert a0 < b1 and b0 < a1, spans


def test_killed_writer_keeps_acknowledged_answer(tmp_path):
    path = tmp_path / "k.sqlite"
    s = PreferenceStore(path)
    s.add_pairs(make_pairs(3))
    pid = s.pair_ids()[1]
    script = textwrap.dedent(f"""
        import sys, time
        from rlhf.store import PreferenceStore
        s = PreferenceStore({str(path)!r})
        s.answer({pid!r}, "killed", 2, seconds=4.5)
        print("answered", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "answered"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    fresh = PreferenceStore(path)
    assert fresh.answer_of(pid, "killed") == 2
    assert fresh.answers(annotator="killed")[0].seconds == 4.5
    assert fresh.next_unanswered("killed").id == fresh.pair_ids()[0]


def _opener(path: str, k: int, start, results) -> None:
    try:
        start.wait(timeout=60)
        s = PreferenceStore(path)  # several processes create the same new file at once
        s.add_pairs(make_pairs(5))
        s.answer(s.pair_ids()[k], f"w{k}", 1)
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(repr(e))


def test_processes_create_one_new_store_at_once(tmp_path):
    path = tmp_path / "new.sqlite"
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(str(path), k, start, results)) for k in range(3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok"] * 3
    s = PreferenceStore(path)
    assert len(s) == 5 and s.annotators() == ["w0", "w1", "w2"]
