"""The one gate in front of the annotator's Gradio server: which requests it answers at all.

Three allow-lists, checked for every HTTP request before Gradio sees it:

- **Host**: the Host header must name the address the app listens on (loopback names for a
  loopback bind) or a name the operator allowed (``--allowed_host``); a POST or a request carrying
  an Origin header must come from such a host too. A page on another site that makes the person's
  browser talk to the app (DNS rebinding, cross-site form posts) is refused. Ports are not compared:
  an SSH tunnel or a TLS proxy legitimately forwards another port to the app's.
- **Routes**: only the routes the page and `gradio_client` use are answered; everything else
  Gradio offers (uploads, URL proxying, streams, monitoring, the old ``/file/`` spelling, ...) is 404.
- **Files**: the one file route, ``/gradio_api/file=PATH``, serves PATH only when it is written in
  canonical form (absolute, no ``..``, ``.``, ``//`` or symlink on the way) and names a regular
  file inside this app's render cache folder. Gradio's own frontend bundle (``/assets``,
  ``/static``, ``/svelte``) is served by Gradio from its package, and only under clean paths.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from annotator.security import LOOPBACK_NAMES, is_loopback

API = "/gradio_api"
FILE_ROUTE = f"{API}/file="
_SEGMENT = r"[A-Za-z0-9_\-]+"
_CLEAN_ASSET = r"(?:[A-Za-z0-9_\-@~+]+(?:\.[A-Za-z0-9_\-@~+]+)*/)*[A-Za-z0-9_\-@~+]+(?:\.[A-Za-z0-9_\-@~+]+)*"

# (methods, path pattern) of every route the annotator's page and API clients need.
_ROUTES: list[tuple[frozenset[str], re.Pattern[str]]] = [
    (frozenset(methods.split()), re.compile(pattern)) for methods, pattern in [
        ("GET HEAD", r"/"),
        ("GET HEAD", r"/(config|theme\.css|robots\.txt|favicon\.ico|logout|login_check)/?"),
        ("POST", r"/login/?"),
        ("GET HEAD", rf"/(assets|static|svelte)/{_CLEAN_ASSET}"),
        ("GET HEAD", rf"{API}/(info|config|app_id|token|user|login_check|startup-events)/?"),
        ("GET", rf"{API}/heartbeat/{_SEGMENT}"),
        ("POST", rf"{API}/queue/join"),
        ("GET", rf"{API}/queue/data"),
        ("POST", rf"{API}/(cancel|reset)/?"),
        ("POST", rf"{API}/(call|run|api)/{_SEGMENT}/?"),
        ("GET", rf"{API}/call/{_SEGMENT}/{_SEGMENT}"),
    ]
]


def _host_name(host_header: str) -> str:
    """'Example.org:8080' -> 'example.org'; '[::1]:7860' -> '::1'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostPolicy:
    """Which Host names reach the app listening on `bind_host`, plus `extra` names allowed by flag.

    A loopback bind answers loopback names only. A specific address answers that address. A
    wildcard bind (0.0.0.0 / ::) answers any IP address written as such: DNS rebinding needs a
    name the attacker controls, and a bare address is never one; names must still be allowed.
    """

    def __init__(self, bind_host: str, extra: Iterable[str] = (), share: bool = False):
        self.names = {n.strip().lower().rstrip(".") for n in extra if n.strip()}
        bind = bind_host.strip().strip("[]").lower()
        self.any_address = bind in ("0.0.0.0", "::", "")
        if is_loopback(bind) or self.any_address:
            self.names |= LOOPBACK_NAMES | {"127.0.0.1", "::1"}
        self.names.add(bind)
        self.share_suffix = ".gradio.live" if share else None

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = _host_name(host_header).rstrip(".")
        if name in self.names:
            return True
        if self.share_suffix and name.endswith(self.share_suffix):
            return True
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            return False
        return self.any_address or addr.is_loopback and "127.0.0.1" in self.names


def file_allowed(target: str, allowed_dir: str) -> bool:
    """True when `target` (the text after ``file=``) is the canonical path of a file in allowed_dir."""
    if not target.startswith("/") or "%" in target or "\\" in target or "\x00" in target:
        return False
    real = os.path.realpath(target)
    if real != target:  # '..', '.', '//', a trailing '/', or a symlink somewhere on the way
        return False
    return real.startswith(allowed_dir.rstrip(os.sep) + os.sep) and os.path.isfile(real)


class RequestGuard:
    """ASGI middleware enforcing the Host, route and file allow-lists above."""

    def __init__(self, app: Any, allowed_dir: str | Path, hosts: HostPolicy):
        self.app = app
        self.allowed_dir = os.path.realpath(allowed_dir)
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            status, reason = self.refusal(scope)
            if status:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await _send_text(send, status, reason)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[int, str]:
        """(status, reason) for a request to refuse, or (0, '') to let it through."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.hosts.allows(headers.get("host")):
            return 403, "Host not allowed: open the annotator through the address it listens on"
        method = scope.get("method", "GET").upper()
        origin = headers.get("origin")
        if origin is not None or method not in ("GET", "HEAD"):
            if origin is not None and not self.hosts.allows(urlsplit(origin).netloc or "-"):
                return 403, "Origin not allowed: requests from other sites are refused"
        if scope["type"] == "websocket":
            return 404, "Not found"
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path.startswith(FILE_ROUTE):
            if method not in ("GET", "HEAD"):
                return 405, "Method not allowed"
            # Decoded once, as Gradio decodes it; what is left must be canonical ('%' refused).
            if file_allowed(unquote(path[len(FILE_ROUTE):]), self.allowed_dir):
                return 0, ""
            return 403, "File not allowed: only the pair images this app rendered are served"
        if "%" in path or "//" in path:
            return 404, "Not found"
        for methods, pattern in _ROUTES:
            if method in methods and pattern.fullmatch(path):
                return 0, ""
        return 404, "Not found"


async def _send_text(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
