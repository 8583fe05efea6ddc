"""The preference store's SQLite file: its schema, the header check, connections and transactions.

Built for an annotator app and a trainer using one file at once:

- WAL journal: readers never block the writer and the writer never blocks readers.
- ``synchronous=FULL``: a write returns only after it is in the WAL on disk, so an acknowledged
  answer survives a killed process (and, with an honest disk, a power cut).
- A fresh connection per call, closed at its end: no connection is shared between threads or
  processes (Gradio runs handlers in worker threads; forked trainers inherit nothing open), so no
  lock of our own is needed. Opening one costs well under a millisecond.
- Writes take the write lock up front (``BEGIN IMMEDIATE``) and are short; a second writer waits
  up to ``busy_timeout`` instead of failing with "database is locked".
SQLite over a network filesystem (NFS, SMB) does not support WAL: keep the file on a local disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    crop_a TEXT NOT NULL,
    crop_b TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    pair_id TEXT NOT NULL REFERENCES pairs(id),
    annotator TEXT NOT NULL,
    choice INTEGER NOT NULL CHECK (choice IN (0, 1, 2)),
    seconds REAL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (pair_id, annotator)
);
CREATE INDEX IF NOT EXISTS answers_by_annotator ON answers (annotator, pair_id);
CREATE TABLE IF NOT EXISTS history (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    choice INTEGER NOT NULL,
    seconds REAL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_pair ON history (pair_id, annotator);
"""


class StoreError(ValueError):
    """A store file that cannot be used, or a request it cannot satisfy; names the file."""


def check_store_path(path: Path) -> None:
    """Refuse a path that cannot hold a store (a pairs JSON file, a folder, another kind of file)."""
    if path.suffix.lower() == ".json":
        raise StoreError(f"{path}: this is a pairs JSON file, not a store; create a store "
                         "(e.g. prefs.sqlite) and call import_json on it")
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a store file")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != _SQLITE_MAGIC:
                raise StoreError(f"{path}: not an SQLite preference store (wrong header); "
                                 "nothing was changed")


def is_store_file(path: str | Path) -> bool:
    """True for an existing SQLite file, or a not-yet-existing path with a store suffix."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(16) == _SQLITE_MAGIC
    return p.suffix.lower() in SQLITE_SUFFIXES



class StoreFile:
    """Connections and transactions on one store file; creates the schema when missing."""

    def __init__(self, path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = path
        self.busy_timeout_s = float(busy_timeout_s)

    def connect(self) -> sqlite3.Connection:
        """A new autocommit connection that waits up to busy_timeout_s for the write lock; close it."""
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open ({e})") from e
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            con.close()
            raise StoreError(f"{self.path}: not a usable SQLite database ({e})") from e
        return con

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection whose statements run in one read transaction (one consistent snapshot)."""
        with closing(self.connect()) as con:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; the write lock is taken at BEGIN so it can wait, not fail."""
        with closing(self.connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def init_schema(self) -> None:
        """Switch the file to WAL and create the tables if missing; refuse another schema version."""
        with closing(self.connect()) as con:
            # Switching to WAL needs a moment alone with the file; another process opening the
            # store at the same instant can make it report busy without waiting, so retry.
            deadline = time.monotonic() + self.busy_timeout_s
            while True:
                try:
                    mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                        raise StoreError(f"{self.path}: cannot switch to WAL mode ({e})") from e
                    time.sleep(0.05)
                except sqlite3.DatabaseError as e:
                    raise StoreError(f"{self.path}: not a usable SQLite database ({e})") from e
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a "
                                 "network filesystem? Keep the store on a local disk")
        with self.write() as con:
            # Statement by statement: executescript would commit the open transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: store schema version {row[0]}, this program reads "
                                 f"{SCHEMA_VERSION}")
