"""Where audio files go, and how they are written: atomically, never half-done."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from ._protocol import MAX_AUDIO_BYTES, audio_url_problem, loopback_test_mode, url_excerpt
from ._settings import Settings
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    UnexpectedResponseError,
)

if TYPE_CHECKING:
    import httpcore
    import httpx

    from ._vetted import Resolver

__all__ = [
    "AudioFetcher",
    "atomic_writer",
    "default_output_dir",
    "fetch_audio",
    "new_audio_path",
    "user_dir",
    "write_atomic",
]


# Per platform: (Windows variable, its fallback under home, suffix), macOS folder,
# (XDG variable, its fallback under home). The usual user folders, as platformdirs has them.
_USER_DIRS = {
    "cache": (("LOCALAPPDATA", "AppData/Local", "Cache"), "Library/Caches",
              ("XDG_CACHE_HOME", ".cache")),
    "data": (("APPDATA", "AppData/Roaming", ""), "Library/Application Support",
             ("XDG_DATA_HOME", ".local/share")),
}  # fmt: skip


def user_dir(kind: Literal["cache", "data"]) -> Path:
    """The user cache or data directory for octave-tools on this platform."""
    (win_var, win_home, win_suffix), mac, (xdg_var, xdg_home) = _USER_DIRS[kind]
    if sys.platform == "win32":
        root = os.environ.get(win_var) or str(Path.home() / win_home)
        return Path(root) / "octave-tools" / win_suffix
    if sys.platform == "darwin":
        return Path.home() / mac / "octave-tools"
    return Path(os.environ.get(xdg_var) or str(Path.home() / xdg_home)) / "octave-tools"


def default_output_dir() -> Path:
    """The user cache directory for octave-tools on this platform."""
    return user_dir("cache")


def new_audio_path(output_dir: str | None, extension: str) -> Path:
    """A fresh, unique file path for a new clip in ``output_dir`` (or the default)."""
    # Absolute, so that the file:// URL made from it is valid wherever it is read.
    directory = (Path(output_dir).expanduser() if output_dir else default_output_dir()).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"speech-{uuid.uuid4().hex}.{extension}"


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, then rename.

    A reader never sees a partial file, and if ``path`` is a symlink the link itself
    is replaced: the write never lands outside ``path``'s folder. The file gets the
    mode a plain open() would give (0666 less the umask).
    """
    with atomic_writer(path) as fh:
        fh.write(data)
    return path


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[io.BufferedWriter]:
    """A file to write ``path``'s new content into, in pieces; renamed onto ``path`` at the end.

    The streaming form of ``write_atomic``, with the same guarantees: if the block
    raises, the temp file is removed and ``path`` is left as it was.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
        try:
            # Not mkstemp: its 0600 would have to be widened by hand, ignoring the umask.
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _url2pathname(path: str) -> str:
    """``urllib.request.url2pathname`` without importing urllib.request.

    That module pulls in http.client, email and ssl (~25 ms): too much for the CLI
    reading a local-engine file. On POSIX it is ``unquote``; Windows has its own module.
    """
    if os.name == "nt":
        from nturl2path import url2pathname

        return url2pathname(path)
    return unquote(path)


def fetch_audio(
    url: str,
    settings: Settings,
    *,
    resolve: Resolver | None = None,
    network_backend: httpcore.NetworkBackend | None = None,
) -> bytes:
    """The bytes behind an audio URL a synthesis returned (https, loopback http or file://).

    Never sends the API key: the audio host is not the API. Each host name is resolved
    once and connected to only at an address that passes the same check as a literal
    (``resolve`` and ``network_backend`` stand in for the system's in tests).
    """
    with AudioFetcher(settings, resolve=resolve, network_backend=network_backend) as fetcher:
        return fetcher.fetch(url)


class AudioFetcher:
    """``fetch_audio`` for many URLs (a long call's parts) through one vetted HTTP client.

    The client (its TLS setup costs tens of ms) is made on the first http(s) URL and
    shared, safely across threads; every URL and redirect hop is checked as in
    ``fetch_audio``, and each download has the call's ``timeout``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolve: Resolver | None = None,
        network_backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._settings = settings
        self._resolve = resolve
        self._backend = network_backend
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> AudioFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def warm(self) -> None:
        """Make the HTTP client now (in a spare thread), so the first download need not."""
        self._client()

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = self._new_client()
            return self._http

    def _new_client(self) -> httpx.Client:
        import httpx

        from ._vetted import vetted_transport

        settings = self._settings

        def check_hop(request: httpx.Request) -> None:
            # A CDN may redirect; every hop must pass the same check as the first URL.
            hop = str(request.url)
            hop_problem = audio_url_problem(hop, settings.base_url)
            if hop_problem is not None:
                raise UnexpectedResponseError(
                    f"Refusing to follow a redirect of the audio to a URL {hop_problem}: "
                    f"{url_excerpt(hop)!r}.",
                    status_code=302,
                    body_excerpt="",
                )

        return httpx.Client(
            # Each host name is resolved once; only an address that passes the same check
            # as a literal is connected to (TLS and Host still name the host).
            transport=vetted_transport(
                allow_loopback=loopback_test_mode(settings.base_url),
                resolve=self._resolve,
                backend=self._backend,
            ),
            timeout=settings.timeout,
            follow_redirects=True,
            max_redirects=5,
            event_hooks={"request": [check_hop]},
        )

    def fetch(self, url: str) -> bytes:
        """The bytes behind ``url`` (see ``fetch_audio``)."""
        settings = self._settings
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(_url2pathname(unquote(parts.path)))
            try:
                if path.stat().st_size > MAX_AUDIO_BYTES:
                    raise UnexpectedResponseError(
                        f"The audio file {path} is larger than {MAX_AUDIO_BYTES:,} bytes.",
                        status_code=200,
                        body_excerpt="",
                    )
                return path.read_bytes()
            except OSError as exc:
                raise APIConnectionError(
                    f"Could not read the audio file {path}: {exc.strerror}."
                ) from None
        problem = audio_url_problem(url, settings.base_url)
        if problem is not None:
            raise UnexpectedResponseError(
                f"Refusing to download audio from a URL {problem}: {url_excerpt(url)!r}.",
                status_code=200,
                body_excerpt="",
            )
        host = parts.netloc
        # Imported here: a local-engine process (file:// audio) never needs the HTTP stack.
        import httpx

        from ._deadline import hard_deadline

        try:
            with (
                hard_deadline(time.monotonic() + settings.timeout),
                self._client().stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise APIStatusError(
                        f"Downloading the audio from {host} failed ({response.status_code}); "
                        "the URL may have expired.",
                        status_code=response.status_code,
                    )
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_AUDIO_BYTES:
                        raise UnexpectedResponseError(
                            f"The audio at {host} is larger than {MAX_AUDIO_BYTES:,} bytes.",
                            status_code=response.status_code,
                            body_excerpt="",
                        )
                return bytes(data)
        except httpx.TimeoutException:
            raise APITimeoutError(
                f"Downloading the audio from {host} took longer than {settings.timeout:g} s.",
                timeout=settings.timeout,
            ) from None
        except httpx.HTTPError as exc:
            raise APIConnectionError(
                f"Could not download the audio from {host} ({type(exc).__name__}). "
                "Check the network and try again."
            ) from None
