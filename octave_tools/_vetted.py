"""Audio downloads connect only to addresses vetted as they were resolved.

An audio URL's host is checked when the URL arrives (``audio_url_problem``), but a host
name is only a promise: what it resolves to when the socket connects is what is
reached, and a second lookup may answer differently (DNS rebinding: public when
checked, 10.0.0.1 when connected). So the download's network backend resolves each
name once, refuses it if any address it gives is private, loopback, link-local or
otherwise special (loopback only in the test mode where the API itself is plain http
on loopback, as for literals), and connects to that very address. TLS still names the
host (SNI and the certificate check) and so does the Host header: httpcore takes both
from the URL, not from the socket.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

from ._deadline import with_deadline
from ._protocol import address_kind
from .errors import UnexpectedResponseError

__all__ = ["Resolver", "VettedBackend", "system_resolve", "vetted_transport"]

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port)`` to the addresses a connection may use, in the order to try them."""


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (one lookup), without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class VettedBackend(httpcore.NetworkBackend):
    """Resolves a name once, vets every address, connects to a vetted one."""

    def __init__(
        self,
        inner: httpcore.NetworkBackend,
        *,
        allow_loopback: bool,
        resolve: Resolver = system_resolve,
    ) -> None:
        self._inner = inner
        self._allow_loopback = allow_loopback
        self._resolve = resolve

    def addresses(self, host: str, port: int) -> list[str]:
        """The vetted addresses for ``host``; raises if it has none or any is refused."""
        if _is_literal(host):
            found = [host]
        else:
            try:
                found = list(self._resolve(host, port))
            except OSError as exc:  # socket.gaierror: no such name, no resolver
                raise httpcore.ConnectError(f"{host}: {exc}") from None
            if not found:
                raise httpcore.ConnectError(f"{host}: the name has no address")
        for address in found:
            kind = address_kind(address)
            if kind == "public" or (kind == "loopback" and self._allow_loopback):
                continue
            named = "" if address == host else f"{host} resolves to {address}, "
            raise UnexpectedResponseError(
                f"Refusing to download audio from {host}: {named}a private, loopback or "
                "link-local address.",
                status_code=200,
                body_excerpt="",
            )
        return found

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        options = list(socket_options) if socket_options is not None else None
        error: httpcore.ConnectError | None = None
        for address in self.addresses(host, port):  # each in turn, as create_connection does
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("audio is never downloaded over a Unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def vetted_transport(
    *,
    allow_loopback: bool,
    resolve: Resolver | None = None,
    backend: httpcore.NetworkBackend | None = None,
) -> httpx.BaseTransport:
    """An ``httpx.HTTPTransport`` that connects only to vetted addresses, under
    ``hard_deadline``. ``resolve`` and ``backend`` replace the system's (for tests)."""
    transport = httpx.HTTPTransport(limits=httpx.Limits())
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if isinstance(inner, httpcore.NetworkBackend):  # else with_deadline says what moved
        pool._network_backend = VettedBackend(  # type: ignore[union-attr]
            backend or inner, allow_loopback=allow_loopback, resolve=resolve or system_resolve
        )
    return with_deadline(transport)
