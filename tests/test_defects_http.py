"""Regression tests for the HTTP host's defects from the second outside review (issue 22):
connection floods with a low descriptor limit (item 5), a FIFO in the served folder
(item 6), the Host/Origin check on /audio and /healthz, and non-global IPv6 audio hosts
(item 8)."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from pathlib import Path

import httpx
from harness import MCP_HEADERS, http_server

from octave_tools._mcp_http import ENV_SERVER_TOKEN

FIFO_NAME = f"speech-{'f' * 32}.wav"
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def _served_env(tmp_path: Path) -> dict[str, str]:
    return {
        "OCTAVE_TOOLS_OUTPUT_DIR": str(tmp_path / "audio"),
        "OCTAVE_TOOLS_DATA_DIR": str(tmp_path / "data"),
    }


# ---------------------------------------------------------------- item 6: no blocking I/O


def test_a_fifo_named_like_a_clip_is_404_at_once_and_freezes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    fifo = folder / FIFO_NAME
    os.mkfifo(fifo)
    answers: dict[str, tuple[int, float]] = {}

    def fetch(key: str, url: str) -> None:
        started = time.monotonic()
        try:
            status = httpx.get(url, timeout=5).status_code
        except httpx.TimeoutException:
            status = 0
        answers[key] = (status, time.monotonic() - started)

    with http_server(_served_env(tmp_path)) as (url, _):
        base = url.removesuffix("/mcp")
        try:
            clip = threading.Thread(target=fetch, args=("fifo", f"{base}/audio/{FIFO_NAME}"))
            clip.start()
            time.sleep(0.2)
            fetch("health", f"{base}/healthz")
            clip.join(10)
        finally:  # on the old code the server waits in open() for a writer: give it one
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    assert answers["fifo"][0] == 404
    assert answers["health"][0] == 200
    assert answers["fifo"][1] < 2
    assert answers["health"][1] < 2
    assert fifo.exists()  # refused, not deleted


# ---------------------------------------------------------------- item 8: Host/Origin


def test_audio_and_healthz_check_host_and_origin_as_mcp_does(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    name = f"speech-{'a' * 32}.wav"
    (folder / name).write_bytes(b"RIFF....")
    token = secrets.token_urlsafe(32)
    auth = {"Authorization": f"Bearer {token}"}
    env = {**_served_env(tmp_path), ENV_SERVER_TOKEN: token}
    with http_server(env) as (url, server):
        base = url.removesuffix("/mcp")
        answers = {
            (path, label): httpx.get(f"{base}{path}", headers={**auth, **headers}).status_code
            for path in ("/healthz", f"/audio/{name}")
            for label, headers in {
                "own host": {},
                "localhost": {"Host": "localhost:1234"},
                "foreign host": {"Host": "evil.example"},
                "rebound host": {"Host": "evil.example:80"},
                "foreign origin": {"Origin": "http://evil.example"},
                "own origin": {"Origin": "http://127.0.0.1:9"},
            }.items()
        }
        anonymous_foreign = httpx.get(f"{base}/audio/{name}", headers={"Host": "evil.example"})
        mcp_foreign = httpx.post(
            url, json=TOOLS_LIST, headers={**auth, **MCP_HEADERS, "Host": "evil.example"}
        )

    for path in ("/healthz", f"/audio/{name}"):
        assert answers[path, "own host"] == 200
        assert answers[path, "localhost"] == 200
        assert answers[path, "own origin"] == 200
        assert answers[path, "foreign host"] == 421
        assert answers[path, "rebound host"] == 421
        assert answers[path, "foreign origin"] == 403
    assert mcp_foreign.status_code == 421
    assert anonymous_foreign.status_code == 401  # the token first, as on /mcp
    assert "WARNING" not in server.stderr
