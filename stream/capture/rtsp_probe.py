"""Why an RTSP open failed: ask the server ourselves with one DESCRIBE over a plain socket.

OpenCV's FFmpeg backend reports a failed open as "not opened" and nothing more, so a wrong
path (``404``) or wrong credentials (``401``) looked like a network blip and were retried
for ever at INFO level. After a failed open the capture calls :func:`diagnose`: one
``DESCRIBE`` (answering a ``401`` challenge with the URL's credentials, Basic or Digest),
and the status line tells a configuration error from a network error. Measured against the
GStreamer RTSP server of the tests: a wrong path gives ``404 Not Found``, a missing or wrong
password ``401 Unauthorized``, a server that is down ``connection refused``.

Credentials never leave this module except inside the Authorization header sent to the
camera itself; details returned for logs hold status lines only, never the URL.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PROBE_TIMEOUT_S = 3.0
"""Longest the probe may take per step (connect, each answer)."""


@dataclass(frozen=True)
class Diagnosis:
    """What the probe found: ``config_error`` when retrying cannot help without a change."""

    config_error: bool
    detail: str  # e.g. "DESCRIBE failed: 404 Not Found"; never holds the URL
    hint: str = ""


_HINTS = {
    401: "check the user name and password in the URL",
    403: "the camera refuses this user: check the credentials and the user's rights",
    404: "check the path in the URL (the camera has no stream there)",
}


def diagnose(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> Diagnosis | None:
    """Probe an ``rtsp://`` URL with DESCRIBE; None for other schemes or a malformed URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "rtsp" or not parts.hostname:
        return None
    try:
        port = parts.port or 554
    except ValueError:
        return None
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    target = f"rtsp://{netloc}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query
                                                              else "")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password or "")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            code, reason, headers = _describe(sock, target, 1, None)
            challenge = headers.get("www-authenticate", "")
            if code == 401 and user is not None and challenge:
                auth = _authorization(challenge, user, password, target)
                if auth is not None:
                    code, reason, _ = _describe(sock, target, 2, auth)
    except OSError as exc:
        return Diagnosis(False, f"cannot reach the camera: {exc.strerror or exc}",
                         "is it on and reachable from this machine?")
    except ValueError as exc:
        return Diagnosis(False, f"the server's answer is not RTSP ({exc})")
    if code in _HINTS:
        return Diagnosis(True, f"DESCRIBE failed: {code} {reason}", _HINTS[code])
    if code == 200:
        return Diagnosis(False, "the camera answers (DESCRIBE 200 OK) but the stream could "
                                "not be opened", "is its codec one FFmpeg decodes?")
    return Diagnosis(False, f"DESCRIBE failed: {code} {reason}")


def _describe(sock: socket.socket, target: str, cseq: int,
              auth: str | None) -> tuple[int, str, dict[str, str]]:
    lines = [f"DESCRIBE {target} RTSP/1.0", f"CSeq: {cseq}", "Accept: application/sdp",
             "User-Agent: stream-probe"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > 65536:
            break
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status, *rest = head.split("\r\n")
    m = re.match(r"RTSP/\d\.\d (\d{3}) ?(.*)", status)
    if m is None:
        raise ValueError(f"status line {status[:40]!r}")
    headers = {}
    for line in rest:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    # The body (an SDP) is not needed; a second request on this socket reads past it only
    # after a 401, whose body is empty.
    return int(m.group(1)), m.group(2), headers


def _authorization(challenge: str, user: str, password: str, target: str) -> str | None:
    """The Authorization header answering a Basic or Digest challenge (RFC 2617, MD5)."""
    scheme = challenge.split(None, 1)[0].lower()
    if scheme == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if scheme != "digest":
        return None
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    response = md5(f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{md5(f'DESCRIBE:{target}')}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{target}", '
            f'response="{response}"')
