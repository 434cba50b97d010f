"""A hard total deadline for blocking HTTP calls.

httpx's timeouts bound each socket operation, not a whole call: a server that sends
one byte just inside the read timeout, again and again, holds a blocking call forever.
The async client puts a cancel scope around the call; the blocking one cannot, so
every socket operation made under ``hard_deadline`` is given no more time than is
left, and fails with a timeout once none is.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .errors import ConfigurationError

__all__ = ["deadline_transport", "hard_deadline", "with_deadline"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "octave_tools_deadline", default=None
)


class hard_deadline:  # lower case: used like the function it was, `with hard_deadline(t):`
    """Socket operations in this block end by ``deadline`` (a ``time.monotonic()`` value).

    A class, not a generator context manager: it is on every call's path, and this is
    several times cheaper.
    """

    __slots__ = ("_deadline", "_token")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __enter__(self) -> None:
        self._token = _DEADLINE.set(self._deadline)

    def __exit__(self, *exc: object) -> None:
        _DEADLINE.reset(self._token)


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's total time limit was reached")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.start_tls(
                ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.BaseTransport:
    """An ``httpx.HTTPTransport`` whose sockets honour ``hard_deadline``."""
    return with_deadline(httpx.HTTPTransport(limits=limits))


def with_deadline(transport: httpx.BaseTransport) -> httpx.BaseTransport:
    """``transport`` with its sockets under ``hard_deadline``; raises if that can't be done."""
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(inner, httpcore.NetworkBackend):
        # httpx keeps its httpcore pool private. Without it the total limit would quietly
        # become a per-read one, so no request is sent rather than one without a deadline.
        raise ConfigurationError(
            f"octave-tools cannot enforce its total time limit with httpx {httpx.__version__} "
            f"and httpcore {httpcore.__version__} (the connection pool moved). Install the "
            "versions octave-tools declares (pip install 'httpx<1' 'httpcore<2') or report it."
        )
    pool._network_backend = _Backend(inner)  # type: ignore[union-attr]
    return transport
