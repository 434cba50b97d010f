"""The hard deadline's hook into httpx, and the capped body reader."""

from __future__ import annotations

import httpx
import pytest

from octave_tools import ConfigurationError
from octave_tools._body import BodyTooLarge, CappedBody
from octave_tools._deadline import _Backend, deadline_transport, with_deadline


def test_the_deadline_backend_is_installed_in_the_real_transport() -> None:
    transport = deadline_transport(httpx.Limits())
    try:
        assert type(transport._pool._network_backend) is _Backend  # type: ignore[attr-defined]
    finally:
        transport.close()


def test_a_transport_without_the_private_pool_is_refused_at_once() -> None:
    moved = httpx.MockTransport(lambda request: httpx.Response(200))
    with pytest.raises(ConfigurationError, match="cannot enforce its total time limit"):
        with_deadline(moved)


def test_capped_body_keeps_what_fits() -> None:
    body = CappedBody(5, {"content-length": "5"})
    body.feed(b"ab")
    body.feed(b"cde")
    assert body.result() == b"abcde"


def test_capped_body_refuses_a_declared_length_over_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        CappedBody(5, {"content-length": "6"})


def test_capped_body_refuses_the_chunk_that_goes_over() -> None:
    body = CappedBody(5)
    body.feed(b"abc")
    with pytest.raises(BodyTooLarge):
        body.feed(b"def")
