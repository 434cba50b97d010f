"""A faithful fake of the AIML API text-to-speech endpoint, for your tests and ours.

It is a real HTTP server on 127.0.0.1 and a free port, in a background thread:

    from octave_tools import OctaveClient
    from octave_tools.testing import FakeAIMLAPI

    with FakeAIMLAPI() as api:
        client = OctaveClient(api_key=api.api_key, base_url=api.base_url)
        speech = client.synthesize("Hello")
        assert api.tts_requests[0].json["text"] == "Hello"
        assert speech.audio_url in api.issued

It serves every model in ``octave_tools.MODELS``: it checks the bearer key and
validates each body against that model's documented request schema (the packaged
``tts-models.json``), refusing undocumented fields as the real API does (401, 400
``Body validation error!``, 404 for an unknown model). It answers 201 with
``{"audio": {"url": ...}, "meta": {"usage": {"credits_used": ...}}}`` (or the newer
200 / string shape) -- or, for the models whose pages show it (Deepgram,
ElevenLabs), raw audio when ``stream`` is true or left out -- serves the audio it
"generated" at that URL, records every request, and can be told to misbehave for the next calls:
``fail(429, retry_after="1")``, ``delay(2.0)``, ``drop()``, ``malformed()``,
``html(502)``, ``no_url()``, ``respond(...)`` for anything else; ``latency`` delays every
answer. Its audio is real and joinable (``make_audio``), 24 ms per character. With pytest, the
``fake_aimlapi`` fixture gives a started instance.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import math
import random
import struct
import threading
import time
import uuid
import wave
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import TracebackType
from typing import Any, Literal

from .catalogue import MODELS, ModelSpec

__all__ = [
    "SECONDS_PER_CHARACTER",
    "FakeAIMLAPI",
    "Fault",
    "RecordedRequest",
    "make_audio",
    "request_schema",
    "schema_errors",
]

CREDITS_PER_CHAR = 125
USD_PER_CREDIT = 1 / 2_000_000


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as it arrived."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any
    received_at: float
    peer: tuple[str, int] = ("", 0)
    """The client's address and port: requests on one kept-alive connection share it."""


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) a normal answer to one /tts request.

    ``kind``: ``"ok"`` answers normally (after ``delay``), ``"status"`` answers
    ``status`` with ``body`` and ``headers``, ``"drop"`` closes the connection
    without a response.
    """

    kind: Literal["ok", "status", "drop"] = "ok"
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


def _error_body(status: int, message: str, path: str = "/v1/tts") -> bytes:
    return json.dumps(
        {
            "message": message,
            "path": path,
            "requestId": str(uuid.uuid4()),
            "statusCode": status,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
    ).encode()


SECONDS_PER_CHARACTER = 0.024
"""How long the fake's audio is per character of text: a part's length is checkable."""
_RATE = 24_000  # every format the fake answers is 24 kHz mono
_SAMPLES_PER_CHARACTER = round(_RATE * SECONDS_PER_CHARACTER)  # 576


def _tone_wav(samples: int, rate: int = _RATE) -> bytes:
    period = bytes(  # a 400 Hz tone: 60 samples a period at 24 kHz
        b for i in range(60) for b in struct.pack("<h", int(8000 * math.sin(2 * math.pi * i / 60)))
    )
    data = (period * (samples // 60 + 1))[: samples * 2]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return buf.getvalue()


# MPEG-2 layer III, 32 kbit/s, 24 kHz, mono, no CRC: 96-byte frames of 576 samples (24 ms,
# one per character). All-zero side info and main data: a decoder plays silence.
_MP3_HEADER = b"\xff\xf3\x44\xc0"
_MP3_FRAME = _MP3_HEADER + bytes(92)


# An LAME-style "Info" frame (no audio) after an ID3v2 tag, and an ID3v1 tag at the end,
# as encoders write them: a joiner must drop all three from every part.
def _mp3_info_frame(frames: int) -> bytes:
    return _MP3_HEADER + bytes(9) + b"Info" + struct.pack(">II", 1, frames) + bytes(75)


_ID3V2 = b"ID3\x03\x00\x00\x00\x00\x00\x15" + b"TIT2\x00\x00\x00\x0b\x00\x00\x00fake audio"
_ID3V1 = b"TAG" + b"fake audio".ljust(125, b"\0")
# A steady silent AAC-LC frame in ADTS (24 kHz mono, 1,024 samples), as FFmpeg encodes it.
_AAC_FRAME = bytes.fromhex("fff15840017ffc01182007")


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _flac_silence(samples: int, block: int = 4096) -> bytes:
    """A valid FLAC stream (24 kHz mono 16-bit) of ``samples`` of silence: constant subframes."""
    info = struct.pack(">HH", block, block) + bytes(6)  # min/max block; frame sizes unknown
    packed = (_RATE << 44) | (0 << 41) | (15 << 36) | samples  # rate, channels-1, bits-1, total
    info += packed.to_bytes(8, "big") + bytes(16)  # no MD5
    out = bytearray(b"fLaC" + bytes([0x80, 0, 0, len(info)]) + info)
    for number, start in enumerate(range(0, samples, block)):
        size = min(block, samples - start)
        # Fixed blocking; block size 4096 (code 12) or 16-bit size-1 at the end (code 7);
        # rate from STREAMINFO; mono; 16 bits; frame number as UTF-8-style bytes.
        header = bytearray(b"\xff\xf8")
        header.append((12 if size == block else 7) << 4)
        header.append(0x08)
        header += chr(number).encode("utf-8", "surrogatepass")
        if size != block:
            header += struct.pack(">H", size - 1)
        header.append(_crc8(bytes(header)))
        frame = bytes(header) + b"\x00\x00\x00"  # a CONSTANT subframe of value 0
        out += frame + struct.pack(">H", _crc16(frame))
    return bytes(out)


def make_audio(fmt: str, characters: int) -> bytes:
    """Audio like the fake's answer for a text of ``characters`` characters, in ``fmt``.

    Every format is real, joinable audio, ``SECONDS_PER_CHARACTER`` long per character
    (AAC to the nearest 1,024-sample frame): WAV (a tone), raw 16-bit PCM, MP3 frames
    (with an ID3v2 tag, an Info frame and an ID3v1 tag), Ogg Opus, FLAC and AAC (ADTS),
    all 24 kHz mono.
    """
    samples = max(1, characters) * _SAMPLES_PER_CHARACTER
    if fmt == "mp3":
        frames = samples // 576
        return _ID3V2 + _mp3_info_frame(frames) + _MP3_FRAME * frames + _ID3V1
    if fmt == "pcm":
        return _tone_wav(samples)[44:]
    if fmt == "opus":
        from ._join import SILENT_OPUS_PACKET, opus_stream

        packets = -(-samples * 2 // 960)  # 20 ms packets at 48 kHz, the end trimmed
        serial = random.getrandbits(32)
        return opus_stream([SILENT_OPUS_PACKET] * packets, 960, serial, total=samples * 2)
    if fmt == "flac":
        return _flac_silence(samples)
    if fmt == "aac":
        return _AAC_FRAME * max(1, round(samples / 1024))
    return _tone_wav(samples)


_AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "pcm": "audio/L16",
}


def _audio_bytes(fmt: str, characters: int) -> bytes:
    return make_audio(fmt if fmt in _AUDIO_TYPES else "wav", characters)


# ---------------------------------------------------------------- request schemas


@functools.lru_cache(maxsize=1)
def _schemas() -> dict[str, Any]:
    text = resources.files("octave_tools").joinpath("_data/tts-models.json").read_text("utf-8")
    models: dict[str, Any] = json.loads(text)["models"]
    return models


def request_schema(model: str) -> dict[str, Any] | None:
    """The documented JSON Schema of ``model``'s request body (None if not documented)."""
    entry = _schemas().get(model)
    return None if entry is None else dict(entry["request_schema"])


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _type_ok(value: object, expected: str) -> bool:
    if isinstance(value, bool) and expected != "boolean":
        return False
    if expected == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(expected, (object,)))


def schema_errors(schema: Mapping[str, Any], value: object, where: str = "") -> list[str]:
    """What is wrong with ``value`` under ``schema``, as the API would say it.

    Covers the part of JSON Schema the documented request schemas use (type, enum,
    minLength, maxLength, minimum, maximum, required, properties, items, minItems,
    maxItems, anyOf). Objects take no property their schema does not list: the real
    API refuses undocumented fields.
    """
    name = where or "the body"
    if "anyOf" in schema:
        branches = [schema_errors(b, value, where) for b in schema["anyOf"]]
        if all(branches):
            return [f"{name} matches none of its allowed forms ({branches[0][0]})"]
    expected = schema.get("type")
    if isinstance(expected, str) and not _type_ok(value, expected):
        return [f"{name} must be of type {expected}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{name} must be one of: {', '.join(str(v) for v in schema['enum'])}"]
    problems: list[str] = []
    if isinstance(value, str):
        low, high = schema.get("minLength"), schema.get("maxLength")
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            problems.append(f"{name} must be {low or 0} to {high or 'any number of'} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            problems.append(f"{name} must be from {low} to {high}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for required in schema.get("required", ()):
            if required not in value:
                problems.append(f"{_join(where, required)} is required")
        for key, item in value.items():
            if key not in properties:
                problems.append(f"{_join(where, key)} is not a documented field")
            else:
                problems += schema_errors(properties[key], item, _join(where, key))
    if isinstance(value, list):
        low, high = schema.get("minItems"), schema.get("maxItems")
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            problems.append(f"{name} must have {low or 0} to {high or 'any number of'} items")
        if "items" in schema:
            for index, item in enumerate(value):
                problems += schema_errors(schema["items"], item, f"{name}[{index}]")
    return problems


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEADER_BYTES = 64 * 1024


def _response(
    status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection:
    """One client connection: HTTP/1.1 with keep-alive, served on the fake's event loop."""

    def __init__(
        self, fake: FakeAIMLAPI, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.fake = fake
        self.reader = reader
        self.writer = writer
        host, port = writer.get_extra_info("peername")[:2]
        self.peer = (str(host), int(port))

    async def serve(self) -> None:
        self.fake._connection_opened()
        try:
            while await self._one_request():
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.fake._connection_closed()
            self.writer.close()

    async def _one_request(self) -> bool:
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEADER_BYTES:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await self.reader.readexactly(length) if length else b""
        recorded = self.fake._record(method, target, headers, body, self.peer)
        keep_alive = headers.get("connection", "").lower() != "close"
        if method == "GET":
            data = self.fake._files.get(target) if target.startswith("/files/") else None
            if data is not None:
                content_type = _AUDIO_TYPES.get(target.rsplit(".", 1)[-1], "audio/wav")
                self.writer.write(_response(200, data, content_type))
            else:
                message = _error_body(404, f"Cannot GET {target}", target)
                self.writer.write(_response(404, message, "application/json"))
            await self.writer.drain()
            return keep_alive
        fault = self.fake._next_fault() if target == "/v1/tts" else Fault()
        latency = fault.delay + (self.fake.latency if target == "/v1/tts" else 0.0)
        if latency:
            await asyncio.sleep(latency)
        if fault.kind == "drop":
            self.writer.transport.abort()
            return False
        if fault.kind == "status":
            self.writer.write(
                _response(fault.status, fault.body, fault.content_type, fault.headers)
            )
        else:
            status, payload, content_type, extra = self.fake._answer(target, recorded)
            self.writer.write(_response(status, payload, content_type, extra))
        await self.writer.drain()
        return keep_alive


class FakeAIMLAPI:
    """A fake AIML API on loopback. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        success_status: int = 201,
        response_shape: Literal["object", "string"] = "object",
        audio_url_base: str | None = None,
        models: tuple[str, ...] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        """Seconds every /tts request waits before its answer (on top of a fault's delay).

        Set it at any time; requests are served concurrently, so N parallel requests
        take about one latency, not N.
        """
        self.success_status = success_status
        self.response_shape = response_shape
        self.audio_url_base = audio_url_base
        self.models: tuple[str, ...] = tuple(MODELS) if models is None else models
        """The model ids served (default: every model in the catalogue); others get 404."""
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._random: tuple[float, list[Fault], random.Random] | None = None
        self._requests: list[RecordedRequest] = []
        self._files: dict[str, bytes] = {}
        self.issued: dict[str, str] = {}
        """Every audio URL the fake handed out, mapped to the text it was made from."""
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.open_connections = 0
        """Client connections open right now."""
        self.max_open_connections = 0
        """The most client connections that were open at once."""

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeAIMLAPI:
        """Bind the port and serve on an event loop in a background thread."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        problem: list[BaseException] = []

        async def open_server() -> None:
            try:
                self._server = await asyncio.start_server(
                    self._serve_connection, self._host, self._port, backlog=1024
                )
            except OSError as exc:
                problem.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            opening = loop.create_task(open_server())
            loop.run_forever()
            opening.cancel()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-aimlapi", daemon=True)
        self._thread.start()
        ready.wait(10)
        if problem:
            self.stop()
            raise problem[0]
        return self

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            pass  # stop() ends every connection; a shutdown is not an error
        finally:
            if task is not None:
                self._tasks.discard(task)

    def stop(self) -> None:
        """Stop serving and free the port; connections and delays end at once."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FakeAIMLAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeAIMLAPI is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The value for ``base_url=`` / ``AIMLAPI_BASE_URL``."""
        return self.origin + "/v1"

    # ------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def tts_requests(self) -> list[RecordedRequest]:
        """The ``POST /v1/tts`` requests received, oldest first."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/tts"]

    def reset(self) -> None:
        """Forget recorded requests, issued URLs and pending faults."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._random = None
            self.issued.clear()
            self._files.clear()

    # ------------------------------------------------------------ faults

    def inject(self, fault: Fault, times: int = 1) -> FakeAIMLAPI:
        """Apply ``fault`` to the next ``times`` /tts requests (after earlier faults)."""
        with self._lock:
            self._faults.extend([fault] * times)
        return self

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        message: str | None = None,
        body: bytes | None = None,
    ) -> FakeAIMLAPI:
        """Answer ``status`` with the API's error body (and ``Retry-After`` if given)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        payload = body if body is not None else _error_body(status, message or f"Error {status}")
        return self.inject(Fault("status", status, payload, headers=headers), times)

    def delay(self, seconds: float, *, times: int = 1) -> FakeAIMLAPI:
        """Answer normally, but only after ``seconds``."""
        return self.inject(Fault("ok", delay=seconds), times)

    def drop(self, *, times: int = 1) -> FakeAIMLAPI:
        """Close the connection without answering."""
        return self.inject(Fault("drop"), times)

    def malformed(self, *, status: int = 201, times: int = 1) -> FakeAIMLAPI:
        """Answer a 2xx whose body is not JSON."""
        return self.inject(Fault("status", status, b'{"audio": {"url": '), times)

    def html(self, status: int = 502, *, times: int = 1) -> FakeAIMLAPI:
        """Answer with an HTML page, as a proxy in front of the API would."""
        page = f"<html><head><title>{status} Bad Gateway</title></head><body>nginx</body></html>"
        return self.inject(Fault("status", status, page.encode(), "text/html"), times)

    def no_url(self, *, status: int = 201, times: int = 1) -> FakeAIMLAPI:
        """Answer a 2xx JSON body with usage metadata but no audio URL."""
        body = json.dumps({"meta": {"usage": {"credits_used": 100}}}).encode()
        return self.inject(Fault("status", status, body), times)

    def respond(
        self,
        status: int,
        body: bytes | str | Mapping[str, Any],
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> FakeAIMLAPI:
        """Answer exactly this, whatever the request was."""
        if isinstance(body, Mapping):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        return self.inject(Fault("status", status, body, content_type, dict(headers or {})), times)

    def random_faults(self, rate: float, faults: list[Fault], *, seed: int = 0) -> FakeAIMLAPI:
        """From now on, apply one of ``faults`` (at random) to a share ``rate`` of calls."""
        with self._lock:
            self._random = (rate, list(faults), random.Random(seed))
        return self

    def _next_fault(self) -> Fault:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._random is not None:
                rate, faults, rng = self._random
                if rng.random() < rate:
                    return rng.choice(faults)
        return Fault()

    def _connection_opened(self) -> None:
        with self._lock:
            self.open_connections += 1
            self.max_open_connections = max(self.max_open_connections, self.open_connections)

    def _connection_closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    def _record(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        peer: tuple[str, int],
    ) -> RecordedRequest:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(method, path, headers, body, parsed, time.time(), peer)
        with self._lock:
            self._requests.append(recorded)
        return recorded

    # ------------------------------------------------------------ the API

    def _answer(self, path: str, req: RecordedRequest) -> tuple[int, bytes, str, dict[str, str]]:
        json_type = "application/json"
        if path != "/v1/tts":
            return 404, _error_body(404, f"Cannot POST {path}", path), json_type, {}
        auth = req.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            return (
                401,
                _error_body(401, "A valid API key is required. Check your key."),
                json_type,
                {},
            )
        body = req.json
        problem = self._validate(body)
        if problem is not None:
            return problem[0], problem[1], json_type, {}
        assert isinstance(body, dict)
        spec = MODELS.get(body["model"])
        text = body.get(spec.text_field if spec else "text")
        assert isinstance(text, str)
        fmt = _answer_format(spec, body)
        credits = len(text) * CREDITS_PER_CHAR
        headers = {"x-inference-id": str(uuid.uuid4())}
        echo = req.headers.get("x-client-request-id")
        if echo and len(echo) <= 128:
            headers["x-client-request-id"] = echo
        if spec is not None and spec.raw_audio_when_streaming and body.get("stream", True):
            # The streaming answer: the audio itself, no URL and no usage headers.
            return 200, _audio_bytes(fmt, len(text)), _AUDIO_TYPES.get(fmt, "audio/wav"), headers
        file_path = f"/files/{uuid.uuid4().hex}.{fmt}"
        base = self.audio_url_base.rstrip("/") if self.audio_url_base else self.origin + "/files"
        url = base + file_path.removeprefix("/files")
        usage = {"credits_used": credits, "usd_spent": credits * USD_PER_CREDIT}
        audio: Any = url if self.response_shape == "string" else {"url": url}
        payload = json.dumps({"audio": audio, "meta": {"usage": usage}}).encode()
        headers["x-aimlapi-credits-used"] = str(credits)
        headers["x-aimlapi-usd-spent"] = f"{credits * USD_PER_CREDIT:.6f}"
        with self._lock:
            self._files[file_path] = _audio_bytes(fmt, len(text))
            self.issued[url] = text
        return self.success_status, payload, json_type, headers

    def _validate(self, body: Any) -> tuple[int, bytes] | None:
        def bad(detail: str) -> tuple[int, bytes]:
            return 400, _error_body(400, f"Body validation error! {detail}")

        if not isinstance(body, dict):
            return bad("The body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str):
            return bad("model is required.")
        if model not in self.models:
            return 404, _error_body(404, f"Model {model} not found or deprecated.")
        schema = request_schema(model)
        if schema is None:  # served but undocumented: the generic fields only
            text = body.get("text")
            if not isinstance(text, str) or not text:
                return bad("text is required.")
            return None
        problems = schema_errors(schema, body)
        if problems:
            return bad("; ".join(problems) + ".")
        return None


def _answer_format(spec: ModelSpec | None, body: Mapping[str, Any]) -> str:
    """The user format (file extension) of the audio a valid body asks for."""
    if spec is None:
        fmt = body.get("format")
        return fmt if isinstance(fmt, str) and fmt in _AUDIO_TYPES else "wav"
    if spec.format_path is None:
        return spec.native_format
    node: Any = body
    for step in spec.format_path:
        node = node.get(step) if isinstance(node, dict) else None
    if node is None:
        return spec.native_format
    return spec.format_from_body(node) or node.split("_")[0]
