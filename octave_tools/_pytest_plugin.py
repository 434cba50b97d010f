"""pytest plugin: the ``fake_aimlapi`` fixture (a started FakeAIMLAPI, stopped after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import FakeAIMLAPI


@pytest.fixture
def fake_aimlapi() -> Iterator[FakeAIMLAPI]:
    """A fake AIML API on 127.0.0.1 and a free port, for one test."""
    with FakeAIMLAPI() as api:
        yield api
