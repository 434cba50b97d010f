"""Per-call context a shared server sets and the core reads: the caller's client key.

Its own module, importing only the models, so the core (spend, client) and the faces
can share it without an import cycle.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from .models import ClientKey

__all__ = ["Grant", "current_key"]


class Grant(Protocol):
    """What the core needs of the caller's client key (``keys.KeyGrant`` is one)."""

    @property
    def key(self) -> ClientKey: ...
    def model(self, model: str | None, default: str) -> str | None: ...
    def admit(self) -> None: ...


# The client key of the call in progress (None: the operator, or no server at all).
current_key: ContextVar[Grant | None] = ContextVar("octave_tools_client_key", default=None)
