"""The preference store: one SQLite file holding the crop pairs and everyone's answers.

It is the single source of truth while people annotate; pairs JSON files are its import/export
format (``rlhf.pairs``). The file itself (schema, WAL, durable short transactions that work across
threads and processes) is ``rlhf.store_sqlite``: ``answer`` returns only once the answer is on disk.

Answers: each annotator has at most one current answer per pair — the latest by time; every
answer ever given is also kept (``answers(history=True)``), so a changed mind stays visible.

Consensus (``pairs(annotator=None)``, ``export_json(annotator=None)``): each annotator's current
answer is one vote; the choice with the most votes wins; a tie between the top choices gives
0 (no preference). So {1, 1, 2} -> 1, {1, 2} -> 0, {1, 0} -> 0, {0, 0, 2} -> 0. Simulated
annotators (names ``simulated:...``) vote like anyone else: name an annotator to train on one
person's taste.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhf.pairs import (
    CHOICES,
    Pair,
    PairsFormatError,
    load_pairs,
    save_pairs,
    validate_box,
)
from rlhf.store_sqlite import (
    BUSY_TIMEOUT_S,
    StoreError,
    StoreFile,
    check_store_path,
    is_store_file,
)


@dataclass(frozen=True)
class Answer:
    """One annotator's answer to one pair; ``timestamp`` in Unix seconds, ``seconds`` time taken."""

    pair_id: str
    annotator: str
    choice: int
    seconds: float | None
    timestamp: float

    def to_json(self) -> dict[str, Any]:
        return {"annotator": self.annotator, "choice": self.choice, "seconds": self.seconds,
                "timestamp": self.timestamp}


class UnknownPairError(KeyError):
    """No pair with this id in the store."""

    def __init__(self, path: str | Path, pair_id: str):
        self.path = str(path)
        self.pair_id = pair_id
        super().__init__(pair_id)

    def __str__(self) -> str:
        return f"{self.path}: no pair with id {self.pair_id!r}"


def consensus(choices: Iterable[int]) -> int | None:
    """Majority of the choices; a tie between the top choices -> 0; no choices -> None."""
    counts = Counter(choices).most_common()
    if not counts:
        return None
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return 0
    return counts[0][0]


def _check_annotator(annotator: Any) -> str:
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError(f"annotator must be a non-empty name, got {annotator!r}")
    return annotator.strip()


def _check_choice(choice: Any) -> int:
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in CHOICES:
        raise ValueError(f"choice must be 1 (A better), 2 (B better) or 0 (no preference), got {choice!r}")
    return int(choice)


def _check_seconds(seconds: Any) -> float | None:
    if seconds is None:
        return None
    try:
        s = float(seconds)
    except (TypeError, ValueError) as e:
        raise ValueError(f"seconds must be a number or None, got {seconds!r}") from e
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
    return s


class PreferenceStore:
    """Pairs and answers in one SQLite file (created if missing). Safe across threads and processes."""

    def __init__(self, path: str | Path, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser().resolve()
        self.busy_timeout_s = float(busy_timeout_s)
        check_store_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = StoreFile(self.path, self.busy_timeout_s)
        self._file.init_schema()

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r})"

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection whose statements run in one read transaction (one consistent snapshot)."""
        with self._file.read() as con:
            yield con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; the write lock is taken at BEGIN so it can wait, not fail."""
        with self._file.write() as con:
            yield con

    # -- pairs -------------------------------------------------------------------------------
    @staticmethod
    def _pair_from_row(row: Sequence[Any], preference: int | None = None) -> Pair:
        pid, image, a, b, extra = row[:5]
        return Pair(pid, image, tuple(json.loads(a)), tuple(json.loads(b)), preference,
                    json.loads(extra))

    def _validated(self, pairs: Iterable[Pair]) -> list[Pair]:
        out = []
        for i, p in enumerate(pairs):
            if not isinstance(p, Pair):
                raise TypeError(f"add_pairs: item #{i} is a {type(p).__name__}, not a Pair")
            boxes = []
            for key in ("crop_a", "crop_b"):
                box = validate_box(getattr(p, key))
                if isinstance(box, str):
                    raise PairsFormatError(self.path, f"not added: {box}", i, p.id, key)
                boxes.append(box)
            if not isinstance(p.image, str) or not Path(p.image).is_absolute():
                raise PairsFormatError(self.path, f"not added: must be an absolute path, got {p.image!r}",
                                       i, p.id, "image")
            if not isinstance(p.id, str) or not p.id:
                raise PairsFormatError(self.path, f"not added: bad id {p.id!r}", i, None, "id")
            out.append(replace(p, crop_a=boxes[0], crop_b=boxes[1]))  # plain ints, whatever came in
        return out

    def add_pairs(self, pairs: Iterable[Pair], annotator: str | None = None) -> int:
        """Add pairs in order; returns how many were new (known ids are ignored).

        A known id whose boxes or image file name differ from the stored pair is refused (nothing
        is added): the same id must mean the same comparison, or answers would be misattributed.
        With ``annotator``, non-null ``preference`` values are recorded as that annotator's answers.
        """
        items = self._validated(pairs)
        who = _check_annotator(annotator) if annotator is not None else None
        now = time.time()
        with self._write() as con:
            added = self._insert_pairs(con, items, now)
            for p in items:
                if who is not None and p.preference is not None:
                    self._record(con, p.id, who, _check_choice(p.preference), None, now)
        return added

    def _insert_pairs(self, con: sqlite3.Connection, items: list[Pair], now: float) -> int:
        added = 0
        for p in items:
            a, b = json.dumps(list(p.crop_a)), json.dumps(list(p.crop_b))
            row = con.execute("SELECT image, crop_a, crop_b FROM pairs WHERE id = ?", (p.id,)).fetchone()
            if row is None:
                con.execute("INSERT INTO pairs (id, image, crop_a, crop_b, extra, added) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (p.id, p.image, a, b, json.dumps(p.extra, default=_plain), now))
                added += 1
            elif (row[1], row[2]) != (a, b) or Path(row[0]).name != Path(p.image).name:
                # Raising rolls the whole transaction back: nothing of this batch is kept.
                raise StoreError(f"{self.path}: pair id {p.id!r} already holds a different pair "
                                 f"({row[0]} {row[1]} {row[2]}) than the one given "
                                 f"({p.image} {a} {b}); nothing was added")
        return added

    def get(self, pair_id: str) -> Pair:
        """The pair (``preference`` None); raises UnknownPairError."""
        with self._read() as con:
            row = con.execute("SELECT id, image, crop_a, crop_b, extra FROM pairs WHERE id = ?",
                              (pair_id,)).fetchone()
        if row is None:
            raise UnknownPairError(self.path, pair_id)
        return self._pair_from_row(row)

    def __len__(self) -> int:
        with self._read() as con:
            return int(con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])

    def pair_ids(self) -> list[str]:
        """All pair ids in insertion order."""
        with self._read() as con:
            return [r[0] for r in con.execute("SELECT id FROM pairs ORDER BY seq")]

    def pairs(self, answered: bool | None = None, annotator: str | None = None) -> list[Pair]:
        """Pairs in insertion order, ``preference`` filled in.

        With ``annotator``: preference is that annotator's current answer; ``answered`` True/False
        keeps the pairs they did/did not answer. Without: preference is the consensus (module doc)
        and ``answered`` refers to anyone's answer. ``answered=None`` returns every pair.
        """
        with self._read() as con:
            rows = con.execute("SELECT id, image, crop_a, crop_b, extra FROM pairs ORDER BY seq").fetchall()
            if annotator is not None:
                votes = {pid: [c] for pid, c in con.execute(
                    "SELECT pair_id, choice FROM answers WHERE annotator = ?", (annotator,))}
            else:
                votes = {}
                for pid, c in con.execute("SELECT pair_id, choice FROM answers"):
                    votes.setdefault(pid, []).append(c)
        out = []
        for row in rows:
            v = votes.get(row[0])
            if answered is True and not v or answered is False and v:
                continue
            out.append(self._pair_from_row(row, consensus(v) if v else None))
        return out

    def next_unanswered(self, annotator: str, exclude: Iterable[str] = ()) -> Pair | None:
        """The first pair (insertion order) this annotator has not answered, skipping ``exclude``."""
        skip = list(exclude)
        sql = ("SELECT id, image, crop_a, crop_b, extra FROM pairs p WHERE NOT EXISTS "
               "(SELECT 1 FROM answers a WHERE a.pair_id = p.id AND a.annotator = ?)")
        if skip:
            sql += f" AND p.id NOT IN ({','.join('?' * len(skip))})"
        with self._read() as con:
            row = con.execute(sql + " ORDER BY p.seq LIMIT 1", (annotator, *skip)).fetchone()
        return None if row is None else self._pair_from_row(row)

    def image_paths(self) -> set[str]:
        """Every image any pair references (the annotator serves only these files)."""
        with self._read() as con:
            return {r[0] for r in con.execute("SELECT DISTINCT image FROM pairs")}

    # -- answers -----------------------------------------------------------------------------
    def _record(self, con: sqlite3.Connection, pid: str, annotator: str, choice: int,
                seconds: float | None, timestamp: float) -> None:
        con.execute("INSERT INTO history (pair_id, annotator, choice, seconds, timestamp) "
                    "VALUES (?, ?, ?, ?, ?)", (pid, annotator, choice, seconds, timestamp))
        # Latest by time wins, so importing an old answer never overrides a newer one.
        con.execute("INSERT INTO answers (pair_id, annotator, choice, seconds, timestamp) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pair_id, annotator) DO UPDATE SET "
                    "choice = excluded.choice, seconds = excluded.seconds, timestamp = excluded.timestamp "
                    "WHERE excluded.timestamp >= answers.timestamp",
                    (pid, annotator, choice, seconds, timestamp))

    def answer(self, pair_id: str, annotator: str, choice: int, seconds: float | None = None) -> Answer:
        """Record an answer (replacing this annotator's earlier one); durable once this returns."""
        return self.answer_many([(pair_id, annotator, choice, seconds)])[0]

    def answer_many(self, items: Iterable[tuple[str, str, int, float | None]]) -> list[Answer]:
        """Record several (pair_id, annotator, choice, seconds) answers in one transaction."""
        checked = [(pid, _check_annotator(who), _check_choice(c), _check_seconds(s))
                   for pid, who, c, s in items]
        now = time.time()
        out = []
        with self._write() as con:
            for pid, who, c, s in checked:
                if con.execute("SELECT 1 FROM pairs WHERE id = ?", (pid,)).fetchone() is None:
                    raise UnknownPairError(self.path, pid)
                self._record(con, pid, who, c, s, now)
                out.append(Answer(pid, who, c, s, now))
        return out

    def answer_of(self, pair_id: str, annotator: str) -> int | None:
        """This annotator's current answer to the pair, or None."""
        with self._read() as con:
            row = con.execute("SELECT choice FROM answers WHERE pair_id = ? AND annotator = ?",
                              (pair_id, annotator)).fetchone()
        return None if row is None else int(row[0])

    def answers(self, pair_id: str | None = None, annotator: str | None = None,
                history: bool = False) -> list[Answer]:
        """Current answers (or, with ``history``, every answer ever given) in the order given."""
        table, order = ("history", "n") if history else ("answers", "timestamp, rowid")
        where, args = [], []
        if pair_id is not None:
            where.append("pair_id = ?")
            args.append(pair_id)
        if annotator is not None:
            where.append("annotator = ?")
            args.append(annotator)
        sql = f"SELECT pair_id, annotator, choice, seconds, timestamp FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as con:
            return [Answer(*r) for r in con.execute(sql + f" ORDER BY {order}", args)]

    def annotators(self) -> list[str]:
        """Everyone who has answered, sorted by name."""
        with self._read() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT annotator FROM answers ORDER BY annotator")]

    def progress(self, annotator: str) -> tuple[int, int]:
        """(pairs this annotator answered, pairs in the store)."""
        with self._read() as con:
            total = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            done = con.execute("SELECT COUNT(*) FROM answers WHERE annotator = ?", (annotator,)).fetchone()[0]
        return int(done), int(total)

    # -- JSON exchange -----------------------------------------------------------------------
    def import_json(self, path: str | Path, annotator: str = "import") -> int:
        """Add a pairs file's pairs; returns how many were new. All or nothing.

        A pair's ``annotations`` list (as written by ``export_json``) is imported answer by answer
        under the annotators it names, with their times; otherwise a non-null ``preference`` is
        recorded as ``annotator``'s answer. Re-importing the same file adds nothing twice.
        """
        who = _check_annotator(annotator)
        pairs = self._validated(load_pairs(path))
        now = time.time()
        # (pair, annotator, choice, seconds, timestamp, from the annotations list?)
        records: list[tuple[str, str, int, float | None, float, bool]] = []
        for i, p in enumerate(pairs):
            notes = p.extra.pop("annotations", None)
            if notes is None:
                if p.preference is not None:
                    records.append((p.id, who, p.preference, None, now, False))
                continue
            if not isinstance(notes, list):
                raise PairsFormatError(path, "must be a list of answers", i, p.id, "annotations")
            for j, note in enumerate(notes):
                try:
                    records.append((p.id, _check_annotator(note["annotator"]), _check_choice(note["choice"]),
                                    _check_seconds(note.get("seconds")), float(note["timestamp"]), True))
                except (KeyError, TypeError, ValueError) as e:
                    raise PairsFormatError(path, f"answer #{j} is malformed ({e}): {note!r}",
                                           i, p.id, "annotations") from e
        with self._write() as con:
            added = self._insert_pairs(con, pairs, now)
            for pid, a, c, s, ts, timed in records:
                if timed:
                    # An exported answer carries its own time: the same one twice is a re-import.
                    dup = con.execute("SELECT 1 FROM history WHERE pair_id = ? AND annotator = ? AND "
                                      "choice = ? AND timestamp = ?", (pid, a, c, ts)).fetchone()
                else:
                    # A bare preference has no time: skip it when it is already the current answer.
                    dup = con.execute("SELECT 1 FROM answers WHERE pair_id = ? AND annotator = ? AND "
                                      "choice = ?", (pid, a, c)).fetchone()
                if dup is None:
                    self._record(con, pid, a, c, s, ts)
        return added

    def export_json(self, path: str | Path, annotator: str | None = None) -> Path:
        """Write every pair in the shared format (atomically).

        ``preference`` is ``annotator``'s current answer (null if none) or, without one, the
        consensus; the extra key ``annotations`` lists every annotator's current answer. Images
        under the output's folder are written relative to it, others absolute.
        """
        out = Path(path)
        pairs = self.pairs(annotator=annotator)
        notes: dict[str, list[dict[str, Any]]] = {}
        for a in self.answers():
            notes.setdefault(a.pair_id, []).append(a.to_json())
        for p in pairs:
            p.extra = {k: v for k, v in p.extra.items() if k != "annotations"}
            p.extra["annotations"] = notes.get(p.id, [])
        return save_pairs(out, pairs, relative_to=out.resolve().parent)


def _plain(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def load_preference_data(path: str | Path, annotator: str | None = None,
                         answered_only: bool = True) -> list[Pair]:
    """Pairs with preferences from either a store (.sqlite/.db) or a pairs JSON file.

    For trainers that should not care which one they were given. ``annotator`` picks one
    person's answers (store answers, or a JSON file's ``annotations``); without it the store's
    consensus or the JSON's ``preference`` is used. ``answered_only`` drops pairs without one.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such store or pairs file")
    if is_store_file(p):
        return PreferenceStore(p).pairs(answered=True if answered_only else None, annotator=annotator)
    pairs = load_pairs(p)
    if annotator is not None:
        for i, pair in enumerate(pairs):
            notes = pair.extra.get("annotations")
            if notes is None:
                continue  # a plain file: its preference is whoever answered it
            if not isinstance(notes, list):
                raise PairsFormatError(p, "must be a list of answers", i, pair.id, "annotations")
            mine = [n for n in notes if isinstance(n, dict) and n.get("annotator") == annotator]
            mine.sort(key=lambda n: n.get("timestamp", 0))
            try:
                pair.preference = _check_choice(mine[-1].get("choice")) if mine else None
            except ValueError as e:
                raise PairsFormatError(p, str(e), i, pair.id, "annotations") from e
    if answered_only:
        pairs = [q for q in pairs if q.preference is not None]
    return pairs


__all__ = [
    "Answer", "PreferenceStore", "StoreError", "UnknownPairError", "consensus", "is_store_file",
    "load_preference_data",
]
