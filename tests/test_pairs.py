"""The pairs JSON format: validation with errors that name the pair and field, paths, atomic saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf.pairs import (
    A_BETTER,
    B_BETTER,
    NO_PREFERENCE,
    Pair,
    PairsFormatError,
    load_pairs,
    pair_id,
    save_pairs,
)


def _doc(*pairs: dict) -> dict:
    return {"version": 1, "pairs": list(pairs)}


def _good(**over) -> dict:
    d = {"id": "p1", "image": "photo.jpg", "crop_a": [0, 0, 10, 10], "crop_b": [5, 5, 20, 30],
         "preference": None}
    d.update(over)
    return d


def _write(tmp_path: Path, doc, name: str = "pairs.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_constants():
    assert (A_BETTER, B_BETTER, NO_PREFERENCE) == (1, 2, 0)


def test_load_resolves_relative_and_keeps_absolute(tmp_path):
    (tmp_path / "sub").mkdir()
    elsewhere = tmp_path / "elsewhere" / "x.png"
    path = _write(tmp_path / "sub", _doc(_good(id="a", image="photo.jpg"),
                                         _good(id="b", image="../imgs/y.jpg", preference=1),
                                         _good(id="c", image=str(elsewhere), preference=0)))
    pairs = load_pairs(path)
    assert [p.id for p in pairs] == ["a", "b", "c"]
    assert pairs[0].image == str((tmp_path / "sub" / "photo.jpg").resolve())
    assert pairs[1].image == str((tmp_path / "imgs" / "y.jpg").resolve())
    assert pairs[2].image == str(elsewhere)
    assert pairs[0].crop_a == (0, 0, 10, 10) and pairs[0].crop_b == (5, 5, 20, 30)
    assert [p.preference for p in pairs] == [None, 1, 0]


def test_relative_paths_resolve_against_file_folder_not_cwd(tmp_path, monkeypatch):
    path = _write(tmp_path, _doc(_good(image="photo.jpg")))
    monkeypatch.chdir("/")
    assert load_pairs(path)[0].image == str(tmp_path.resolve() / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    assert load_pairs("pairs.json")[0].image == str(tmp_path.resolve() / "photo.jpg")


@pytest.mark.parametrize("field, value, words", [
    ("crop_a", [0, 0, 10], "4 integers"),
    ("crop_a", "0,0,10,10", "4 integers"),
    ("crop_b", [0, 0, 10.5, 10], "integers"),
    ("crop_b", [0, 0, True, 10], "integers"),
    ("crop_a", [-1, 0, 10, 10], "non-negative"),
    ("crop_a", [10, 0, 10, 10], "left < right"),
    ("crop_b", [0, 20, 10, 5], "top < bottom"),
    ("preference", 3, "must be 1"),
    ("preference", "1", "must be 1"),
    ("preference", True, "must be 1"),
    ("image", "", "non-empty"),
    ("image", 7, "non-empty"),
    ("id", "", "non-empty"),
    ("id", 12, "non-empty"),
])
def test_each_bad_field_names_file_pair_and_field(tmp_path, field, value, words):
    path = _write(tmp_path, _doc(_good(id="ok"), _good(**{"id": "bad", field: value})))
    with pytest.raises(PairsFormatError) as ei:
        load_pairs(path)
    e, msg = ei.value, str(ei.value)
    assert str(path) in msg and "pair #1" in msg and repr(field) in msg and words in msg
    assert (e.index, e.field) == (1, field)
    if field != "id":
        assert "'bad'" in msg and e.pair_id == "bad"


@pytest.mark.parametrize("field", ["image", "crop_a", "crop_b"])
def test_missing_field(tmp_path, field):
    pair = _good(id="q")
    del pair[field]
    with pytest.raises(PairsFormatError, match=rf"pair #0 \(id 'q'\) field '{field}': is missing"):
        load_pairs(_write(tmp_path, _doc(pair)))


@pytest.mark.parametrize("doc, words", [
    ([], "top level must be a JSON object"),
    ({"pairs": []}, "'version' is missing"),
    ({"version": 2, "pairs": []}, "reads version 1"),
    ({"version": True, "pairs": []}, "reads version 1"),
    ({"version": 1}, "'pairs' is missing"),
    ({"version": 1, "pairs": {}}, "must be a list"),
    ({"version": 1, "pairs": [5]}, "pair #0: must be a JSON object"),
])
def test_bad_document_structure(tmp_path, doc, words):
    path = _write(tmp_path, doc)
    with pytest.raises(PairsFormatError, match=words) as ei:
        load_pairs(path)
    assert str(path) in str(ei.value)


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path, _doc(_good(id="x"), _good(id="y"), _good(id="x", crop_a=[1, 1, 5, 5])))
    with pytest.raises(PairsFormatError, match=r"pair #2 \(id 'x'\) field 'id': duplicate id, already used by pair #0"):
        load_pairs(path)


def test_truncated_file_names_file_and_position(tmp_path):
    full = json.dumps(_doc(*[_good(id=f"p{i}") for i in range(20)]), indent=1)
    for cut in (len(full) // 3, len(full) - 2):
        path = _write(tmp_path, full[:cut], name=f"cut{cut}.json")
        with pytest.raises(PairsFormatError) as ei:
            load_pairs(path)
        msg = str(ei.value)
        assert str(path) in msg and "line " in msg and "column" in msg
        assert "truncated" in msg


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_doc(_good())).encode())
    assert load_pairs(path)[0].id == "p1"


def test_empty_binary_and_missing_files(tmp_path):
    with pytest.raises(PairsFormatError, match="empty"):
        load_pairs(_write(tmp_path, "", "empty.json"))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PairsFormatError, match="not UTF-8"):
        load_pairs(binary)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_pairs(tmp_path / "nope.json")


def test_check_images(tmp_path):
    (tmp_path / "there.jpg").write_bytes(b"x")
    path = _write(tmp_path, _doc(_good(id="a", image="there.jpg"), _good(id="b", image="gone.jpg")))
    assert len(load_pairs(path)) == 2
    with pytest.raises(PairsFormatError, match=r"pair #1 \(id 'b'\) field 'image'.*gone.jpg does not exist"):
        load_pairs(path, check_images=True)


def test_missing_id_is_derived_from_content(tmp_path):
    path = _write(tmp_path, _doc({"image": "a.jpg", "crop_a": [0, 0, 4, 4], "crop_b": [1, 1, 5, 5]}))
    (pair,) = load_pairs(path)
    assert pair.id == pair_id("a.jpg", (0, 0, 4, 4), (1, 1, 5, 5)) and pair.preference is None


def test_pair_id_is_deterministic_and_order_sensitive():
    a, b = (0, 0, 10, 10), (2, 2, 30, 30)
    assert pair_id("/x/p.jpg", a, b) == pair_id("/x/p.jpg", list(a), list(b))
    assert pair_id("/x/p.jpg", a, b) != pair_id("/x/p.jpg", b, a)  # answers refer to the A/B order
    assert pair_id("/x/p.jpg", a, b) != pair_id("/x/q.jpg", a, b)
    # Same result in another process (no per-process hash seed involved).
    out = subprocess.run([sys.executable, "-c", "from rlhf.pairs import pair_id;"
                          "print(pair_id('/x/p.jpg', (0,0,10,10), (2,2,30,30)))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == pair_id("/x/p.jpg", a, b)


def test_round_trip_keeps_extra_keys_and_order(tmp_path):
    src = _doc(_good(id="a", preference=2, policy="bootstrap", scores={"a": 5.5, "b": 6.25}),
               _good(id="b", note=None, crop_a=[3, 4, 50, 60]))
    path = _write(tmp_path, src)
    pairs = load_pairs(path)
    assert pairs[0].extra == {"policy": "bootstrap", "scores": {"a": 5.5, "b": 6.25}}
    assert pairs[1].extra == {"note": None}
    out = tmp_path / "copy.json"
    save_pairs(out, pairs, relative_to=tmp_path)
    again = json.loads(out.read_text())
    assert again == src  # relative image written back relative, extras and order intact
    assert load_pairs(out) == pairs


def test_save_paths_relative_only_inside_folder(tmp_path):
    inside = str(tmp_path / "photos" / "in.jpg")
    outside = "/somewhere/else/out.jpg"
    pairs = [Pair("a", inside, (0, 0, 2, 2), (0, 0, 3, 3)), Pair("b", outside, (0, 0, 2, 2), (0, 0, 3, 3))]
    out = tmp_path / "p.json"
    save_pairs(out, pairs, relative_to=tmp_path)
    images = [p["image"] for p in json.loads(out.read_text())["pairs"]]
    assert images == ["photos/in.jpg", outside]
    assert [p.image for p in load_pairs(out)] == [inside, outside]
    save_pairs(out, pairs)  # default: as given (absolute)
    assert [p["image"] for p in json.loads(out.read_text())["pairs"]] == [inside, outside]
    with pytest.raises(ValueError, match="folder"):
        save_pairs(out, pairs, relative_to=tmp_path / "photos")


def test_save_accepts_numpy_ints_and_refuses_bad_pairs(tmp_path):
    np = pytest.importorskip("numpy")
    out = tmp_path / "p.json"
    save_pairs(out, [Pair("a", "/i.jpg", tuple(np.array([0, 0, 5, 5])), (0, 0, 6, 6), 1,
                          {"score": np.float32(0.5)})])
    (p,) = load_pairs(out)
    assert p.crop_a == (0, 0, 5, 5) and p.extra == {"score": 0.5}
    before = out.read_bytes()
    with pytest.raises(PairsFormatError, match=r"pair #1 \(id 'bad'\) field 'crop_b'"):
        save_pairs(out, [p, Pair("bad", "/i.jpg", (0, 0, 5, 5), (9, 0, 6, 6))])
    with pytest.raises(PairsFormatError, match="field 'preference'"):
        save_pairs(out, [Pair("bad", "/i.jpg", (0, 0, 5, 5), (0, 0, 6, 6), 7)])
    assert out.read_bytes() == before  # a refused save leaves the old file untouched


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    out = tmp_path / "p.json"
    good = [Pair("a", "/i.jpg", (0, 0, 5, 5), (0, 0, 6, 6))]
    save_pairs(out, good)
    before = out.read_bytes()
    with pytest.raises(TypeError):
        save_pairs(out, [Pair("a", "/i.jpg", (0, 0, 5, 5), (0, 0, 6, 6), None, {"x": object()})])
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p.json"]  # no temp file left behind


def test_atomic_save_survives_a_kill_mid_write(tmp_path):
    """A writer killed in the middle of saving (here: SIGKILL while the temp file is half written)
    leaves the previous complete file in place, never a truncated one."""
    out = tmp_path / "p.json"
    save_pairs(out, [Pair(f"old{i}", "/i.jpg", (0, 0, 5, 5), (0, 0, 6, 6)) for i in range(3)])
    before = out.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal
        import rlhf.pairs as rp
        real_fsync = os.fsync
        def die(fd):  # the temp file holds the new text but has not been renamed yet
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        pairs = [rp.Pair(f"new{{i}}", "/i.jpg", (0, 0, 5, 5), (0, 0, 6, 6)) for i in range(5000)]
        rp.save_pairs({str(out)!r}, pairs)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert out.read_bytes() == before
    assert [p.id for p in load_pairs(out)] == ["old0", "old1", "old2"]
