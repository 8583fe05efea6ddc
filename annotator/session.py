"""What each key or button does, independent of Gradio: one small state dict per browser session.

The state holds only the session's own facts (who is annotating, which pair is on screen, since
when); pairs and answers live in the store, which is safe to share between threads. Every answer
goes to the store before the screen moves on, so an answer the screen confirmed is on disk.

Each screen has a number, sent back with every answer together with the pair's id: an answer is
taken only for the screen that is still current, so keys typed ahead of the page (before the next
pair appeared) are ignored and counted, never applied to a pair the person did not see. With
logins, the annotator is the login and cannot be renamed.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.render import PairView, PhotoCache, render_pair
from rlhf.pairs import CHOICE_NAMES, CHOICES, Pair
from rlhf.store import PreferenceStore, StoreError

MAX_NAME_LEN = 40
_NAME_RE = re.compile(r"^[\w .@'+-]+$")


class InvalidNameError(ValueError):
    """An annotator name that cannot be used (the message says why)."""


def clean_name(text: Any) -> str:
    """An annotator name: trimmed, inner whitespace collapsed, 1-40 letters/digits/ .@'+-_ ."""
    name = " ".join(str(text or "").split())
    if not name:
        raise InvalidNameError("Please type your name (it keeps your answers apart from other people's).")
    if len(name) > MAX_NAME_LEN:
        raise InvalidNameError(f"Please use at most {MAX_NAME_LEN} characters for your name.")
    if not _NAME_RE.match(name):
        raise InvalidNameError("Please use letters, digits, spaces and . @ ' + - _ only in your name.")
    if name.lower().startswith("simulated:") or name.lower() == "import":
        raise InvalidNameError(f"The name {name!r} is reserved; please choose another.")
    return name


def new_state() -> dict[str, Any]:
    """A fresh session: nobody named yet, nothing on screen."""
    return {"annotator": None, "login": None, "pair_id": None, "shown_pair": None, "shown_at": None,
            "screen": 0, "ignored": 0}


@dataclass
class Screen:
    """Everything one event shows. `pair` is None when there is nothing to show."""

    annotator: str | None
    ask_name: bool = False
    pair: Pair | None = None
    position: int = 0  # 1-based place of the pair in the store's order; 0 = none
    total: int = 0
    done: int = 0
    answer: int | None = None
    view: PairView | None = None
    message: str = ""
    name_error: str = ""
    screen: int = 0  # the screen's number: answers name it, so a stale key is recognised
    ignored: int = 0  # keys this session ignored because they named a screen no longer current


class Controller:
    """The annotator's behaviour over one store; one instance serves every session."""

    def __init__(self, store: PreferenceStore, cache: PhotoCache | None = None,
                 json_path: str | Path | None = None, fixed_annotator: str | None = None):
        self.store = store
        self.cache = cache or PhotoCache()
        self.json_path = Path(json_path) if json_path is not None else None
        self.fixed_annotator = clean_name(fixed_annotator) if fixed_annotator is not None else None

    # -- who -------------------------------------------------------------------------------
    @staticmethod
    def bind_login(state: dict[str, Any], username: str | None) -> None:
        """With logins, every event of a session annotates as its login, whatever it asks."""
        if username:
            state["login"] = username
            state["annotator"] = clean_name(username)

    def _login_refusal(self, state: dict[str, Any]) -> Screen:
        return self.show(state, f"Refused: you are logged in as {state['annotator']}, and your answers "
                                "are saved under your login; the name cannot be changed here. Log in "
                                "as the other person to annotate as them.")

    def start(self, state: dict[str, Any], username: str | None = None,
              remembered: str | None = None) -> Screen:
        """A page (re)load: pick the annotator (the login, if any) and show their first unanswered pair."""
        self.bind_login(state, username)
        who = state.get("annotator") or self.fixed_annotator
        if who is None and remembered:
            who = self._try_name(remembered)
        if who is None:
            return Screen(annotator=None, ask_name=True)
        state["annotator"] = who
        return self._resume(state, "")

    def set_name(self, state: dict[str, Any], name: Any) -> Screen:
        """The name typed on the first visit (or after 'change name'); refused with a login."""
        if state.get("login"):
            return self._login_refusal(state)
        if self.fixed_annotator is not None:
            state["annotator"] = self.fixed_annotator
            return self._resume(state, f"This app annotates as {self.fixed_annotator}.")
        try:
            who = clean_name(name)
        except InvalidNameError as e:
            return Screen(annotator=None, ask_name=True, name_error=str(e))
        state["annotator"] = who
        done, total = self.store.progress(who)
        hello = f"Welcome back, {who}." if done else f"Hello {who}."
        return self._resume(state, hello)

    def change_name(self, state: dict[str, Any]) -> Screen:
        if state.get("login"):
            return self._login_refusal(state)
        if self.fixed_annotator is not None:
            return self.show(state, f"This app annotates as {self.fixed_annotator}.")
        # The screen count goes on, so a key from before the change cannot match a later screen.
        state.update(new_state(), ignored=state.get("ignored", 0), screen=state.get("screen", 0))
        return Screen(annotator=None, ask_name=True)

    @staticmethod
    def _try_name(name: str) -> str | None:
        try:
            return clean_name(name)
        except InvalidNameError:
            return None

    # -- moving ----------------------------------------------------------------------------
    def _resume(self, state: dict[str, Any], message: str) -> Screen:
        who = state["annotator"]
        nxt = self.store.next_unanswered(who)
        if nxt is not None:
            state["pair_id"] = nxt.id
            return self.show(state, message)
        ids = self.store.pair_ids()
        state["pair_id"] = ids[0] if ids else None
        if ids:
            message = (message + " " if message else "") + (
                f"You have answered all {len(ids)} pairs; use ← / → to review or change an answer.")
        return self.show(state, message)

    def move(self, state: dict[str, Any], step: int) -> Screen:
        """Previous (-1) or next (+1) pair in the store's order."""
        if state.get("annotator") is None:
            return Screen(annotator=None, ask_name=True)
        ids = self.store.pair_ids()
        if not ids:
            return self.show(state, "")
        cur = state.get("pair_id")
        if cur not in ids:
            return self._resume(state, "")
        i = ids.index(cur) + step
        if i < 0:
            return self.show(state, "This is the first pair.")
        if i >= len(ids):
            nxt = self.store.next_unanswered(state["annotator"])
            note = "This is the last pair."
            if nxt is not None:
                note += f" Pair {ids.index(nxt.id) + 1} is still unanswered."
            return self.show(state, note)
        state["pair_id"] = ids[i]
        return self.show(state, "")

    # -- answering -------------------------------------------------------------------------
    def choose(self, state: dict[str, Any], choice: int, shown_id: str | None = None,
               shown_screen: int | None = None) -> Screen:
        """Store `choice` for the pair on screen, then show the next pair.

        `shown_id` and `shown_screen` are the pair and screen number the browser displayed when
        the key was pressed. If either is no longer current (the key was typed before the answer
        to an earlier key came back), the key is ignored and counted: it never re-answers the
        pair it named, nor answers a pair the person has not seen. Without them (API callers),
        the session's current pair is answered.
        """
        who = state.get("annotator")
        if who is None:
            return Screen(annotator=None, ask_name=True, name_error="Please type your name first.")
        if choice not in CHOICES:
            return self.show(state, f"Unknown choice {choice!r}; nothing was saved.")
        ids = self.store.pair_ids()
        if shown_id and shown_id not in ids:
            return self.show(state, f"Not saved: the store has no pair {shown_id!r}.")
        target = shown_id or state.get("pair_id")
        if target not in ids:
            return self.show(state, "There is no pair on screen to answer.")
        stale = target != state.get("pair_id") or (
            shown_screen is not None and int(shown_screen) != state.get("screen"))
        if stale:
            state["ignored"] = state.get("ignored", 0) + 1
            return self.show(state, f"Ignored a key ({CHOICE_NAMES[choice]}) pressed for pair "
                                    f"{ids.index(target) + 1} before this screen appeared; nothing was "
                                    "changed. Look at this pair, then press again.")
        pair = self.store.get(target)
        view = self._render(pair)
        if view.error is not None:
            state["pair_id"] = target
            return self.show(state, "Not saved.", view=view)
        seconds = None
        if state.get("pair_id") == target and state.get("shown_at") is not None:
            seconds = max(0.0, time.monotonic() - state["shown_at"])
        try:
            self.store.answer(target, who, choice, seconds)
        except (sqlite3.Error, StoreError, OSError) as e:
            # Stay on the pair: the person sees it was not kept and can press the key again.
            state["pair_id"] = target
            return self.show(state, f"NOT saved — the store could not write the answer ({e}). "
                                    "Press the key again.")
        i = ids.index(target)
        msg = f"Saved: pair {i + 1} → {CHOICE_NAMES[choice]}."
        if i + 1 < len(ids):
            state["pair_id"] = ids[i + 1]
        else:
            nxt = self.store.next_unanswered(who)
            if nxt is not None:
                state["pair_id"] = nxt.id
                msg += f" Back to pair {ids.index(nxt.id) + 1}, the first you have not answered."
            else:
                state["pair_id"] = target
                state["shown_pair"] = None  # the same pair, newly answered: a new screen
        done, total = self.store.progress(who)
        if done == total:
            msg += f" All {total} pairs answered — thank you!"
            if self.json_path is not None:
                msg += " Press S to write them to the pairs file."
        return self.show(state, msg)

    def save(self, state: dict[str, Any]) -> Screen:
        """S: answers are already on disk; with a pairs file, also write it (atomically)."""
        who = state.get("annotator")
        if self.json_path is None:
            msg = "Saved — every answer is stored the moment you give it."
        else:
            try:
                self.store.export_json(self.json_path)
            except (OSError, ValueError) as e:
                msg = (f"Answers are safe in the store, but writing {self.json_path.name} failed: {e}")
            else:
                msg = f"Saved — answers written to {self.json_path.name} (and kept in the store)."
        if who is None:
            return Screen(annotator=None, ask_name=True, name_error=msg)
        return self.show(state, msg)

    # -- showing ---------------------------------------------------------------------------
    def _render(self, pair: Pair) -> PairView:
        return render_pair(self.cache, pair.image, pair.crop_a, pair.crop_b)

    def show(self, state: dict[str, Any], message: str, view: PairView | None = None) -> Screen:
        """The screen for the session's current pair; a new pair gets a new number and timer."""
        who = state.get("annotator")
        if who is None:
            return Screen(annotator=None, ask_name=True)
        done, total = self.store.progress(who)
        pid = state.get("pair_id")
        if total == 0:
            state["pair_id"] = None
            return Screen(annotator=who, total=0, message=(
                message + " " if message else "") + "The store holds no pairs yet: make some with "
                "`photographer pairs`, then reload this page.")
        ids = self.store.pair_ids()
        if pid not in ids:
            pid = ids[0]
            state["pair_id"] = pid
        pair = self.store.get(pid)
        view = view or self._render(pair)
        if view.error is not None:
            message = (message + " " if message else "") + view.error
        if state.get("shown_pair") != pid:
            state["shown_pair"] = pid
            state["screen"] = state.get("screen", 0) + 1
            state["shown_at"] = time.monotonic()
        return Screen(annotator=who, pair=pair, position=ids.index(pid) + 1, total=total, done=done,
                      answer=self.store.answer_of(pid, who), view=view, message=message.strip(),
                      screen=state["screen"], ignored=state.get("ignored", 0))
