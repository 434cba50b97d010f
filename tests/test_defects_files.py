"""Issue 16 (outside review), items 4-9, 13 and 14: --out targets and failures, the
ledger's locks, budget and file modes, cached URLs, and a bounded stdin."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import CLI, cli, cli_process, redirecting_server, subprocess_env

from octave_tools import ConfigurationError, OctaveClient, Speech
from octave_tools._files import write_atomic
from octave_tools._settings import Settings
from octave_tools._spend import Spend
from octave_tools._store import LedgerEntry, SQLiteStore
from octave_tools.cli import run
from octave_tools.testing import FakeAIMLAPI

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and FIFOs")


def client(api: FakeAIMLAPI, **kw: object) -> OctaveClient:
    return OctaveClient(api_key=api.api_key, base_url=api.base_url, engine="aimlapi", **kw)  # type: ignore[arg-type]


def entry(credits: float = 1.0) -> LedgerEntry:
    return LedgerEntry(time.time(), "aimlapi", "m", None, "wav", 1, credits, None, None, "x", False)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


_HOLD_LOCK = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "db.execute('COMMIT')\n"
)


@contextmanager
def ledger_locked_by_another_process(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A second process holding BEGIN EXCLUSIVE on ``path`` for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
        yield proc
    finally:
        proc.wait(timeout=60)


def make_ledger(path: Path) -> None:
    """An existing, healthy ledger file (WAL mode, schema in place)."""
    SQLiteStore(path).close()


def ledger_count(path: Path) -> int:
    return int(sqlite3.connect(path).execute("SELECT count(*) FROM calls").fetchone()[0])


# ------------------------------------------------------------ 4. --out targets


@posix_only
def test_out_that_is_a_fifo_is_refused_before_the_call(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    code, out, err = cli(capsys, "say", "Hi", "--out", str(fifo))
    assert (code, out) == (2, "")
    assert err == (
        f"octave-tools: error: --out {str(fifo)!r} exists and is not a regular file (a device, "
        "pipe or socket); give a file name, or --out - to write the audio to stdout.\n"
    )
    assert api_env.requests == []
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@posix_only
def test_out_that_links_to_a_device_is_refused_and_the_link_kept(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    link = tmp_path / "null.wav"
    link.symlink_to("/dev/null")
    code, _, err = cli(capsys, "say", "Hi", "--out", str(link))
    assert code == 2
    assert "exists and is not a regular file" in err
    assert api_env.requests == []
    assert os.readlink(link) == "/dev/null"


@posix_only
@pytest.mark.parametrize("target", ["/dev/stdout", "/dev/null", "/dev/fd/1", "/proc/self/fd/1"])
def test_out_in_a_device_folder_is_refused_before_the_call(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, target: str
) -> None:
    # As root, these were replaced by a regular file ("Saved to /dev/stdout").
    before = os.lstat(target)
    code, out, err = cli(capsys, "say", "Hi", "--out", target)
    assert (code, out) == (2, "")
    assert "octave-tools: error: --out " in err
    assert api_env.requests == []
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_out_dash_writes_only_the_audio_bytes_to_stdout(
    capsysbinary: pytest.CaptureFixture[bytes],
    api_env: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = run(["say", "Hi there", "--out", "-"])
    out, err = capsysbinary.readouterr()
    assert code == 0
    [url] = api_env.issued
    audio = [r for r in api_env.requests if r.method == "GET"]
    assert [r.path for r in audio] == ["/files/" + url.rsplit("/", 1)[1]]
    assert out.startswith(b"RIFF") and out[8:12] == b"WAVE"
    assert err.decode().splitlines()[0] == url
    assert "Audio written to stdout." in err.decode()
    assert not (tmp_path / "-").exists()


def test_out_dash_with_json_sends_the_record_to_stderr(
    capsysbinary: pytest.CaptureFixture[bytes],
    api_env: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = run(["say", "Hi", "--format", "mp3", "--out", "-", "--json"])
    out, err = capsysbinary.readouterr()
    assert code == 0
    assert out.startswith(b"ID3")
    text = err.decode()
    record = json.loads(text[: text.index("\n}\n") + 2])
    assert record["audio_url"] in api_env.issued
    assert record["format"] == "mp3"


# ------------------------------------------------------------ 5. --out after the paid call


def test_failed_download_still_prints_the_url_and_exits_4(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    url = f"{api_env.origin}/files/expired.wav"
    api_env.respond(200, {"audio": {"url": url}, "meta": {"usage": {"credits_used": 250}}})
    target = tmp_path / "hello.wav"
    code, out, err = cli(capsys, "say", "Hi", "--out", str(target))
    assert code == 4
    assert out == url + "\n"
    lines = err.splitlines()
    assert lines[0] == (
        f"Speech generated hume/octave-2: {url} (voice 'Vince Douglas', wav, 250 credits)."
    )
    assert lines[1] == (
        f"octave-tools: error: Downloading the audio from 127.0.0.1:{api_env.port} failed "
        "(404); the URL may have expired. The call was made and its audio URL is printed "
        f"above; --out {target} was not written."
    )
    assert "synthesise again" not in err
    assert not target.exists()


def test_a_redirect_to_a_bad_scheme_still_prints_the_url_and_exits_4(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    with redirecting_server("file:///etc/passwd") as origin:
        url = origin + "/a.wav"
        api_env.respond(200, {"audio": {"url": url}, "meta": {"usage": {"credits_used": 250}}})
        target = tmp_path / "hello.wav"
        code, out, err = cli(capsys, "say", "Hi", "--json", "--out", str(target))
    assert code == 4
    record = json.loads(out)
    assert (record["audio_url"], record["credits_used"]) == (url, 250)
    error = err.splitlines()[-1]
    assert error.startswith("octave-tools: error: Refusing to follow a redirect of the audio")
    assert "file://" in error
    assert error.endswith(
        f"The call was made and its audio URL is printed above; --out {target} was not written."
    )
    assert not target.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE makes a real write fail")
def test_a_refused_write_prints_the_url_names_the_target_and_exits_6(
    api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    import resource

    def small_files() -> None:  # Python ignores SIGXFSZ, so a big write is EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    target = tmp_path / "hello.wav"
    proc = cli_process(
        "say",
        "Hi",
        "--out",
        str(target),
        env=subprocess_env(api_env, OCTAVE_TOOLS_LEDGER="off"),
        text=True,
        preexec_fn=small_files,
    )
    [url] = api_env.issued
    assert proc.returncode == 6, proc.stderr
    assert proc.stdout == url + "\n"
    assert "250 credits" in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"octave-tools: error: could not write --out {target} (File too large). The call "
        "was made and its audio URL is printed above."
    )
    assert ".part" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ 6. a locked ledger


def test_a_ledger_locked_longer_than_the_busy_timeout_delays_writes_never_drops_them(
    fake_aimlapi: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import octave_tools._store as store_mod

    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "ledger.sqlite3"
    make_ledger(path)
    with client(fake_aimlapi, data_dir=str(tmp_path)) as c:
        with ledger_locked_by_another_process(path, 1.5):
            for i in range(10):
                c.synthesize(f"call {i}")
            time.sleep(0.5)  # longer than the busy timeout: a write has failed by now
            assert c.usage().total_calls == 10  # still counted while queued
        c._spend.store.flush(timeout=15)  # type: ignore[union-attr]
    assert len(fake_aimlapi.tts_requests) == 10
    assert ledger_count(path) == 10
    assert not [r for r in caplog.records if "unusable" in r.getMessage()]


def test_a_corrupt_ledger_is_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octave_tools._store as store_mod

    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteStore(path)
    store.add(entry(100))
    assert store.unusable_reason == "file is not a database"
    path.unlink()  # the user moves the broken file aside
    monkeypatch.setattr(store_mod, "REOPEN_AFTER", 0.0)
    store.add(entry(50))  # prompts the writer to try the ledger again
    deadline = time.monotonic() + 10
    while not store.usable and time.monotonic() < deadline:
        time.sleep(0.02)
    store.add(entry(25))
    store.flush()
    assert store.unusable_reason is None
    rows = sqlite3.connect(path).execute("SELECT credits FROM calls ORDER BY credits")
    assert [r[0] for r in rows] == [25.0, 50.0, 100.0]  # what was in memory is written too
    store.close()


# ------------------------------------------------------------ 7. the budget fails closed


def test_a_daily_budget_with_a_corrupt_ledger_refuses_before_any_request(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with (
        client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=1000) as c,
        pytest.raises(ConfigurationError) as info,
    ):
        c.synthesize("Hi")
    assert str(info.value) == (
        f"The usage ledger at {path} cannot be used (file is not a database), so the daily "
        "budget (OCTAVE_TOOLS_MAX_CREDITS) cannot be enforced and no call was made. Fix: move "
        "the damaged or linked file aside (a new one is made) and try again, or unset the "
        "daily budget."
    )
    assert fake_aimlapi.requests == []


def test_cli_with_a_budget_and_a_corrupt_ledger_exits_3_every_time(
    capsys: pytest.CaptureFixture[str],
    api_env: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_MAX_CREDITS", "300")  # room for one call of 2 characters
    data = tmp_path / "data"
    data.mkdir()
    (data / "ledger.sqlite3").write_bytes(b"not a database" * 100)
    for _ in range(3):
        code, out, err = cli(capsys, "say", "Hi")
        assert (code, out) == (3, "")
        assert f"The usage ledger at {data / 'ledger.sqlite3'} cannot be used" in err
    assert api_env.requests == []


def test_without_a_budget_a_corrupt_ledger_only_warns(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ledger.sqlite3").write_bytes(b"not a database" * 100)
    with client(fake_aimlapi, data_dir=str(tmp_path)) as c:
        speech = c.synthesize("Hi")
    assert speech.audio_url in fake_aimlapi.issued
    assert any("is unusable (file is not a database)" in r.getMessage() for r in caplog.records)


def test_a_daily_budget_with_a_ledger_locked_too_long_refuses(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octave_tools._store as store_mod

    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.3)
    path = tmp_path / "ledger.sqlite3"
    make_ledger(path)
    with (
        client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=1000) as c,
        ledger_locked_by_another_process(path, 2.0),
        pytest.raises(ConfigurationError) as info,
    ):
        c.synthesize("Hi")
    assert str(info.value).startswith(
        f"The usage ledger at {path} cannot be used (another program has held it locked for "
        "more than 0.3 s), so the daily budget (OCTAVE_TOOLS_MAX_CREDITS) cannot be enforced"
    )
    assert "close the program holding it (a sqlite3 shell, a backup)" in str(info.value)
    assert fake_aimlapi.requests == []


def test_a_daily_budget_waits_out_a_brief_lock(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    make_ledger(path)
    with client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=1000) as c:
        with ledger_locked_by_another_process(path, 0.3):
            speech = c.synthesize("Hi")
        c._spend.store.flush()  # type: ignore[union-attr]
    assert speech.audio_url in fake_aimlapi.issued
    assert ledger_count(path) == 1


def test_a_budget_is_shared_by_processes_even_while_the_ledger_is_locked(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octave_tools._store as store_mod

    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.3)
    path = tmp_path / "ledger.sqlite3"
    make_ledger(path)
    with ledger_locked_by_another_process(path, 3.0):
        refused = 0
        for _ in range(3):  # three clients, each with a store of its own: three processes
            store = SQLiteStore(path)
            with client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=300) as c:
                c._spend._store = store
                c._spend._store_opened = True
                try:
                    c.synthesize("Hi")
                except ConfigurationError:
                    refused += 1
            store.close()
    assert (refused, fake_aimlapi.requests) == (3, [])


# ------------------------------------------------------------ 8. file modes and links


@posix_only
def test_the_ledger_and_its_folder_are_private(fake_aimlapi: FakeAIMLAPI, tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    with umask(0o022), client(fake_aimlapi, data_dir=str(data)) as c:
        c.synthesize("Hi")
        c._spend.store.flush()  # type: ignore[union-attr]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert modes == {
        "ledger.sqlite3": 0o600,
        "ledger.sqlite3-wal": 0o600,
        "ledger.sqlite3-shm": 0o600,
    }


@posix_only
def test_an_existing_readable_ledger_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    make_ledger(path)
    path.chmod(0o644)
    SQLiteStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@posix_only
@pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_audio_files_get_the_mode_the_umask_gives(tmp_path: Path, mask: int, mode: int) -> None:
    with umask(mask):
        path = write_atomic(tmp_path / "a.wav", b"RIFF")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


@posix_only
def test_cli_out_respects_a_strict_umask(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, tmp_path: Path
) -> None:
    target = tmp_path / "hello.wav"
    with umask(0o077):
        assert cli(capsys, "say", "Hi", "--out", str(target))[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def _other_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE precious (x)")
    db.commit()
    db.close()


def test_a_symlinked_ledger_is_not_followed_without_a_budget(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other.db"
    _other_database(other)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ledger.sqlite3").symlink_to(other)
    with caplog.at_level(logging.WARNING), client(fake_aimlapi, data_dir=str(data)) as c:
        speech = c.synthesize("Hi")
    assert speech.audio_url in fake_aimlapi.issued
    [warning] = [r.getMessage() for r in caplog.records if "usage ledger" in r.getMessage()]
    assert warning.startswith(
        f"octave-tools: the usage ledger at {data / 'ledger.sqlite3'} is unusable "
        f"({data / 'ledger.sqlite3'} is a symbolic link, which the ledger never follows; "
    )
    db = sqlite3.connect(other)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not turned into WAL
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["precious"]


def test_a_symlinked_ledger_with_a_budget_refuses_the_call(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    _other_database(other)
    (tmp_path / "ledger.sqlite3").symlink_to(other)
    with (
        client(fake_aimlapi, data_dir=str(tmp_path), max_credits_per_day=1000) as c,
        pytest.raises(ConfigurationError, match="is a symbolic link, which the ledger never"),
    ):
        c.synthesize("Hi")
    assert fake_aimlapi.requests == []


# ------------------------------------------------------------ 9. cached URLs are vetted


def _plant(c: OctaveClient, text: str, url: str) -> None:
    spend = c._spend
    key = spend.cache_key("aimlapi", "hume/octave-2", "Vince Douglas", "wav", text)
    planted = Speech(
        audio_url=url, format="wav", voice="Vince Douglas", model="hume/octave-2", characters=2
    )
    spend.store.cache_put(  # type: ignore[union-attr]
        key, planted.model_dump_json(), time.time() + 600
    )


def test_a_planted_file_url_in_the_cache_is_a_miss(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=600) as c:
        _plant(c, "Hi", secret.as_uri())
        speech = c.synthesize("Hi")
        again = c.synthesize("Hi")
    assert speech.audio_url in fake_aimlapi.issued
    assert (speech.cached, again.cached, again.audio_url) == (False, True, speech.audio_url)
    assert len(fake_aimlapi.tts_requests) == 1


def test_cli_out_never_copies_a_planted_cache_entry(
    capsys: pytest.CaptureFixture[str],
    api_env: FakeAIMLAPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_CACHE_TTL", "600")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    with OctaveClient() as c:
        _plant(c, "Hi", secret.as_uri())
        for url in ("https://cdn.example/a\nb.wav", "ftp://cdn.example/a.wav"):
            _plant(c, "Hi there", url)  # the last planted entry wins
    target = tmp_path / "out.wav"
    code, out, _ = cli(capsys, "say", "Hi", "--out", str(target))
    assert code == 0
    assert out.strip() in api_env.issued
    assert target.read_bytes().startswith(b"RIFF")
    code, out, _ = cli(capsys, "say", "Hi there")
    assert (code, out.strip() in api_env.issued) == (0, True)
    assert len(api_env.tts_requests) == 2


def test_raw_audio_saved_in_the_output_folder_is_still_served_from_the_cache(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path
) -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "
    fake_aimlapi.respond(200, wav, content_type="audio/wav")
    out_dir = tmp_path / "audio"
    with client(fake_aimlapi, data_dir=str(tmp_path), cache_ttl=600, output_dir=str(out_dir)) as c:
        first = c.synthesize("Hi")
        second = c.synthesize("Hi")
    assert first.audio_url.startswith(out_dir.absolute().as_uri() + "/speech-")
    assert (second.cached, second.audio_url) == (True, first.audio_url)
    assert len(fake_aimlapi.tts_requests) == 1


# ------------------------------------------------------------ 13, 14. stdin and --out ""


class _EndlessStdin:
    """A stdin whose bytes never end (``yes |``); counts what was read."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.read_bytes = 0
        self.buffer = self

    def read(self, n: int = -1) -> bytes:
        size = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= size
        self.read_bytes += size
        return b"y\n" * (size // 2) + b"y" * (size % 2)


def test_stdin_is_read_only_up_to_the_text_limit(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = _EndlessStdin(40_000_000)
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = cli(capsys, "say", "-")
    assert (code, out) == (2, "")
    assert err == (
        "octave-tools: error: stdin holds more than the 200,000-character limit of one call; "
        "shorten it, or raise OCTAVE_TOOLS_MAX_TEXT_CHARS.\n"
    )
    assert stdin.read_bytes <= 4 * (200_000 + 1)
    assert api_env.requests == []


def test_an_endless_stdin_is_refused_in_a_real_process(api_env: FakeAIMLAPI) -> None:
    proc = subprocess.Popen(
        [*CLI, "say", "-"],
        env=subprocess_env(api_env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def feed() -> None:
        chunk = b"y\n" * 32_768
        try:
            for _ in range(4_000):  # 256 MB if nobody stops reading
                proc.stdin.write(chunk)  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        writer.join(timeout=10)
    assert code == 2
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert b"stdin holds more than the 200,000-character limit of one call" in stderr
    assert api_env.requests == []


def test_empty_out_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], api_env: FakeAIMLAPI
) -> None:
    code, out, err = cli(capsys, "say", "Hi", "--out", "")
    assert (code, out) == (2, "")
    assert err == (
        "octave-tools: error: --out is empty; give a file name such as hello.wav, or - for "
        "stdout.\n"
    )
    assert api_env.requests == []


def test_cached_url_vetting_uses_the_settings(tmp_path: Path) -> None:
    # A Spend made straight from Settings (as the MCP server does) vets with its base URL.
    spend = Spend(Settings.load(data_dir=str(tmp_path), cache_ttl=60, environ={}))
    assert spend._safe_cached_url("https://cdn.example/a.wav")
    assert not spend._safe_cached_url("http://cdn.example/a.wav")
    assert not spend._safe_cached_url((tmp_path / "x.wav").as_uri())
