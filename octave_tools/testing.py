"""A faithful fake of the AIML API text-to-speech endpoint, for your tests and ours.

It is a real HTTP server on 127.0.0.1 and a free port, in a background thread:

    from octave_tools import OctaveClient
    from octave_tools.testing import FakeAIMLAPI

    with FakeAIMLAPI() as api:
        client = OctaveClient(api_key=api.api_key, base_url=api.base_url)
        speech = client.synthesize("Hello")
        assert api.tts_requests[0].json["text"] == "Hello"
        assert speech.audio_url in api.issued

It checks the bearer key and the body as the real API documents (401, 400, 404),
answers 201 with ``{"audio": {"url": ...}, "meta": {"usage": {"credits_used": ...}}}``
(or the newer 200 / string shape), serves the audio it "generated" at that URL,
records every request, and can be told to misbehave for the next calls:
``fail(429, retry_after="1")``, ``delay(2.0)``, ``drop()``, ``malformed()``,
``html(502)``, ``no_url()``, ``respond(...)`` for anything else. With pytest, the
``fake_aimlapi`` fixture gives a started instance.
"""

from __future__ import annotations

import asyncio
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
from types import TracebackType
from typing import Any, Literal

from .voices import DEFAULT_MODEL, FORMATS, MAX_TEXT_CHARS, VOICES

__all__ = ["FakeAIMLAPI", "Fault", "RecordedRequest"]

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


def _tone_wav(seconds: float = 0.25, rate: int = 22_050) -> bytes:
    frames = bytearray()
    for i in range(int(seconds * rate)):
        frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


_WAV = _tone_wav()
# Not a playable MP3; just the frame-sync bytes a sniffer expects, for download tests.
_MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(400)


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
                content_type = "audio/mpeg" if target.endswith(".mp3") else "audio/wav"
                self.writer.write(_response(200, data, content_type))
            else:
                message = _error_body(404, f"Cannot GET {target}", target)
                self.writer.write(_response(404, message, "application/json"))
            await self.writer.drain()
            return keep_alive
        fault = self.fake._next_fault() if target == "/v1/tts" else Fault()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.kind == "drop":
            self.writer.transport.abort()
            return False
        if fault.kind == "status":
            self.writer.write(
                _response(fault.status, fault.body, fault.content_type, fault.headers)
            )
        else:
            status, payload, extra = self.fake._answer(target, recorded)
            self.writer.write(_response(status, payload, "application/json", extra))
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
        models: tuple[str, ...] = (DEFAULT_MODEL,),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.success_status = success_status
        self.response_shape = response_shape
        self.audio_url_base = audio_url_base
        self.models = models
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

    def _answer(self, path: str, req: RecordedRequest) -> tuple[int, bytes, dict[str, str]]:
        if path != "/v1/tts":
            return 404, _error_body(404, f"Cannot POST {path}", path), {}
        auth = req.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            return 401, _error_body(401, "A valid API key is required. Check your key."), {}
        body = req.json
        problem = self._validate(body)
        if problem is not None:
            return problem
        assert isinstance(body, dict)
        fmt = body.get("format") or "wav"
        file_path = f"/files/{uuid.uuid4().hex}.{fmt}"
        base = self.audio_url_base.rstrip("/") if self.audio_url_base else self.origin + "/files"
        url = base + file_path.removeprefix("/files")
        credits = len(body["text"]) * CREDITS_PER_CHAR
        usage = {"credits_used": credits, "usd_spent": credits * USD_PER_CREDIT}
        audio: Any = url if self.response_shape == "string" else {"url": url}
        payload = json.dumps({"audio": audio, "meta": {"usage": usage}}).encode()
        headers = {
            "x-inference-id": str(uuid.uuid4()),
            "x-aimlapi-credits-used": str(credits),
            "x-aimlapi-usd-spent": f"{credits * USD_PER_CREDIT:.6f}",
        }
        echo = req.headers.get("x-client-request-id")
        if echo and len(echo) <= 128:
            headers["x-client-request-id"] = echo
        with self._lock:
            self._files[file_path] = _MP3 if fmt == "mp3" else _WAV
            self.issued[url] = body["text"]
        return self.success_status, payload, headers

    def _validate(self, body: Any) -> tuple[int, bytes, dict[str, str]] | None:
        def bad(detail: str) -> tuple[int, bytes, dict[str, str]]:
            return 400, _error_body(400, f"Body validation error! {detail}"), {}

        if not isinstance(body, dict):
            return bad("The body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str):
            return bad("model is required.")
        if model not in self.models:
            return 404, _error_body(404, f"Model {model} not found or deprecated."), {}
        text = body.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_CHARS:
            return bad(f"text must be a string of 1 to {MAX_TEXT_CHARS} characters.")
        voice = body.get("voice")
        if voice is not None and voice not in VOICES:
            return bad(f"voice must be one of: {', '.join(VOICES)}.")
        fmt = body.get("format")
        if fmt is not None and fmt not in FORMATS:
            return bad("format must be one of: wav, mp3.")
        return None
