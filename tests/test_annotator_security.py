"""The annotator's link, safe to share: against a real Gradio server on loopback, with raw HTTP
(paths and headers sent byte for byte, never normalised by a client).

Every file route serves only this app's rendered crops; a foreign Host or Origin is refused; with
logins each login is its own annotator and cannot answer as another; a killed server's cache
folder is removed by the next start.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from gradio_client import Client

from annotator.app import build_app, launch
from annotator.cache import PREFIX, new_cache_dir, remove_stale_caches
from annotator.guard import HostPolicy, file_allowed
from annotator.security import parse_auth
from rlhf.pairs import A_BETTER, B_BETTER
from tests.annotator_fixtures import REPO, copy_photos, free_port, make_store, wait_for_http

PROGRESS, STATUS, SHOWN, SCREEN = 4, 6, 7, 8


@pytest.fixture
def served(tmp_path):
    """A store with 5 pairs on a free loopback port; yields (url, store, pairs, tmp, cache_dir)."""
    store, pairs = make_store(tmp_path, n=5)
    demo = build_app(store)
    url = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True,
                 allowed_hosts=["annot.example.org"])
    cache = demo._annotator_parts.cache_dir
    try:
        yield url.rstrip("/"), store, pairs, tmp_path, cache
    finally:
        demo.close()
        shutil.rmtree(cache, ignore_errors=True)


def raw(url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:
    """One request with `path` and the headers sent exactly as given (like curl --path-as-is)."""
    host, port = url.split("//")[1].split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in {"Host": f"{host}:{port}", **(headers or {})}.items():
            con.putheader(k, v)
        if body is not None:
            con.putheader("Content-Length", str(len(body)))
        con.endheaders(body)
        resp = con.getresponse()
        return resp.status, resp.read()
    finally:
        con.close()


def test_every_file_route_serves_only_rendered_crops(served, monkeypatch):
    url, store, pairs, tmp, cache = served
    r = Client(url, verbose=False, download_files=False).predict("ada", api_name="/set_name")
    crop = r[1]["path"]
    assert crop.startswith(str(cache) + "/") and raw(url, f"/gradio_api/file={crop}")[0] == 200
    assert raw(url, f"/gradio_api/file={crop}", "HEAD")[0] == 200
    # Files the app must never hand out: another Gradio app's upload in Gradio's temp folder,
    # Gradio's example cache under the working directory, the photos, the store, system files,
    # and links planted inside the cache folder that point out of it.
    photo_bytes = Path(pairs[0].image).read_bytes()
    other_app = Path(tempfile.gettempdir()) / "gradio" / "0123456789abcdef-test" / "image.jpeg"
    other_app.parent.mkdir(parents=True, exist_ok=True)
    other_app.write_bytes(photo_bytes)
    monkeypatch.chdir(tmp)
    examples = tmp / ".gradio" / "cached_examples" / "17" / "image.jpeg"
    examples.parent.mkdir(parents=True)
    examples.write_bytes(photo_bytes)
    unreferenced = copy_photos(tmp / "photos", ["rocket"])[0]
    link_out = Path(crop).parent / "link.jpeg"
    link_out.symlink_to(pairs[0].image)
    link_dir = cache / "linkdir"
    link_dir.symlink_to(Path(pairs[0].image).parent)
    targets = [str(other_app), ".gradio/cached_examples/17/image.jpeg", str(examples), str(unreferenced),
               pairs[0].image, str(store.path), "/etc/passwd", str(link_out),
               f"{link_dir}/{Path(pairs[0].image).name}", f"{cache}/../../etc/passwd",
               f"{Path(crop).parent}/../../../{pairs[0].image}", f"/{crop}", crop.replace("/", "//", 2),
               f"{crop}/", f"{Path(crop).parent}/./{Path(crop).name}", "http://127.0.0.1:1/x.jpeg"]
    spellings = ["/gradio_api/file={}", "/gradio_api/file/{}", "/file={}", "/file/{}",
                 "/gradio_api/file={}".replace("file=", "file=/"), "/gradio_api/proxy={}",
                 "/gradio_api//file={}", "/gradio_api/file%3D{}"]
    tried = 0
    try:
        for target in targets:
            for form in [target, quote(target), quote(target, safe=""), target.replace(".", "%2e"),
                         target.replace("/", "%2f")]:
                for spelling in spellings:
                    for method in ("GET", "HEAD"):
                        status, body = raw(url, spelling.format(form), method)
                        tried += 1
                        assert status in (403, 404, 405), (spelling.format(form), status)
                        assert b"JFIF" not in body and b"root:" not in body
        # The crop itself, but through any spelling other than the canonical one, is refused too.
        for spelling in spellings[1:]:
            assert raw(url, spelling.format(crop))[0] in (403, 404), spelling
    finally:
        shutil.rmtree(other_app.parent, ignore_errors=True)
    assert tried > 1000
    # Gradio's other path-taking routes lead nowhere either.
    for path in ["/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
                 "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd", "/assets//etc/passwd",
                 "/svelte/../../../etc/passwd", "/custom_component/x/client/../../../../etc/passwd",
                 "/gradio_api/stream/s/0/1/playlist-file", "/gradio_api/upload_progress",
                 "/gradio_api/run-history/records/a/b/assets/c", "/monitoring", "/manifest.json",
                 "/pwa_icon", "/gradio_api/openapi.json", "/gradio_api/vibe-code/", "/favicon.ico/../x"]:
        status, body = raw(url, path)
        assert status >= 400 and b"root:" not in body and b"JFIF" not in body, path
    status, _ = raw(url, "/gradio_api/upload", "POST",
                    {"Content-Type": "multipart/form-data; boundary=b"},
                    b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.txt"\r\n\r\nhi\r\n--b--\r\n')
    assert status == 404


def test_file_allowed_unit(tmp_path):
    cache = tmp_path / "cache"
    (cache / "h").mkdir(parents=True)
    (cache / "h" / "image.jpeg").write_bytes(b"x")
    (cache / "h" / "link.jpeg").symlink_to("/etc/passwd")
    c = os.path.realpath(cache)
    assert file_allowed(f"{c}/h/image.jpeg", c)
    for bad in [f"{c}/h/link.jpeg", f"{c}/h/missing.jpeg", f"{c}-evil/x.jpeg", f"{c}/h", f"{c}//h/image.jpeg",
                f"{c}/h/../h/image.jpeg", "h/image.jpeg", f"{c}/h/%2e", f"{c}/h/image.jpeg\x00"]:
        assert not file_allowed(bad, c), bad


def test_foreign_host_and_origin_are_refused(served):
    url, store, pairs, _, _ = served
    port = url.rsplit(":", 1)[1]
    for host in [f"127.0.0.1:{port}", f"localhost:{port}", "localhost:8080", "annot.example.org"]:
        assert raw(url, "/", headers={"Host": host})[0] == 200, host
    for host in ["evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", "",
                 f"annot.example.org.evil.example:{port}", "10.0.0.1"]:
        status, body = raw(url, "/", headers={"Host": host})
        assert status in (400, 403) and b"gradio" not in body.lower(), host
    # The DNS-rebinding attack: a page of another site makes the browser post an answer.
    payload = json.dumps({"data": ["mallory"], "fn_index": 1, "session_hash": "abcdefgh1"}).encode()
    for headers in [{"Host": f"evil.example:{port}"},
                    {"Origin": "http://evil.example", "Content-Type": "application/json"},
                    {"Origin": "null", "Content-Type": "application/json"}]:
        for path in ["/gradio_api/queue/join", "/gradio_api/call/set_name", "/gradio_api/run/set_name"]:
            status, _ = raw(url, path, "POST", headers, payload)
            assert status == 403, (path, headers)
    own = {"Origin": f"http://localhost:{port}", "Content-Type": "application/json"}
    status, body = raw(url, "/gradio_api/call/set_name", "POST", own,
                       json.dumps({"data": ["mallory"]}).encode())
    assert status == 200, body
    assert store.answers() == []


def test_host_policy():
    loop = HostPolicy("127.0.0.1", ["annot.example.org"])
    assert loop.allows("127.0.0.1:7860") and loop.allows("[::1]:7860") and loop.allows("Annot.Example.Org")
    assert not loop.allows("192.168.1.5:7860") and not loop.allows(None) and not loop.allows("x.org")
    wild = HostPolicy("0.0.0.0")
    assert wild.allows("192.168.1.5:7860") and wild.allows("[fe80::1]:80") and not wild.allows("evil.example")
    one = HostPolicy("192.168.1.5")
    assert one.allows("192.168.1.5:7860") and not one.allows("10.0.0.1") and not one.allows("localhost")


def test_with_logins_the_name_is_the_login(tmp_path):
    store, pairs = make_store(tmp_path, n=3)
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("# annotators\nalice:pw-a\nbob:pw-b\n")
    demo = build_app(store)
    url = launch(demo, port=free_port(), auth=parse_auth(None, auth_file), prevent_thread_lock=True,
                 quiet=True)
    try:
        bob = Client(url, auth=("bob", "pw-b"), verbose=False)
        r = bob.predict(None, api_name="/start")
        bob.predict(r[SHOWN], r[SCREEN], api_name="/b_better")
        alice = Client(url, auth=("alice", "pw-a"), verbose=False)
        r = alice.predict(None, api_name="/start")
        assert "**alice**" in r[PROGRESS] and r[SHOWN] == pairs[0].id
        for call in [("bob", "/set_name"), (None, "/change_name")]:
            args = [] if call[0] is None else [call[0]]
            r = alice.predict(*args, api_name=call[1])
            assert "Refused: you are logged in as alice" in r[STATUS] and "**alice**" in r[PROGRESS]
        alice.predict(r[SHOWN], r[SCREEN], api_name="/a_better")
    finally:
        demo.close()
        shutil.rmtree(demo._annotator_parts.cache_dir, ignore_errors=True)
    assert store.answer_of(pairs[0].id, "bob") == B_BETTER
    assert store.answer_of(pairs[0].id, "alice") == A_BETTER
    assert [a.annotator for a in store.answers(pairs[0].id, history=True)] == ["bob", "alice"]
    assert sorted(store.annotators()) == ["alice", "bob"]


def test_killed_servers_cache_is_removed_at_the_next_start(tmp_path):
    store, _ = make_store(tmp_path, n=2)
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "annotator", "--store", str(store.path), "--port",
                             str(port), "--annotator", "cy"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
        Client(f"http://127.0.0.1:{port}/", verbose=False).predict(None, api_name="/start")
        left = list(Path(tempfile.gettempdir()).glob(f"{PREFIX}{proc.pid}-*"))
        assert len(left) == 1 and any(left[0].rglob("*.jpeg"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    assert left[0].is_dir()  # killed outright: it could not clean up
    # Someone else's link named like a cache, and this process's own folder, are left alone.
    decoy = Path(tempfile.gettempdir()) / f"{PREFIX}{proc.pid}-decoy"
    decoy.symlink_to(tmp_path)
    # Folders without a pid: removed once untouched for a day, kept while recent.
    old, recent = (Path(tempfile.mkdtemp(prefix=f"{PREFIX}x")) for _ in range(2))
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    try:
        mine = new_cache_dir()
        assert not left[0].exists() and decoy.is_symlink() and mine.is_dir()
        assert not old.exists() and recent.is_dir()
        assert mine.name.startswith(f"{PREFIX}{os.getpid()}-") and mine not in remove_stale_caches()
    finally:
        decoy.unlink()
        for folder in (mine, old, recent):
            shutil.rmtree(folder, ignore_errors=True)
