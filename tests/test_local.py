"""The offline local engine (eSpeak NG): real WAV files, voices, validation, concurrency, `auto`."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from octave_tools import (
    AsyncOctaveClient,
    ConfigurationError,
    InvalidInputError,
    OctaveClient,
    Speech,
    _files,
    _local,
)
from octave_tools.testing import FakeAIMLAPI
from octave_tools.voices import VoiceCatalogue

pytestmark = pytest.mark.skipif(
    not _local.is_available(), reason="the [local] extra is not installed"
)

SENTENCE = "The quick brown fox jumps over the lazy dog."
ANNOUNCEMENT = "octave-tools: no AIMLAPI_API_KEY set; using the offline local engine"


@dataclass(frozen=True)
class Clip:
    path: Path
    channels: int
    sample_width: int
    rate: int
    frames: bytes

    @property
    def seconds(self) -> float:
        return len(self.frames) / (self.sample_width * self.channels * self.rate)

    @property
    def rms(self) -> float:
        samples = array("h", self.frames)
        if sys.byteorder == "big":
            samples.byteswap()
        return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def file_of(speech: Speech | str) -> Path:
    url = speech if isinstance(speech, str) else speech.audio_url
    assert url.startswith("file://")
    return Path(url2pathname(urlsplit(url).path))


def clip(speech: Speech | str) -> Clip:
    path = file_of(speech)
    with path.open("rb") as fh:
        head = fh.read(12)
    assert head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    with wave.open(str(path), "rb") as w:
        assert w.getcomptype() == "NONE"
        return Clip(
            path, w.getnchannels(), w.getsampwidth(), w.getframerate(), w.readframes(w.getnframes())
        )


def output_dir() -> Path:
    return Path(os.environ["OCTAVE_TOOLS_OUTPUT_DIR"])


def written() -> list[Path]:
    folder = output_dir()
    return sorted(folder.iterdir()) if folder.exists() else []


def speak(**options: Any) -> Callable[..., Speech]:
    """``synthesize`` on a client made with ``options``, closed after the one call."""

    def call(text: Any, **kwargs: Any) -> Speech:
        with OctaveClient(**options) as c:
            return c.synthesize(text, **kwargs)

    return call


def catalogue_of(**options: Any) -> VoiceCatalogue | None:
    with OctaveClient(**options) as c:
        return c.voice_catalogue()


@pytest.fixture
def client() -> Iterator[OctaveClient]:
    with OctaveClient(engine="local") as c:
        yield c


@pytest.fixture
def no_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extra as if not installed: importlib finds no espeakng_loader."""
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)


@pytest.fixture
def fresh_announcement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local, "_announced", False)


@pytest.fixture
def fresh_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker pool of this test's own, so the test can wait for it to drain."""
    monkeypatch.setattr(_local, "_executor", None)
    yield
    if _local._executor is not None:
        _local._executor.shutdown(wait=True)


def drain_pool() -> None:
    _local._executor.shutdown(wait=True)  # type: ignore[union-attr]


# ------------------------------------------------------------------ the WAV


def test_writes_16_bit_mono_wav_at_the_library_rate(client: OctaveClient) -> None:
    audio = clip(client.synthesize(SENTENCE))
    assert (audio.channels, audio.sample_width, audio.rate) == (1, 2, 22_050)


def test_speech_is_audible_and_as_long_as_a_sentence(client: OctaveClient) -> None:
    audio = clip(client.synthesize(SENTENCE))
    assert 1.0 < audio.seconds < 10.0
    assert audio.rms > 300


def test_duration_grows_with_the_text(client: OctaveClient) -> None:
    short = clip(client.synthesize("Hello."))
    longer = clip(client.synthesize(SENTENCE))
    longest = clip(client.synthesize(" ".join([SENTENCE] * 3)))
    assert short.seconds < longer.seconds < longest.seconds
    assert longest.seconds > 2.5 * longer.seconds


def test_speech_record_says_local_free_and_where_the_file_is(client: OctaveClient) -> None:
    speech = client.synthesize(SENTENCE)
    assert (speech.engine, speech.model, speech.credits_used, speech.format) == (
        "local",
        "espeak-ng",
        0,
        "wav",
    )
    assert (speech.voice, speech.characters, speech.request_id) == ("en-us", len(SENTENCE), None)
    assert file_of(speech).parent == output_dir()
    assert "offline with the local engine (not Octave)" in speech.summary()


def test_every_call_writes_a_new_uniquely_named_file(client: OctaveClient) -> None:
    first = client.synthesize("Same words.")
    second = client.synthesize("Same words.")
    assert first.audio_url != second.audio_url
    assert written() == sorted([file_of(first), file_of(second)])
    assert all(p.suffix == ".wav" and p.name.startswith("speech-") for p in written())


def test_default_output_dir_is_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG_CACHE_HOME applies on Linux and other Unixes")
    monkeypatch.delenv("OCTAVE_TOOLS_OUTPUT_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    speech = speak(engine="local")("Hello.")
    assert file_of(speech).parent == tmp_path / "cache" / "octave-tools"


def test_relative_output_dir_still_gives_an_absolute_file_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OCTAVE_TOOLS_OUTPUT_DIR", "clips")
    speech = speak(engine="local")("Hello.")
    assert file_of(speech) == tmp_path / "clips" / file_of(speech).name
    assert clip(speech).rms > 0


def test_unicode_and_emoji_are_spoken(client: OctaveClient) -> None:
    audio = clip(client.synthesize("Café crème, naïve façade 😀 — ça marche.", voice="fr"))
    assert audio.seconds > 1.0 and audio.rms > 300


def test_a_nul_character_does_not_cut_off_the_rest_of_the_text(client: OctaveClient) -> None:
    head = clip(client.synthesize("Hello."))
    whole = clip(client.synthesize("Hello.\x00 And then many more words follow here."))
    assert whole.seconds > 2 * head.seconds


def test_audio_past_the_size_cap_is_refused_without_a_file(
    client: OctaveClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_local, "MAX_AUDIO_BYTES", 50_000)
    with pytest.raises(InvalidInputError, match="too long for the local engine") as info:
        client.synthesize(" ".join([SENTENCE] * 5))
    assert info.value.field == "text"
    assert written() == []


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("text", "kwargs", "field", "fragment"),
    [
        ("", {}, "text", "text is empty"),
        ("   \n", {}, "text", "text is empty"),
        (42, {}, "text", "must be a string"),
        ("Hello.", {"format": "mp3"}, "format", "WAV only"),
        ("Hello.", {"format": "ogg"}, "format", "Unknown format"),
        ("Hello.", {"voice": "  "}, "voice", "voice is empty"),
    ],
)
def test_bad_arguments_fail_before_any_file_is_written(
    client: OctaveClient, text: Any, kwargs: dict[str, str], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidInputError, match=fragment) as info:
        client.synthesize(text, **kwargs)
    assert info.value.field == field
    assert written() == []


def test_mp3_refusal_names_both_fixes(client: OctaveClient) -> None:
    with pytest.raises(InvalidInputError) as info:
        client.synthesize("Hello.", format="mp3")
    assert "'wav'" in info.value.message and "AIMLAPI_API_KEY" in info.value.message


def test_mp3_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "mp3")
    with pytest.raises(InvalidInputError, match="OCTAVE_TOOLS_FORMAT"):
        speak(engine="local")("Hello.")


def test_explicit_wav_overrides_an_mp3_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_FORMAT", "mp3")
    assert speak(engine="local")("Hello.", format="WAV").format == "wav"


# ------------------------------------------------------------------ voices


def test_catalogue_lists_the_languages_with_en_us_as_default() -> None:
    cat = _local.catalogue()
    assert (cat.model, cat.default) == ("espeak-ng", "en-us")
    assert {"en-us", "en-gb", "fr-fr", "de", "es", "cmn"} <= set(cat.voices)
    assert len(cat.voices) > 100
    assert list(cat.voices) == sorted(set(cat.voices))


def test_catalogue_is_built_once() -> None:
    assert _local.catalogue() is _local.catalogue()


def test_client_catalogue_follows_the_engine() -> None:
    local = catalogue_of(engine="local")
    remote = catalogue_of(engine="aimlapi")
    assert local is not None and local.model == "espeak-ng"
    assert remote is not None and remote.model == "hume/octave-2"


def test_every_listed_voice_speaks() -> None:
    cat = _local.catalogue()
    with OctaveClient(engine="local") as c:
        for voice in cat.voices:
            assert clip(c.synthesize("a b c 1 2 3", voice=voice)).rms > 100, voice


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        ("EN-US", "en-us"),
        (" en-us ", "en-us"),
        ("fr", "fr-fr"),
        ("en", "en-gb"),
        ("es-mx", "es-419"),
        ("zh", "cmn"),
        ("English (America)", "en-us"),
        ("en-us+F3", "en-us+f3"),
        ("en-us+female3", "en-us+f3"),
    ],
)
def test_voice_spellings_resolve_to_the_listed_name(
    client: OctaveClient, asked: str, used: str
) -> None:
    assert client.synthesize("Hello.", voice=asked).voice == used


def test_a_variant_changes_the_sound(client: OctaveClient) -> None:
    plain = clip(client.synthesize(SENTENCE, voice="en-us"))
    female = clip(client.synthesize(SENTENCE, voice="en-us+f3"))
    assert plain.frames != female.frames


def test_configured_voice_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_TOOLS_VOICE", "de")
    assert speak(engine="local")("Guten Tag.").voice == "de"


def test_unknown_voice_suggests_close_names(client: OctaveClient) -> None:
    with pytest.raises(InvalidInputError, match=r"Did you mean 'en-us'") as info:
        client.synthesize("Hello.", voice="en-uss")
    assert info.value.field == "voice"
    assert written() == []


def test_an_octave_voice_says_it_needs_the_key(client: OctaveClient) -> None:
    with pytest.raises(InvalidInputError, match="Octave voice; it needs AIMLAPI_API_KEY"):
        client.synthesize("Hello.", voice="ava song")


def test_unknown_variant_suggests_close_ones(client: OctaveClient) -> None:
    with pytest.raises(InvalidInputError, match=r"Did you mean 'en-us\+f[0-9]'"):
        client.synthesize("Hello.", voice="en-us+f9")


# ------------------------------------------------------------------ concurrency


# Clearly different lengths, so a clip holding another call's audio would show.
TEXTS = [
    "Yes.",
    "Two roads diverged in a yellow wood.",
    " ".join([SENTENCE] * 2),
    " ".join([SENTENCE] * 4),
]


def reference_seconds() -> dict[str, float]:
    with OctaveClient(engine="local") as c:
        return {t: clip(c.synthesize(t)).seconds for t in TEXTS}


def assert_each_clip_matches_its_text(results: list[Speech], texts: list[str]) -> None:
    # eSpeak NG is not bit-for-bit repeatable (lengths vary by a few ms), so compare durations.
    expected = reference_seconds()
    ordered = [expected[t] for t in TEXTS]
    assert all(a * 1.5 < b for a, b in pairwise(ordered))
    assert len(results) == len(texts)
    for speech, text in zip(results, texts, strict=True):
        audio = clip(speech)
        assert audio.seconds == pytest.approx(expected[text], rel=0.1), text
        assert audio.rms > 300
    assert len({s.audio_url for s in results}) == len(texts)


def test_threads_each_get_the_audio_of_their_own_text() -> None:
    texts = TEXTS * 4
    with OctaveClient(engine="local") as c, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(c.synthesize, texts))
    assert_each_clip_matches_its_text(results, texts)


async def test_asyncio_tasks_each_get_the_audio_of_their_own_text(fresh_pool: None) -> None:
    texts = TEXTS * 4
    async with AsyncOctaveClient(engine="local") as c:
        results = await asyncio.gather(*(c.synthesize(t) for t in texts))
    await asyncio.to_thread(assert_each_clip_matches_its_text, list(results), texts)


async def test_async_synthesis_leaves_the_event_loop_free(fresh_pool: None) -> None:
    _local.catalogue()  # load the library first, so only synthesis waits below
    async with AsyncOctaveClient(engine="local") as c:
        with _local._LOCK:  # the engine is busy: synthesis must wait off the loop
            task = asyncio.create_task(c.synthesize("Hello."))
            # Were the wait on the loop's thread, this sleep would never return (deadlock).
            await asyncio.sleep(0.05)
            assert not task.done()
        speech = await task
    assert clip(speech).rms > 0


async def test_cancelled_before_it_starts_does_no_work(
    fresh_pool: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []
    real_write = _files.write_atomic

    def counting_write(path: Path, data: bytes) -> Path:
        writes.append(path)
        return real_write(path, data)

    monkeypatch.setattr("octave_tools._local.write_atomic", counting_write)
    _local.catalogue()
    async with AsyncOctaveClient(engine="local") as c:
        with _local._LOCK:  # the engine is busy, so the job waits in its worker thread
            task = asyncio.create_task(c.synthesize("Hello."))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        drain_pool()
    assert (writes, written()) == ([], [])


async def test_cancelled_after_the_write_removes_the_file(
    fresh_pool: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrote = threading.Event()
    go_on = threading.Event()
    real_write = _files.write_atomic

    def write_then_wait(path: Path, data: bytes) -> Path:
        result = real_write(path, data)
        wrote.set()
        go_on.wait(10)
        return result

    monkeypatch.setattr("octave_tools._local.write_atomic", write_then_wait)
    async with AsyncOctaveClient(engine="local") as c:
        task = asyncio.create_task(c.synthesize("Hello."))
        assert await asyncio.to_thread(wrote.wait, 10)
        assert [p.suffix for p in written()] == [".wav"]
        task.cancel()
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        drain_pool()
        for _ in range(500):  # the clean-up runs as a loop callback once the thread is done
            if not written():
                break
            await asyncio.sleep(0.01)
    assert written() == []


# ------------------------------------------------------------------ engine choice


def test_auto_with_key_and_extra_uses_the_api(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIMLAPI_API_KEY", fake_aimlapi.api_key)
    monkeypatch.setenv("AIMLAPI_BASE_URL", fake_aimlapi.base_url)
    speech = speak()("Hello.")
    assert (speech.engine, len(fake_aimlapi.tts_requests)) == ("aimlapi", 1)
    assert ANNOUNCEMENT not in capsys.readouterr().err


def test_auto_with_key_and_no_extra_uses_the_api(
    fake_aimlapi: FakeAIMLAPI, monkeypatch: pytest.MonkeyPatch, no_local_extra: None
) -> None:
    monkeypatch.setenv("AIMLAPI_API_KEY", fake_aimlapi.api_key)
    monkeypatch.setenv("AIMLAPI_BASE_URL", fake_aimlapi.base_url)
    speech = speak()("Hello.")
    assert (speech.engine, len(fake_aimlapi.tts_requests)) == ("aimlapi", 1)


def test_auto_without_key_uses_the_local_engine_and_says_so_once(
    fresh_announcement: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with OctaveClient() as c:
        first = c.synthesize("Hello.")
        second = speak()("Hello again.")
    captured = capsys.readouterr()
    assert (first.engine, second.engine) == ("local", "local")
    assert captured.err.count(ANNOUNCEMENT) == 1
    assert "not Octave" in captured.err
    assert captured.out == ""


async def test_async_auto_without_key_uses_the_local_engine(
    fresh_announcement: None, fresh_pool: None, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncOctaveClient() as c:
        speech = await c.synthesize("Hello.")
    assert speech.engine == "local" and clip(speech).rms > 0
    assert capsys.readouterr().err.count(ANNOUNCEMENT) == 1


def test_auto_without_key_or_extra_names_both_ways_out(no_local_extra: None) -> None:
    with pytest.raises(ConfigurationError) as info:
        speak()("Hello.")
    assert "AIMLAPI_API_KEY" in info.value.message
    assert "octave-tools[local]" in info.value.message
    assert written() == []


def test_auto_without_key_or_extra_lists_the_octave_voices(no_local_extra: None) -> None:
    cat = catalogue_of()
    assert cat is not None and cat.model == "hume/octave-2"


def test_auto_without_key_lists_the_local_voices() -> None:
    cat = catalogue_of()
    assert cat is not None and cat.model == "espeak-ng"


def test_explicit_local_is_used_even_with_a_key_and_not_announced(
    fresh_announcement: None, capsys: pytest.CaptureFixture[str]
) -> None:
    speech = speak(api_key="sk-unused", engine="local")("Hello.")
    assert speech.engine == "local"
    assert ANNOUNCEMENT not in capsys.readouterr().err


def test_explicit_local_without_the_extra_says_how_to_install(
    no_local_extra: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_local, "_engine", None)
    monkeypatch.setattr(_local, "_voices", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'octave-tools\[local\]'"):
        speak(engine="local")("Hello.")


def test_explicit_aimlapi_without_key_does_not_fall_back(no_local_extra: None) -> None:
    with pytest.raises(ConfigurationError, match="AIMLAPI_API_KEY"):
        speak(engine="aimlapi")("Hello.")
    assert written() == []


# ------------------------------------------------------------------ in a fresh process


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIMLAPI_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )


def test_is_available_loads_nothing() -> None:
    done = run_python(
        "import sys\n"
        "from octave_tools import _local\n"
        "print(_local.is_available(), 'espeakng_loader' in sys.modules, _local._engine)\n"
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True False None")


def test_a_fresh_process_keeps_stdout_clean_and_announces_once() -> None:
    done = run_python(
        "from octave_tools import OctaveClient\n"
        "c = OctaveClient()\n"
        "c.synthesize('Hello.'); c.synthesize('Hello again.')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.count(ANNOUNCEMENT) == 1


def test_a_data_path_too_long_for_the_library_still_works(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("espeakng_loader")
    assert spec is not None and spec.submodule_search_locations
    real = Path(next(iter(spec.submodule_search_locations)))
    deep = Path(tempfile.mkdtemp(prefix="octave-long-"))
    temp = Path(tempfile.mkdtemp(prefix="octave-tmp-"))
    try:
        folder = deep / ("x" * 120) / ("y" * 60)
        folder.mkdir(parents=True)
        (folder / "espeakng_loader").symlink_to(real, target_is_directory=True)
        done = run_python(
            "import espeakng_loader\n"
            "from octave_tools import OctaveClient\n"
            "print(len(espeakng_loader.get_data_path()))\n"
            "print(OctaveClient(engine='local').synthesize('Still speaking.').audio_url)\n",
            PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
            TMPDIR=str(temp),
        )
        assert done.returncode == 0, done.stderr
        length, url = done.stdout.split()
        assert int(length) >= 180  # past the length at which the library gives up
        assert clip(url).rms > 300
        assert list(temp.iterdir()) == []  # the short link was removed at exit
    finally:
        shutil.rmtree(deep)
        shutil.rmtree(temp)
