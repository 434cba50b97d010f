"""The offline local engine: eSpeak NG from the ``espeakng-loader`` wheel, driven through ctypes.

Installed with ``pip install 'octave-tools[local]'`` (eSpeak NG is GPL-3.0-or-later,
so it stays an optional extra). The wheel carries the library and its data: nothing
is downloaded at run time. Output is 16-bit mono WAV at the library's rate (22,050 Hz).

The library keeps one synthesis callback and one voice for the whole process and is
not thread-safe, so there is one loaded library per process, every call into it holds
``_LOCK``, and voice, rate and callback are set again on every call.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import importlib
import importlib.util
import io
import os
import sys
import threading
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._files import new_audio_path, write_atomic
from ._protocol import MAX_AUDIO_BYTES, validate_text
from ._settings import ENV_API_KEY, ENV_FORMAT, Settings
from .errors import ConfigurationError, InvalidInputError, OctaveError
from .models import Speech
from .voices import DEFAULT_MODEL, VOICES, VoiceCatalogue, _fold, resolve_format

if TYPE_CHECKING:  # imported where used: a one-shot CLI call needs neither (~40 ms)
    import asyncio
    import concurrent.futures

__all__ = [
    "DEFAULT_VOICE",
    "MODEL",
    "announce_auto_choice",
    "asynthesize",
    "catalogue",
    "is_available",
    "synthesize",
]

MODEL = "espeak-ng"
DEFAULT_VOICE = "en-us"
RATE_WPM = 175
_PACKAGE = "espeakng_loader"
_OCTAVE_VOICES = frozenset(_fold(v) for v in VOICES)
_INSTALL_HINT = "pip install 'octave-tools[local]'"

# The library copies its data path into a fixed buffer and fails (or, without the
# don't-exit flag, calls exit(1)) from about 160 bytes; longer paths go through a symlink.
_MAX_DATA_PATH = 100

# From speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_EE_OK = 0


class _VoiceStruct(ctypes.Structure):
    """``espeak_VOICE``."""

    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)*, then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


# int callback(short *wav, int numsamples, espeak_EVENT *events); non-zero aborts.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class _VoiceInfo:
    name: str
    identifier: str
    languages: tuple[tuple[int, str], ...]


class _Espeak:
    """The one loaded eSpeak NG library of this process. Call only while holding ``_LOCK``."""

    def __init__(self, lib: ctypes.CDLL, sample_rate: int, data_path: str) -> None:
        self._lib = lib
        self.sample_rate = sample_rate
        self.data_path = data_path
        self._chunks: list[bytes] = []
        self._size = 0
        self._overflow = False
        # The library keeps only a raw pointer: this object must live as long as the process.
        self._callback = _SynthCallback(self._on_audio)

    def _on_audio(self, wav: int | None, numsamples: int, events: int | None) -> int:
        if not wav or numsamples <= 0:
            return 0
        if self._size + 2 * numsamples > MAX_AUDIO_BYTES:
            self._overflow = True
            return 1
        self._chunks.append(ctypes.string_at(wav, 2 * numsamples))
        self._size += 2 * numsamples
        return 0

    def list_voices(self, languages: bytes | None = None) -> list[_VoiceInfo]:
        """The library's voices, or its variants with ``languages=b"variant"``."""
        spec = None
        keep = None
        if languages is not None:
            keep = ctypes.create_string_buffer(languages)
            spec = ctypes.byref(_VoiceStruct(languages=ctypes.addressof(keep)))
        found = self._lib.espeak_ListVoices(spec)
        voices: list[_VoiceInfo] = []
        # The array lives in a static buffer that the next call overwrites: copy it now.
        for i in range(10_000):
            if not found[i]:
                break
            v = found[i].contents
            voices.append(
                _VoiceInfo(
                    name=(v.name or b"").decode("utf-8", "replace").strip(),
                    identifier=(v.identifier or b"").decode("utf-8", "replace"),
                    languages=_parse_languages(v.languages),
                )
            )
        del keep
        return voices

    def render(self, text: str, voice: str) -> bytes:
        """16-bit native-endian PCM of ``text`` spoken by ``voice`` (a library voice name)."""
        lib = self._lib
        self._chunks, self._size, self._overflow = [], 0, False
        # Another user of the same library in this process may have changed any of these.
        lib.espeak_SetSynthCallback(self._callback)
        if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
            raise OctaveError(
                f"eSpeak NG could not load voice {voice!r}. Its data may be damaged; reinstall "
                f"with pip install --force-reinstall 'octave-tools[local]'."
            )
        lib.espeak_SetParameter(_PARAM_RATE, RATE_WPM, 0)
        # A NUL would end the C string early and silently drop the rest of the text.
        data = text.replace("\0", " ").encode("utf-8")
        status = lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        pcm = b"".join(self._chunks)
        self._chunks = []
        if self._overflow:
            minutes = MAX_AUDIO_BYTES / (2 * self.sample_rate * 60)
            raise InvalidInputError(
                f"text is too long for the local engine: its speech would pass {minutes:.0f} "
                "minutes. Split it into shorter parts and synthesise each.",
                field="text",
            )
        if status != _EE_OK:
            raise OctaveError(f"eSpeak NG failed to synthesise the text (status {status}).")
        return pcm


def _parse_languages(address: int | None) -> tuple[tuple[int, str], ...]:
    out: list[tuple[int, str]] = []
    if not address:
        return ()
    while True:
        priority = ctypes.c_ubyte.from_address(address).value
        if priority == 0:
            return tuple(out)
        code = ctypes.string_at(address + 1)
        out.append((priority, code.decode("ascii", "replace")))
        address += len(code) + 2


@dataclass(frozen=True)
class _Voices:
    """The catalogue plus what maps a user's spelling onto the library's names."""

    catalogue: VoiceCatalogue
    identifiers: dict[str, str]  # catalogue name -> library identifier
    aliases: dict[str, str]  # folded other spelling -> catalogue name
    variants: dict[str, str]  # folded variant spelling -> variant file name


_LOCK = threading.Lock()  # guards the globals below and every call into the library
_engine: _Espeak | None = None
_voices: _Voices | None = None
_ANNOUNCE_LOCK = threading.Lock()
_announced = False
_EXECUTOR_LOCK = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def is_available() -> bool:
    """Whether the ``local`` extra is installed (cheap: nothing is imported or loaded)."""
    try:
        return importlib.util.find_spec(_PACKAGE) is not None
    except (ImportError, ValueError):
        return False


def announce_auto_choice() -> None:
    """Say once per process, on stderr, that ``auto`` picked the local engine."""
    global _announced
    with _ANNOUNCE_LOCK:
        if _announced:
            return
        _announced = True
    # stderr, never stdout: the stdio MCP server owns stdout.
    if sys.stderr is not None:
        print(
            f"octave-tools: no {ENV_API_KEY[0]} set; using the offline local engine "
            f"(eSpeak NG), not Octave ({DEFAULT_MODEL}).",
            file=sys.stderr,
            flush=True,
        )


def catalogue() -> VoiceCatalogue:
    """The local engine's voices: one per eSpeak NG language or dialect."""
    return _loaded_voices().catalogue


def synthesize(text: str, *, voice: str | None, format: str | None, settings: Settings) -> Speech:
    """Speak ``text`` into a new WAV file in the output directory; blocks the caller.

    Raises InvalidInputError before any work for bad arguments, ConfigurationError
    when the extra is missing or broken.
    """
    return _synthesize(text, voice, format, settings, None)


async def asynthesize(
    text: str, *, voice: str | None, format: str | None, settings: Settings
) -> Speech:
    """``synthesize`` in a worker thread, so the event loop keeps running.

    If the caller is cancelled, the work is skipped when it has not started, and a
    file written anyway is deleted: no file is left that nobody was told about.
    """
    import asyncio

    cancelled = threading.Event()
    job = functools.partial(_synthesize, text, voice, format, settings, cancelled)
    future = asyncio.get_running_loop().run_in_executor(_worker_pool(), job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancelled.set()
        future.add_done_callback(_discard)
        raise


class _Skipped(Exception):
    """The async caller was cancelled before the work began."""


def _discard(future: asyncio.Future[Speech]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    with contextlib.suppress(OSError):
        _file_of(future.result()).unlink()


def _file_of(speech: Speech) -> Path:
    from urllib.request import url2pathname  # imports http.client: ~20 ms

    return Path(url2pathname(urlsplit(speech.audio_url).path))


def _synthesize(
    text: str,
    voice: str | None,
    format: str | None,
    settings: Settings,
    cancelled: threading.Event | None,
) -> Speech:
    text = validate_text(text)
    _require_wav(format, settings)
    voices = _loaded_voices()
    name, library_name = _resolve_voice(voices, voice if voice is not None else settings.voice)
    with _LOCK:
        if cancelled is not None and cancelled.is_set():
            raise _Skipped
        engine = _load()
        pcm = engine.render(text, library_name)
        rate = engine.sample_rate
    if cancelled is not None and cancelled.is_set():
        raise _Skipped
    path = write_atomic(new_audio_path(settings.output_dir, "wav"), _wav_bytes(pcm, rate))
    return Speech(
        audio_url=path.absolute().as_uri(),
        format="wav",
        voice=name,
        model=MODEL,
        characters=len(text),
        credits_used=0,
        request_id=None,
        engine="local",
    )


def _require_wav(format: str | None, settings: Settings) -> None:
    from_settings = format is None and settings.format is not None
    fmt = resolve_format(format if format is not None else settings.format)
    if fmt == "wav":
        return
    where = (
        f" ({fmt} is the configured default: change {ENV_FORMAT[0]} or the client's format=)"
        if from_settings
        else ""
    )
    raise InvalidInputError(
        f"The local engine writes WAV only; it has no {fmt.upper()} encoder offline{where}. "
        f"Ask for format 'wav', or set {ENV_API_KEY[0]} to get {fmt} from {DEFAULT_MODEL}.",
        field="format",
    )


def _resolve_voice(voices: _Voices, voice: str | None) -> tuple[str, str]:
    """(catalogue spelling, library voice name) for ``voice``; the default when None."""
    if voice is None:
        voice = voices.catalogue.default
    if not voice.strip():
        raise InvalidInputError(
            "voice is empty. Leave it out to use the default voice, "
            "or pass one of the names from list_voices.",
            field="voice",
        )
    base, plus, variant = voice.strip().partition("+")
    name = voices.aliases.get(_fold(base))
    if name is None:
        if _fold(base) in _OCTAVE_VOICES:
            raise InvalidInputError(
                f"{voice!r} is an Octave voice; it needs {ENV_API_KEY[0]} ({DEFAULT_MODEL}). "
                f"The offline local engine speaks languages such as {voices.catalogue.default!r}, "
                "'fr-fr' or 'de': call list_voices for them all.",
                field="voice",
            )
        name = voices.catalogue.resolve(base)
    library_name = voices.identifiers[name]
    if not plus:
        return name, library_name
    found = voices.variants.get(_fold(variant))
    if found is None:
        import difflib

        known = sorted(set(voices.variants.values()), key=str.casefold)
        matches = difflib.get_close_matches(_fold(variant), list(voices.variants), n=6, cutoff=0.5)
        close = list(dict.fromkeys(voices.variants[m] for m in matches))[:3]
        hint = (
            "Did you mean " + " or ".join(repr(f"{name}+{c}") for c in close) + "?"
            if close
            else f"Valid variants: {', '.join(known)}."
        )
        raise InvalidInputError(
            f"Unknown voice variant {variant!r} in {voice!r} for model {MODEL!r}. {hint} "
            f"A voice is a language from list_voices, optionally with +variant (e.g. 'en-us+f3').",
            field="voice",
        )
    return f"{name}+{found}", f"{library_name}+{found}"


def _wav_bytes(pcm: bytes, rate: int) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", pcm)
        samples.byteswap()
        pcm = samples.tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def _worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    # Our own small pool: waiting on _LOCK never starves the loop's default executor.
    global _executor
    with _EXECUTOR_LOCK:
        if _executor is None:
            import concurrent.futures

            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="octave-tools-local"
            )
        return _executor


def _loaded_voices() -> _Voices:
    global _voices
    with _LOCK:
        if _voices is None:
            engine = _load()
            speaking = [v for v in engine.list_voices() if _has_dictionary(engine.data_path, v)]
            _voices = _build_voices(speaking, engine.list_voices(b"variant"))
        return _voices


def _load() -> _Espeak:
    """The library, loaded and initialised on first use. Hold ``_LOCK``."""
    global _engine
    if _engine is not None:
        return _engine
    if not is_available():
        raise ConfigurationError(
            f"The local engine is not installed. Install it with {_INSTALL_HINT}, "
            f"or set {ENV_API_KEY[0]} to use {DEFAULT_MODEL}."
        )
    try:
        loader = importlib.import_module(_PACKAGE)
        lib = ctypes.CDLL(str(loader.get_library_path()))
        data_path = _short_path(str(loader.get_data_path()))
    except (OSError, RuntimeError, AttributeError) as exc:
        raise ConfigurationError(
            f"The local engine could not load eSpeak NG ({exc}). Reinstall it with "
            f"pip install --force-reinstall 'octave-tools[local]'."
        ) from None
    _declare(lib)
    rate = int(
        lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
        )
    )
    # With the don't-exit flag a failure is 0 (without it, -1): both mean no engine.
    if rate <= 0:
        raise ConfigurationError(
            f"eSpeak NG could not start with its data at {data_path!r}. Reinstall it with "
            f"pip install --force-reinstall 'octave-tools[local]'."
        )
    _engine = _Espeak(lib, rate, data_path)
    return _engine


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))


def _short_path(data_path: str) -> str:
    """``data_path``, or a short symlink to it in a private temp dir when it is too long."""
    if len(os.fsencode(data_path)) <= _MAX_DATA_PATH:
        return data_path
    import tempfile

    link_dir = tempfile.mkdtemp(prefix="octave-tools-")
    link = os.path.join(link_dir, "data")
    os.symlink(data_path, link, target_is_directory=True)
    atexit.register(_remove_link, link_dir, link)
    if len(os.fsencode(link)) > _MAX_DATA_PATH:
        raise OSError(f"the temp directory path {link_dir!r} is too long; set TMPDIR shorter")
    return link


def _remove_link(link_dir: str, link: str) -> None:
    # Remove the link itself, never what it points to.
    with contextlib.suppress(OSError):
        os.unlink(link)
        os.rmdir(link_dir)


def _has_dictionary(data_path: str, voice: _VoiceInfo) -> bool:
    """Whether the data holds the voice's dictionary; without it the voice says nothing.

    The wheel leaves out a few (e.g. Faroese). The rule is the library's: the voice
    file's ``dictionary`` line, else its first language code up to the first hyphen.
    """
    name = voice.languages[0][1].split("-")[0] if voice.languages else ""
    try:
        spec = Path(data_path, "lang", *voice.identifier.split("/")).read_text("utf-8", "replace")
    except OSError:
        return True  # cannot tell: let the library decide
    for line in spec.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "dictionary":
            name = words[1]
    return not name or Path(data_path, f"{name}_dict").is_file()


def _build_voices(voices: list[_VoiceInfo], variants: list[_VoiceInfo]) -> _Voices:
    """Name each voice by its main language code; other spellings become aliases."""
    identifiers: dict[str, str] = {}
    for v in voices:
        tail = v.identifier.rsplit("/", 1)[-1].lower()
        primary = v.languages[0][1].lower() if v.languages else tail
        # Two voices can share a main language (Cantonese, Jyutping); the file name is unique.
        name = primary if primary not in identifiers else tail
        if name and name not in identifiers:
            identifiers[name] = v.identifier
    by_identifier = {ident: name for name, ident in identifiers.items()}

    # Better-ranked spellings win: the library's own language priorities decide, e.g., "en".
    ranked: dict[str, tuple[tuple[int, int], str]] = {}

    def offer(spelling: str, rank: tuple[int, int], name: str) -> None:
        key = _fold(spelling)
        if key and (key not in ranked or rank < ranked[key][0]):
            ranked[key] = (rank, name)

    for v in voices:
        own = by_identifier.get(v.identifier)
        if own is None:
            continue
        offer(own, (0, 0), own)
        offer(v.identifier, (1, 0), own)
        offer(v.identifier.rsplit("/", 1)[-1], (1, 1), own)
        for priority, code in v.languages:
            offer(code, (2, priority), own)
        offer(v.name, (3, 0), own)
    aliases = {key: name for key, (_, name) in ranked.items()}

    variant_names: dict[str, str] = {}
    for v in variants:
        file_name = v.identifier.rsplit("/", 1)[-1]
        variant_names.setdefault(_fold(file_name), file_name)
    for v in variants:
        variant_names.setdefault(_fold(v.name), v.identifier.rsplit("/", 1)[-1])

    if not identifiers:
        raise ConfigurationError(
            "eSpeak NG lists no voices; its data is missing. Reinstall it with "
            "pip install --force-reinstall 'octave-tools[local]'."
        )
    names = tuple(sorted(identifiers))
    default = DEFAULT_VOICE if DEFAULT_VOICE in identifiers else names[0]
    return _Voices(VoiceCatalogue(MODEL, names, default), identifiers, aliases, variant_names)
