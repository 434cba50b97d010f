"""The streamable-HTTP host beyond /mcp: audio served at /audio/<name>, /healthz, and a
graceful SIGTERM, against real server subprocesses and the fake AIML API."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _services import postgres_database
from harness import MCP_HEADERS, api_env, http_server, rpc_result, tool_call

from octave_tools import Speech, _local
from octave_tools._mcp_http import _audio_ttl, _AudioShelf, _public_url
from octave_tools.cli import run
from octave_tools.testing import FakeAIMLAPI

needs_local = pytest.mark.skipif(
    not _local.is_available(), reason="the [local] extra (eSpeak NG) is not installed"
)
CLIP = re.compile(r"/audio/(speech-[0-9a-f]{32}\.wav)$")


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OCTAVE_TOOLS_ENGINE": "local",
        "OCTAVE_TOOLS_OUTPUT_DIR": str(tmp_path / "audio"),
        "OCTAVE_TOOLS_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


# ---------------------------------------------------------------- audio over HTTP


@needs_local
def test_local_audio_is_served_over_http_with_the_token(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    auth = {"Authorization": f"Bearer {token}"}
    with http_server(local_env(tmp_path, OCTAVE_TOOLS_SERVER_TOKEN=token)) as (url, _):
        base = url.removesuffix("/mcp")
        answer = httpx.post(url, json=tool_call("Hello there"), headers=MCP_HEADERS | auth)
        result = rpc_result(answer)
        audio_url = result["structuredContent"]["audio_url"]
        clip = CLIP.search(audio_url)
        assert clip is not None and audio_url == f"{base}/audio/{clip.group(1)}"
        assert f": {audio_url} (" in result["structuredContent"]["message"]
        assert f": {audio_url} (" in result["content"][0]["text"]
        on_disk = (tmp_path / "audio" / clip.group(1)).read_bytes()

        fetched = httpx.get(audio_url, headers=auth)
        anonymous = httpx.get(audio_url)
        head = httpx.head(audio_url, headers=auth)
        listing = httpx.get(f"{base}/audio/", headers=auth)
        bare = httpx.get(f"{base}/audio", headers=auth)
        unknown = httpx.get(f"{base}/audio/speech-{'0' * 32}.wav", headers=auth)
        posted = httpx.post(audio_url, headers=auth)

    assert fetched.status_code == 200
    assert fetched.content == on_disk and on_disk.startswith(b"RIFF")
    assert fetched.headers["content-type"] == "audio/wav"
    assert fetched.headers["x-content-type-options"] == "nosniff"
    assert anonymous.status_code == 401
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(on_disk))
    assert listing.status_code == 404 and bare.status_code == 404
    assert unknown.status_code == 404
    assert unknown.json()["error_description"] == "This audio clip does not exist."
    assert posted.status_code == 405


@needs_local
def test_public_url_is_the_base_of_served_audio(tmp_path: Path) -> None:
    env = local_env(tmp_path, OCTAVE_TOOLS_PUBLIC_URL="https://tts.example.com/octave/")
    with http_server(env) as (url, _):
        result = rpc_result(httpx.post(url, json=tool_call("Hi"), headers=MCP_HEADERS))
    audio_url = result["structuredContent"]["audio_url"]
    expected = r"https://tts\.example\.com/octave/audio/speech-[0-9a-f]{32}\.wav"
    assert re.fullmatch(expected, audio_url)


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fdata%2Fledger.sqlite3",
        "%2E%2E/data/ledger.sqlite3",
        "speech-" + "0" * 32 + ".wav/..",
        "SPEECH-" + "A" * 32 + ".WAV",
        "speech-" + "0" * 31 + ".wav",
        "outside.wav",
    ],
)
def test_only_clip_names_inside_the_folder_are_served(tmp_path: Path, name: str) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "outside.wav").write_bytes(b"RIFF....")
    with http_server(local_env(tmp_path)) as (url, _):
        base = url.removesuffix("/mcp")
        answer = httpx.get(f"{base}/audio/{name}")
    assert answer.status_code == 404


def test_a_link_named_like_a_clip_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"not yours")
    name = f"speech-{'a' * 32}.wav"
    (folder / name).symlink_to(secret)
    with http_server(local_env(tmp_path)) as (url, _):
        answer = httpx.get(url.removesuffix("/mcp") + f"/audio/{name}")
    assert answer.status_code == 404
    assert b"not yours" not in answer.content


def test_expired_clips_are_swept_while_serving(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    old, fresh = f"speech-{'a' * 32}.mp3", f"speech-{'b' * 32}.mp3"
    for name in (old, fresh):
        (folder / name).write_bytes(b"ID3" + name.encode())
    stale = time.time() - 120
    os.utime(folder / old, (stale, stale))
    with http_server(local_env(tmp_path, OCTAVE_TOOLS_AUDIO_TTL="60")) as (url, _):
        base = url.removesuffix("/mcp") + "/audio/"
        for _ in range(100):  # the first sweep runs as the server starts
            if not (folder / old).exists():
                break
            time.sleep(0.05)
        gone = httpx.get(base + old)
        served = httpx.get(base + fresh)
    assert not (folder / old).exists()
    assert gone.status_code == 404
    assert (served.status_code, served.content) == (200, b"ID3" + fresh.encode())
    assert served.headers["content-type"] == "audio/mpeg"


async def test_a_clip_past_its_ttl_gets_410_and_is_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    name = f"speech-{'c' * 32}.opus"
    (folder / name).write_bytes(b"OggS")
    shelf = _AudioShelf(folder, 60.0, None)
    transport = httpx.ASGITransport(app=shelf)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        served = await http.get(f"/audio/{name}")
        stale = time.time() - 61
        os.utime(folder / name, (stale, stale))
        gone = await http.get(f"/audio/{name}")
    assert (served.status_code, served.content) == (200, b"OggS")
    assert served.headers["content-type"] == "audio/ogg"
    assert gone.status_code == 410
    assert gone.json()["error_description"] == "This audio clip has expired."
    assert not (folder / name).exists()


def test_the_sweep_deletes_only_expired_clips(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    expired, young = f"speech-{'1' * 32}.wav", f"speech-{'2' * 32}.wav"
    keep = ["notes.txt", f"speech-{'3' * 32}.wav.part", "speech-x.wav"]
    for name in (expired, young, *keep):
        (folder / name).write_bytes(b"x")
    target = tmp_path / "elsewhere.wav"
    target.write_bytes(b"y")
    link = folder / f"speech-{'4' * 32}.wav"
    link.symlink_to(target)
    now = time.time()
    for path in [folder / n for n in (expired, *keep)]:
        os.utime(path, (now - 1000, now - 1000))
    os.utime(link, (now - 1000, now - 1000), follow_symlinks=False)
    shelf = _AudioShelf(folder, 100.0, None)

    assert shelf.sweep(now) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([young, *keep, link.name])
    assert target.read_bytes() == b"y"
    assert _AudioShelf(folder, 0.0, None).sweep(now + 10**9) == 0


def test_publish_rewrites_only_clips_of_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    shelf = _AudioShelf(folder, 60.0, "https://tts.example.com")
    name = f"speech-{'e' * 32}.wav"

    def speech(url: str) -> Speech:
        return Speech(audio_url=url, format="wav", voice=None, model="m", characters=1)

    assert shelf.publish(speech((folder / name).as_uri())).audio_url == (
        f"https://tts.example.com/audio/{name}"
    )
    for untouched in [
        "https://cdn.aimlapi.com/x.wav",
        (tmp_path / name).as_uri(),  # another folder
        (folder / "speech-e.wav").as_uri(),  # not a name this package makes
    ]:
        assert shelf.publish(speech(untouched)).audio_url == untouched


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("OCTAVE_TOOLS_PUBLIC_URL", "tts.example.com", "OCTAVE_TOOLS_PUBLIC_URL must be"),
        ("OCTAVE_TOOLS_PUBLIC_URL", "https://u:p@x.example", "OCTAVE_TOOLS_PUBLIC_URL must be"),
        ("OCTAVE_TOOLS_AUDIO_TTL", "-1", "OCTAVE_TOOLS_AUDIO_TTL must be seconds"),
        ("OCTAVE_TOOLS_AUDIO_TTL", "a day", "OCTAVE_TOOLS_AUDIO_TTL must be seconds"),
    ],
)
def test_bad_serving_settings_are_refused_before_binding(
    name: str,
    value: str,
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    code = run(["serve", "--transport", "http", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert problem in err and "Traceback" not in err


def test_setting_parsers_keep_good_values() -> None:
    assert _public_url(" https://x.example/a/ ") == "https://x.example/a"
    assert _public_url("") is None
    assert _audio_ttl(None) == 86400.0
    assert _audio_ttl("0") == 0.0


# ---------------------------------------------------------------- health


def test_healthz_is_open_and_says_ok_when_the_store_answers(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    env = local_env(tmp_path, OCTAVE_TOOLS_SERVER_TOKEN=token)
    with http_server(env) as (url, _):
        answer = httpx.get(url.removesuffix("/mcp") + "/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert answer.headers["cache-control"] == "no-store"


def test_healthz_is_503_when_the_ledger_is_unusable(tmp_path: Path) -> None:
    # A folder where the ledger file should be: SQLite cannot open it.
    (tmp_path / "data" / "ledger.sqlite3").mkdir(parents=True)
    with http_server(local_env(tmp_path)) as (url, server):
        answer = httpx.get(url.removesuffix("/mcp") + "/healthz")
        server.wait_for_stderr(r"/healthz is 503: The usage ledger at \S+ is unusable")
    assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})


def test_healthz_is_503_when_postgresql_does_not_answer(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    with socket_free_port() as port:
        store = f"postgresql://nobody:hunter2secret@127.0.0.1:{port}/none"
    with http_server(local_env(tmp_path, OCTAVE_TOOLS_STORE_URL=store)) as (url, server):
        answer = httpx.get(url.removesuffix("/mcp") + "/healthz", timeout=30)
        server.wait_for_stderr(r"/healthz is 503: The store in OCTAVE_TOOLS_STORE_URL")
    assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})
    assert "hunter2secret" not in server.stderr


class socket_free_port:
    """A loopback port nothing listens on (bound, then freed on exit)."""

    def __enter__(self) -> int:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


# ---------------------------------------------------------------- graceful SIGTERM


def test_sigterm_lets_a_call_in_flight_finish_then_exits_0(fake_aimlapi: FakeAIMLAPI) -> None:
    fake_aimlapi.delay(2.0)
    answers: list[httpx.Response] = []
    with http_server(api_env(fake_aimlapi)) as (url, server):
        caller = threading.Thread(
            target=lambda: answers.append(
                httpx.post(url, json=tool_call("Slow one"), headers=MCP_HEADERS, timeout=30)
            )
        )
        caller.start()
        for _ in range(200):
            if fake_aimlapi.requests:
                break
            time.sleep(0.02)
        assert fake_aimlapi.requests, "the call never reached the API"
        server.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        code = server.proc.wait(30)
        refused = None
        with contextlib.suppress(httpx.ConnectError):
            refused = httpx.post(url, json=tool_call("Late"), headers=MCP_HEADERS, timeout=5)
    assert len(answers) == 1
    result = rpc_result(answers[0])
    assert result["isError"] is False
    assert result["structuredContent"]["audio_url"] in fake_aimlapi.issued
    assert code == 0
    assert refused is None


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from postgres_database()


def test_sigterm_leaves_no_reservation_behind_on_the_shared_store(
    fake_aimlapi: FakeAIMLAPI, pg_url: str
) -> None:
    psycopg = pytest.importorskip("psycopg")
    fake_aimlapi.delay(30.0)  # longer than the call may take: it ends at its deadline
    env = api_env(
        fake_aimlapi,
        OCTAVE_TOOLS_STORE_URL=pg_url,
        OCTAVE_TOOLS_MAX_CREDITS="100000",
        OCTAVE_TOOLS_TIMEOUT="2",
        OCTAVE_TOOLS_MAX_RETRIES="0",
    )
    answers: list[httpx.Response] = []
    with http_server(env) as (url, server):
        caller = threading.Thread(
            target=lambda: answers.append(
                httpx.post(url, json=tool_call("Cut short"), headers=MCP_HEADERS, timeout=30)
            )
        )
        caller.start()
        for _ in range(200):
            if fake_aimlapi.requests:
                break
            time.sleep(0.02)
        with psycopg.connect(pg_url) as conn:
            held = conn.execute("SELECT count(*) FROM octave_reservations").fetchone()
        server.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        code = server.proc.wait(30)
    with psycopg.connect(pg_url) as conn:
        left = conn.execute("SELECT count(*) FROM octave_reservations").fetchone()
        billed = conn.execute("SELECT count(*) FROM octave_calls").fetchone()
    assert held == (1,)  # the call in flight held its estimate
    assert code == 0
    assert len(answers) == 1 and rpc_result(answers[0])["isError"] is True
    assert (left, billed) == ((0,), (0,))
