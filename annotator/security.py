"""Who may reach the annotator: loopback unless the operator sets passwords; the credentials.

The app listens on loopback unless the operator also gives logins (``--auth`` / ``--auth-file``);
each login is its own annotator. Which requests and files the running server answers is decided in
one place, annotator/guard.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class UnsafeLaunchError(ValueError):
    """A launch that would expose the annotator beyond this machine without a password."""


class AuthFileError(ValueError):
    """An --auth value or --auth-file that cannot be used; the message names the file and line."""


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # any other name may resolve to a reachable interface


def _parse_credential(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    user = user.strip()
    if not sep or not user or not password:
        raise AuthFileError(f"{where}: expected user:password, got {_redact(text)!r}")
    return user, password


def _redact(text: str) -> str:
    # Never echo a password back into logs or error messages.
    user, sep, _ = text.partition(":")
    return f"{user}{sep}***" if sep else text


def parse_auth(values: Sequence[str] | None, auth_file: str | Path | None = None) -> list[tuple[str, str]]:
    """Credentials from `--auth user:password ...` and an auth file (one `user:password` a line).

    Blank lines and lines starting with '#' in the file are ignored. A user named twice is an error
    (which password would win is not obvious).
    """
    creds: list[tuple[str, str]] = []
    for i, v in enumerate(values or []):
        creds.append(_parse_credential(v, f"--auth value #{i + 1}"))
    if auth_file is not None:
        p = Path(auth_file).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise AuthFileError(f"{p}: no such auth file") from e
        except (OSError, UnicodeDecodeError) as e:
            raise AuthFileError(f"{p}: cannot read auth file ({e})") from e
        before = len(creds)
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                creds.append(_parse_credential(line, f"{p} line {n}"))
        if len(creds) == before:
            raise AuthFileError(f"{p}: auth file holds no user:password line")
    seen: set[str] = set()
    for user, _ in creds:
        if user in seen:
            raise AuthFileError(f"user {user!r} is given more than once in --auth / --auth-file")
        seen.add(user)
    return creds


def check_exposure(host: str, auth: Sequence[tuple[str, str]] | None, share: bool) -> None:
    """Refuse to serve beyond loopback (other interfaces or a public share link) without a password."""
    if share and not auth:
        raise UnsafeLaunchError("--share makes a public link on the internet; it needs --auth or --auth-file")
    if not is_loopback(host) and not auth:
        raise UnsafeLaunchError(
            f"--host {host} accepts connections from other machines; give --auth user:password or "
            "--auth-file FILE, or keep the default --host 127.0.0.1")
