"""Per-call context a shared server sets and the core reads: the caller's client key.

Its own module with no imports, so the core (spend, client) and the faces can share it
without an import cycle.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .keys import KeyGrant

__all__ = ["current_key"]

# The client key of the call in progress (None: the operator, or no server at all).
current_key: ContextVar[KeyGrant | None] = ContextVar("octave_tools_client_key", default=None)
