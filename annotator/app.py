"""The annotation app: people compare two crops of a photo and say which is better (Gradio).

`photographer annotate --preferences pairs.json` or `--store prefs.sqlite`. Keys: 1 = A better,
2 = B better, 0 = no preference, ← / → = previous / next, S = save. Each answer is written to the
store (SQLite, synchronous) before the next pair appears, so nothing confirmed on screen is lost.

Safety by default: loopback only; another host or a share link needs logins, and each login is
its own annotator; requests naming another host are refused; the browser gets freshly rendered
crops from a private cache folder and no file route serves anything else (annotator/guard.py).
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from annotator.cache import new_cache_dir  # noqa: E402
from annotator.guard import HostPolicy, RequestGuard  # noqa: E402
from annotator.render import PhotoCache  # noqa: E402
from annotator.security import AuthFileError, UnsafeLaunchError, check_exposure, parse_auth  # noqa: E402
from annotator.session import Controller, InvalidNameError, Screen, clean_name, new_state  # noqa: E402
from rlhf.config import parse_config  # noqa: E402
from rlhf.pairs import A_BETTER, B_BETTER, CHOICE_NAMES, NO_PREFERENCE, PairsFormatError  # noqa: E402
from rlhf.store import PreferenceStore, StoreError  # noqa: E402

HERE = Path(__file__).resolve().parent
KEYS_HELP = "Keys: **1** A better · **2** B better · **0** no preference · **←** / **→** previous / next · **S** save"


@dataclass
class AnnotateConfig:
    """Annotate crop pairs in the browser: which of two crops of a photo is better?"""

    preferences: str | None = field(default=None, metadata={
        "help": "pairs JSON file (seed format); answers are kept in <name>.annotations.sqlite beside "
                "it and written back to the JSON on S"})
    store: str | None = field(default=None, metadata={
        "help": "SQLite preference store to annotate (with --preferences: the store to use instead "
                "of the one beside the JSON)"})
    annotator: str | None = field(default=None, metadata={
        "help": "annotate as this name (it also claims the pairs JSON's earlier preferences as "
                "this name's); with --auth each person annotates as their login instead, and this "
                "only names the JSON's earlier preferences; default: asked on the first visit"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "interface to listen on; anything but loopback needs --auth or --auth-file"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    auth: list[str] | None = field(default=None, metadata={
        "help": "user:password (several allowed); prefer --auth-file, command lines are visible to "
                "other users of the machine"})
    auth_file: str | None = field(default=None, metadata={
        "help": "file with one user:password per line ('#' comments allowed); each login is one "
                "annotator"})
    allowed_host: list[str] | None = field(default=None, metadata={
        "help": "extra host name the page may be opened under (several allowed), e.g. the name of "
                "a TLS proxy in front of the app; default: only the address it listens on"})
    share: bool = field(default=False, metadata={
        "help": "also make a public gradio.live link (needs internet and --auth)"})
    image_root: str | None = field(default=None, metadata={
        "help": "if set, only photos inside this folder are shown; pairs pointing elsewhere show "
                "a message instead"})

    def __post_init__(self) -> None:
        if self.preferences is None and self.store is None:
            raise ValueError("give --preferences pairs.json or --store prefs.sqlite")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"--port must be between 1 and 65535, got {self.port}")
        if self.annotator is not None:
            try:
                self.annotator = clean_name(self.annotator)
            except InvalidNameError as e:
                raise ValueError(f"--annotator {self.annotator!r}: {e}") from e


def store_path_for(preferences: str | Path) -> Path:
    """The store kept beside a pairs JSON: pairs.json -> pairs.annotations.sqlite."""
    p = Path(preferences)
    return p.with_name(p.stem + ".annotations.sqlite")


def open_store(cfg: AnnotateConfig) -> tuple[PreferenceStore, Path | None]:
    """The store to annotate, with the pairs JSON's pairs imported into it (idempotent)."""
    json_path = Path(cfg.preferences).expanduser().resolve() if cfg.preferences else None
    path = Path(cfg.store).expanduser() if cfg.store else store_path_for(json_path)
    if cfg.store and not path.exists() and json_path is None:
        raise FileNotFoundError(f"{path}: no such store (make pairs with `photographer pairs`, or "
                                "use --preferences pairs.json)")
    if json_path is not None and not json_path.exists() and not path.exists():
        raise FileNotFoundError(f"{json_path}: no such pairs file")
    store = PreferenceStore(path)
    if json_path is not None:
        if json_path.exists():
            # Earlier answers in the JSON become the named annotator's, so resume skips them.
            store.import_json(json_path, annotator=cfg.annotator or "import")
        elif len(store) == 0:
            raise FileNotFoundError(f"{json_path}: no such pairs file")
        else:
            print(f"note: {json_path} is missing; using the {len(store)} pairs in {store.path}; "
                  "S writes the file again", file=sys.stderr)
    return store, json_path


@dataclass
class _AppParts:
    """What launch() needs besides the Blocks: the page's script/css and the private cache."""

    head: str
    css: str
    cache_dir: Path
    blocked_paths: list[str]


def check_logins(auth: Sequence[tuple[str, str]] | None) -> None:
    """Every login must be usable as an annotator name (it is the name its answers are kept under)."""
    for user, _ in auth or []:
        try:
            clean_name(user)
        except InvalidNameError as e:
            raise AuthFileError(f"login {user!r} cannot be an annotator name: {e}") from e


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|])")


def plain(text: str) -> str:
    """Text from data (names, file names, error messages) shown literally inside Markdown."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _button_variant(screen: Screen, choice: int) -> Any:
    return gr.update(variant="primary" if screen.answer == choice else "secondary")


def _outputs(screen: Screen, state: dict[str, Any]) -> list[Any]:
    """One value per component in build_app's OUT list, in that order."""
    view = screen.view
    if screen.ask_name:
        progress = answer = ""
    elif screen.pair is None:
        progress = f"**{plain(screen.annotator or '')}** · no pairs to show"
        answer = ""
    else:
        progress = (f"**{plain(screen.annotator or '')}** · answered **{screen.done} / {screen.total}** · "
                    f"showing pair **{screen.position}** of {screen.total} "
                    f"<span class='pair-id'>({plain(screen.pair.id)})</span>")
        answer = ("Not answered yet." if screen.answer is None else
                  f"Your answer: **{CHOICE_NAMES[screen.answer]}** — press 1, 2 or 0 to change it.")
    ignored = ("" if not screen.ignored else
               f"**{screen.ignored} key{'s' if screen.ignored != 1 else ''} ignored** so far: pressed "
               "before the screen showed the next pair, so they named a pair no longer on screen.")
    return [
        state,
        gr.update(visible=screen.ask_name),
        gr.update(visible=not screen.ask_name),
        plain(screen.name_error),
        None if view is None else view.crop_a,
        None if view is None else view.crop_b,
        None if view is None else view.overview,
        progress,
        answer,
        plain(screen.message),
        "" if screen.pair is None else screen.pair.id,
        screen.screen,
        ignored,
        _button_variant(screen, A_BETTER),
        _button_variant(screen, B_BETTER),
        _button_variant(screen, NO_PREFERENCE),
        gr.update(visible=False) if state.get("login") else gr.skip(),  # a login is not renamed
    ]


def _login(request: gr.Request | None) -> str | None:
    return getattr(request, "username", None) or None


def build_app(store: PreferenceStore, json_path: str | Path | None = None, annotator: str | None = None,
              image_root: str | Path | None = None, cache_dir: str | Path | None = None) -> gr.Blocks:
    """The annotator's Blocks over `store`; start it with `launch` (which adds keys, CSS, guards).

    The rendered crops go to `cache_dir` (default: a fresh private folder in the temp folder; folders
    left there by killed servers are removed first).
    """
    ctl = Controller(store, PhotoCache(image_root=image_root), json_path, annotator)
    cache = Path(os.path.realpath(cache_dir)) if cache_dir else new_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # Remember the typed name in this browser (per store), so a reload resumes without asking.
    key = hashlib.sha256(str(store.path).encode()).hexdigest()
    with gr.Blocks(title="Photographer · which crop is better?") as demo:
        state = gr.State(new_state())  # deep-copied per session: no state shared between people
        remembered = gr.BrowserState(None, storage_key=f"photographer-annotator-{key[:12]}",
                                     secret=key[12:44])
        with gr.Column(visible=False, elem_id="name-panel") as name_col:
            gr.Markdown("### Who is annotating?\nYour name keeps your answers apart from other people's; "
                        "use the same name next time to carry on where you stopped.")
            name_box = gr.Textbox(label="Your name", elem_id="name-box", max_lines=1, autofocus=True)
            name_error = gr.Markdown(elem_id="name-error")
            start_btn = gr.Button("Start", variant="primary", elem_id="btn-start")
        with gr.Column(visible=False, elem_id="pair-panel") as pair_col:
            progress = gr.Markdown(elem_id="progress")
            # Crops large on the left, the whole photo and the controls on the right: at 1280x900
            # both crops and the overview are in view without scrolling.
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=480):
                    with gr.Row(equal_height=True):
                        crop_a = gr.Image(label="A", elem_id="crop-a", interactive=False, format="jpeg",
                                          height="62vh", buttons=["fullscreen"])
                        crop_b = gr.Image(label="B", elem_id="crop-b", interactive=False, format="jpeg",
                                          height="62vh", buttons=["fullscreen"])
                with gr.Column(scale=1, min_width=260):
                    overview = gr.Image(label="Whole photo: A blue, B orange", elem_id="overview",
                                        interactive=False, format="jpeg", height="26vh",
                                        buttons=["fullscreen"])
                    answer = gr.Markdown(elem_id="answer-line")
                    btn_a = gr.Button("A better  [1]", elem_id="btn-a", size="sm")
                    btn_b = gr.Button("B better  [2]", elem_id="btn-b", size="sm")
                    btn_none = gr.Button("No preference  [0]", elem_id="btn-none", size="sm")
                    with gr.Row():
                        btn_prev = gr.Button("← Previous", elem_id="btn-prev", size="sm", min_width=60)
                        btn_next = gr.Button("Next →", elem_id="btn-next", size="sm", min_width=60)
                    with gr.Row():
                        btn_save = gr.Button("Save  [S]", elem_id="btn-save", size="sm", min_width=60)
                        btn_who = gr.Button("Change name", elem_id="btn-who", size="sm", min_width=60,
                                            visible=ctl.fixed_annotator is None)
            status = gr.Markdown(elem_id="status")
            ignored_note = gr.Markdown(elem_id="ignored-note")
            gr.Markdown(KEYS_HELP, elem_id="keys-help")
            # The pair and screen number on screen, sent back with every answer (Controller.choose).
            shown_id = gr.Textbox(visible="hidden", elem_id="shown-pair", label="pair on screen")
            # 0 (the default, for API callers that send only the pair id) checks the pair alone.
            shown_screen = gr.Number(0, visible="hidden", elem_id="shown-screen", label="screen number",
                                     precision=0)
        out = [state, name_col, pair_col, name_error, crop_a, crop_b, overview, progress, answer,
               status, shown_id, shown_screen, ignored_note, btn_a, btn_b, btn_none, btn_who]

        def on_load(st: dict, remembered_name: Any, request: gr.Request) -> list[Any]:
            name = remembered_name if isinstance(remembered_name, str) else None
            return _outputs(ctl.start(st, _login(request), name), st)

        def on_name(st: dict, name: str, request: gr.Request) -> list[Any]:
            ctl.bind_login(st, _login(request))
            screen = ctl.set_name(st, name)
            return _outputs(screen, st) + [st["annotator"] if st.get("annotator") else gr.skip()]

        def on_change_name(st: dict, request: gr.Request) -> list[Any]:
            ctl.bind_login(st, _login(request))
            screen = ctl.change_name(st)
            return _outputs(screen, st) + [None if screen.ask_name else gr.skip()]

        def chooser(choice: int):
            def on_choose(st: dict, shown: str | None, screen_no: float | None,
                          request: gr.Request) -> list[Any]:
                ctl.bind_login(st, _login(request))
                number = int(screen_no) if screen_no else None
                return _outputs(ctl.choose(st, choice, shown or None, number), st)
            return on_choose

        def stepper(step: int):
            def on_step(st: dict, request: gr.Request) -> list[Any]:
                ctl.bind_login(st, _login(request))
                return _outputs(ctl.move(st, step), st)
            return on_step

        def on_save(st: dict, request: gr.Request) -> list[Any]:
            ctl.bind_login(st, _login(request))
            return _outputs(ctl.save(st), st)

        # One queue for every event: a session's key presses are handled in the order pressed,
        # and the store sees one writer at a time from this app.
        common: dict[str, Any] = {"concurrency_id": "annotator", "concurrency_limit": 1,
                                  "show_progress": "hidden"}
        # Every answer key is sent, even while an earlier one is pending: each names its screen,
        # and the server ignores (and counts) those typed ahead of the page.
        answers: dict[str, Any] = dict(common, trigger_mode="multiple")
        shown = [state, shown_id, shown_screen]
        demo.load(on_load, [state, remembered], out, api_name="start", **common)
        start_btn.click(on_name, [state, name_box], out + [remembered], api_name="set_name", **common)
        name_box.submit(on_name, [state, name_box], out + [remembered], api_name=False, **common)
        btn_who.click(on_change_name, [state], out + [remembered], api_name="change_name", **common)
        btn_a.click(chooser(A_BETTER), shown, out, api_name="a_better", **answers)
        btn_b.click(chooser(B_BETTER), shown, out, api_name="b_better", **answers)
        btn_none.click(chooser(NO_PREFERENCE), shown, out, api_name="no_preference", **answers)
        btn_prev.click(stepper(-1), [state], out, api_name="previous", **common)
        btn_next.click(stepper(+1), [state], out, api_name="next", **common)
        btn_save.click(on_save, [state], out, api_name="save", **common)

    # Rendered crops go to this app's own folder, the only one its file route will serve.
    for block in demo.blocks.values():
        block.GRADIO_CACHE = str(cache)
    demo.GRADIO_CACHE = str(cache)
    blocked = [str(store.path), f"{store.path}-wal", f"{store.path}-shm"]
    if json_path is not None:
        blocked.append(str(Path(json_path).resolve()))
    demo._annotator_parts = _AppParts(  # type: ignore[attr-defined]
        head=f"<script>\n{(HERE / 'keys.js').read_text()}\n</script>",
        css=(HERE / "style.css").read_text(), cache_dir=cache, blocked_paths=blocked)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860,
           auth: Sequence[tuple[str, str]] | None = None, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False,
           allowed_hosts: Sequence[str] = ()) -> str:
    """Serve an app from build_app; returns its local URL (blocks unless prevent_thread_lock).

    Refuses (UnsafeLaunchError) a non-loopback host or a share link without `auth`, and (AuthFileError)
    a login that cannot be an annotator name. Requests naming a host other than `host` (or one of
    `allowed_hosts`) are refused by the server.
    """
    check_exposure(host, auth, share)
    check_logins(auth)
    parts: _AppParts = demo._annotator_parts  # type: ignore[attr-defined]
    guard = Middleware(RequestGuard, allowed_dir=parts.cache_dir,
                       hosts=HostPolicy(host, allowed_hosts, share))
    demo.queue(default_concurrency_limit=1)
    try:
        _, local_url, _ = demo.launch(
            server_name=host, server_port=port, auth=list(auth) if auth else None, share=share,
            prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True, inbrowser=False,
            head=parts.head, css=parts.css, allowed_paths=[str(parts.cache_dir)], blocked_paths=parts.blocked_paths,
            app_kwargs={"middleware": [guard]},
            max_file_size="1kb", enable_monitoring=False, mcp_server=False, ssr_mode=False,
            pwa=False, footer_links=[], strict_cors=True,
            auth_message="Photographer annotator: log in with the user name and password you were given.")
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} ({e}); is another app using the port? "
                      "Pick another with --port") from e
    return str(local_url)


def _serve(cfg: AnnotateConfig) -> int:
    try:
        auth = parse_auth(cfg.auth, cfg.auth_file)
        # Refuse an unsafe launch before touching any file.
        check_exposure(cfg.host, auth, cfg.share)
        check_logins(auth)
        store, json_path = open_store(cfg)
    except (UnsafeLaunchError, AuthFileError, StoreError, PairsFormatError, FileNotFoundError) as e:
        print(f"annotate: {e}", file=sys.stderr)
        return 2
    demo = build_app(store, json_path=json_path, annotator=cfg.annotator, image_root=cfg.image_root)
    cache = demo._annotator_parts.cache_dir  # type: ignore[attr-defined]
    # SIGTERM (service managers, `kill`) shuts down like Ctrl-C, so the cache folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    done, total = len(store.answers()), len(store)
    print(f"Annotating {total} pairs from {store.path} ({done} answers so far)", flush=True)
    try:
        launch(demo, cfg.host, cfg.port, auth or None, cfg.share, prevent_thread_lock=False,
               allowed_hosts=cfg.allowed_host or ())
    except OSError as e:
        print(f"annotate: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`photographer annotate ...`: parse flags, open the store, serve until Ctrl-C."""
    try:
        cfg = parse_config(AnnotateConfig, argv, prog="photographer annotate")
    except ValueError as e:
        print(f"annotate: {e}", file=sys.stderr)
        return 2
    return _serve(cfg)
