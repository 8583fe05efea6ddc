"""Agreement between annotators (hand-computed kappas) and the agreement/export commands."""

from __future__ import annotations

import json

import pytest

from rlhf.agreement import (
    cohen_kappa,
    compute_agreement,
    export_main,
    fleiss_kappa,
    main,
    percent_agreement,
    store_agreement,
)
from rlhf.pairs import Pair, load_pairs, pair_id
from rlhf.store import Answer, PreferenceStore, StoreError, consensus

# Two raters, ten pairs. Agreements at positions 1,3,4,5,6,8,10 -> po = 0.7.
# A's answers: 0 x1, 1 x5, 2 x4; B's: 0 x2, 1 x4, 2 x4 -> pe = .1*.2 + .5*.4 + .4*.4 = 0.38.
# kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62 = 0.516129...
A = [1, 1, 2, 2, 0, 1, 2, 1, 1, 2]
B = [1, 2, 2, 2, 0, 1, 1, 1, 0, 2]


def test_cohen_kappa_hand_computed():
    assert percent_agreement(A, B) == pytest.approx(0.7)
    assert cohen_kappa(A, B) == pytest.approx(0.32 / 0.62)
    assert cohen_kappa(A, A) == pytest.approx(1.0)
    assert cohen_kappa([1, 2, 1, 2], [2, 1, 2, 1]) == pytest.approx(-1.0)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # chance explains all: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="length"):
        percent_agreement([1], [1, 2])


def test_cohen_kappa_matches_sklearn():
    import numpy as np
    from sklearn.metrics import cohen_kappa_score
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 3, 30).tolist()
        b = [x if rng.random() < 0.6 else int(rng.integers(0, 3)) for x in a]
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_fleiss_kappa_hand_computed():
    # P_i: [1,1,1] -> 1; [1,2,2] -> 1/3; [0,1,2] -> 0; [2,2,2] -> 1; mean 7/12.
    # category shares over 12 ratings: 0: 1/12, 1: 5/12, 2: 6/12 -> Pe = 62/144.
    # kappa = (7/12 - 62/144) / (1 - 62/144) = 22/82 = 11/41.
    items = [[1, 1, 1], [1, 2, 2], [0, 1, 2], [2, 2, 2]]
    assert fleiss_kappa(items) == pytest.approx(11 / 41)
    assert fleiss_kappa(items + [[1]]) == pytest.approx(11 / 41)  # single ratings do not count
    assert fleiss_kappa([[1]]) is None


def _answers(pairs_choices: dict[str, dict[str, int]]) -> list[Answer]:
    return [Answer(pid, who, c, None, float(i)) for i, (pid, by) in enumerate(pairs_choices.items())
            for who, c in by.items()]


def test_report_pairwise_per_pair_and_fleiss():
    data = {f"p{i}": {"alice": a, "bob": b} for i, (a, b) in enumerate(zip(A, B, strict=True))}
    data["p0"]["carol"] = 1
    data["p1"]["carol"] = 2
    data["p2"]["carol"] = 1
    data["only_alice"] = {"alice": 2}
    rep = compute_agreement(_answers(data), n_pairs=12)
    assert rep.annotators == ["alice", "bob", "carol"]
    ab = rep.pairwise[0]
    assert (ab.annotator_a, ab.annotator_b, ab.n) == ("alice", "bob", 10)
    assert ab.agreement == pytest.approx(0.7) and ab.kappa == pytest.approx(0.32 / 0.62)
    # decisive: drop positions 5 (0/0) and 9 (1/0) -> 8 pairs, 6 agree.
    assert (ab.decisive_n, ab.decisive_agreement) == (8, pytest.approx(0.75))
    ac = rep.pairwise[1]
    assert (ac.n, ac.agreement) == (3, pytest.approx(1 / 3))
    by_id = {p.pair_id: p for p in rep.per_pair}
    assert set(by_id) == {f"p{i}" for i in range(10)}
    assert by_id["p1"].choices == {"alice": 1, "bob": 2, "carol": 2}
    assert by_id["p1"].agreement == pytest.approx(1 / 3) and by_id["p1"].consensus == 2
    assert by_id["p0"].agreement == 1.0
    items = [list(p.choices.values()) for p in rep.per_pair]
    assert rep.fleiss_kappa == pytest.approx(fleiss_kappa(items))
    assert rep.mean_pair_agreement == pytest.approx(sum(p.agreement for p in rep.per_pair) / 10)
    text = rep.table(per_pair=True)
    assert "alice" in text and "0.516" in text and "70.0%" in text
    assert "Fleiss' kappa" in text and "p1" in text
    only = compute_agreement(_answers(data), annotators=["alice", "bob"])
    assert only.annotators == ["alice", "bob"] and only.fleiss_kappa is None and len(only.pairwise) == 1


def test_latest_answer_counts():
    answers = [Answer("p", "a", 1, None, 1.0), Answer("p", "b", 2, None, 1.0), Answer("p", "a", 2, None, 5.0)]
    rep = compute_agreement(answers)
    assert rep.pairwise[0].agreement == 1.0


def _store(tmp_path) -> PreferenceStore:
    s = PreferenceStore(tmp_path / "prefs.sqlite")
    img = str(tmp_path / "photo.jpg")
    pairs = [Pair(pair_id(img, (0, 0, 10 + i, 10), (0, 0, 20, 20)), img, (0, 0, 10 + i, 10), (0, 0, 20, 20))
             for i in range(10)]
    s.add_pairs(pairs)
    for p, a, b in zip(pairs, A, B, strict=True):
        s.answer(p.id, "alice", a)
        s.answer(p.id, "simulated:tight", b)
    return s


def test_store_agreement_and_cli(tmp_path, capsys):
    s = _store(tmp_path)
    rep = store_agreement(s)
    assert rep.n_pairs == 10 and rep.pairwise[0].kappa == pytest.approx(0.32 / 0.62)
    assert main(["--store", str(s.path)]) == 0
    out = capsys.readouterr().out
    assert "simulated:tight" in out and "SIMULATED" in out and "0.516" in out and "(10 pairs)" in out
    assert main(["--store", str(s.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pairwise"][0]["kappa"] == pytest.approx(0.32 / 0.62)
    # The same from an exported pairs file.
    out_json = tmp_path / "exp.json"
    s.export_json(out_json)
    assert main(["--store", str(out_json), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairwise"] == doc["pairwise"]
    with pytest.raises(FileNotFoundError, match="missing.sqlite: no such store"):
        main(["--store", str(tmp_path / "missing.sqlite")])
    assert not (tmp_path / "missing.sqlite").exists()  # asking never creates an empty store
    with pytest.raises(ValueError, match="--store is required"):
        main([])


def test_export_cli(tmp_path, capsys):
    s = _store(tmp_path)
    out = tmp_path / "out" / "pairs.json"
    assert export_main(["--store", str(s.path), "--out", str(out), "--annotator", "alice"]) == 0
    assert "exported 10 pairs (10 answered by alice)" in capsys.readouterr().out
    pairs = load_pairs(out)
    assert [p.preference for p in pairs] == A
    assert all(len(p.extra["annotations"]) == 2 for p in pairs)
    assert export_main(["--store", str(s.path), "--out", str(out)]) == 0
    assert [p.preference for p in load_pairs(out)] == [consensus([a, b]) for a, b in zip(A, B, strict=True)]
    with pytest.raises(StoreError, match="no answers by 'zed'"):
        export_main(["--store", str(s.path), "--out", str(out), "--annotator", "zed"])
    with pytest.raises(ValueError, match="--out"):
        export_main(["--store", str(s.path)])
