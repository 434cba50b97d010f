"""Audio downloads resolve a host name once and connect only to the address they vetted.

No real DNS: a resolver is injected (or socket.getaddrinfo stood in for), and a network
backend that records where it was asked to connect stands in for the sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import pytest
from harness import redirecting_server

from octave_tools import APIConnectionError, OctaveClient, UnexpectedResponseError
from octave_tools._files import fetch_audio
from octave_tools._settings import Settings
from octave_tools.testing import FakeAIMLAPI

PUBLIC = "93.184.216.34"
URL = "https://cdn.example/audio/a.wav"


class Resolver:
    """Answers every name with ``addresses``; counts the lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        return self.addresses


class Unreachable(httpcore.NetworkStream):
    """A stream that records the TLS server name asked for, then fails the handshake."""

    def __init__(self, backend: RecordingBackend) -> None:
        self._backend = backend

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self._backend.tls_names.append(server_hostname)
        raise httpcore.ConnectError("no handshake in tests")

    def close(self) -> None:
        pass


class RecordingBackend(httpcore.NetworkBackend):
    """Records each (host, port) it is asked to connect to; connects nowhere."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.tls_names: list[str | None] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        return Unreachable(self)


def settings(**options: Any) -> Settings:
    return Settings.load(api_key="k", timeout=2.0, environ={}, **options)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.7",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:10.0.0.1",
    ],
)
def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    address: str,
) -> None:
    resolver, backend = Resolver(address), RecordingBackend()

    with pytest.raises(UnexpectedResponseError) as info:
        fetch_audio(URL, settings(), resolve=resolver, network_backend=backend)

    assert str(info.value) == (
        f"Refusing to download audio from cdn.example: cdn.example resolves to {address}, "
        "a private, loopback or link-local address."
    )
    assert resolver.lookups == [("cdn.example", 443)]
    assert backend.connects == []


def test_a_name_is_refused_when_any_of_its_addresses_is_private() -> None:
    resolver, backend = Resolver(PUBLIC, "10.0.0.1"), RecordingBackend()

    with pytest.raises(UnexpectedResponseError, match="cdn.example resolves to 10.0.0.1"):
        fetch_audio(URL, settings(), resolve=resolver, network_backend=backend)
    assert backend.connects == []


def test_a_public_name_is_connected_to_at_the_address_it_resolved_to_once() -> None:
    resolver, backend = Resolver(PUBLIC), RecordingBackend()

    with pytest.raises(APIConnectionError, match="Could not download the audio from cdn.example"):
        fetch_audio(URL, settings(), resolve=resolver, network_backend=backend)

    assert resolver.lookups == [("cdn.example", 443)]
    assert backend.connects == [(PUBLIC, 443)]
    assert backend.tls_names == ["cdn.example"]  # the certificate is checked for the name


def test_the_system_resolver_is_asked_once_and_its_answer_is_vetted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups: list[object] = []

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> list[Any]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    # A connection to 10.9.8.7 would be a NetworkBlocked error (tests/_netguard), not this.
    with pytest.raises(UnexpectedResponseError, match="cdn.example resolves to 10.9.8.7"):
        fetch_audio(URL, settings())
    assert lookups == ["cdn.example"]


def test_a_redirect_to_a_name_that_resolves_privately_is_refused_at_connect() -> None:
    resolver = Resolver("10.0.0.1")
    with (
        redirecting_server("https://rebind.example/a.wav") as origin,
        pytest.raises(UnexpectedResponseError, match="rebind.example resolves to 10.0.0.1"),
    ):
        fetch_audio(origin + "/files/a.wav", settings(base_url=origin + "/v1"), resolve=resolver)
    assert resolver.lookups == [("rebind.example", 443)]


def test_loopback_names_are_allowed_only_in_the_loopback_test_mode(
    fake_aimlapi: FakeAIMLAPI,
) -> None:
    with OctaveClient(
        api_key=fake_aimlapi.api_key, base_url=fake_aimlapi.base_url, engine="aimlapi"
    ) as client:
        speech = client.synthesize("Hello")
    named = speech.audio_url.replace("127.0.0.1", "localhost", 1)
    resolver = Resolver("127.0.0.1")

    data = fetch_audio(named, settings(base_url=fake_aimlapi.base_url), resolve=resolver)

    assert data == client.download(speech) and data[:4] == b"RIFF"
    assert [host for host, _ in resolver.lookups] == ["localhost"]
    with pytest.raises(UnexpectedResponseError, match="audio.test resolves to ::1"):
        fetch_audio(
            "https://audio.test/files/a.wav",
            settings(),
            resolve=Resolver("::1"),
            network_backend=RecordingBackend(),
        )
