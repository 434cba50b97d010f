"""The call's deadline, for everything a call waits on besides the API: the store,
Redis, and a coalesced leader.

A client opens ``call_deadline`` when a call starts (``OCTAVE_TOOLS_TIMEOUT`` from
then); every store operation under it gets no more time than is left, and the
request to the API ends at the same deadline. Worker threads started with
``asyncio.to_thread`` see it too (they run in a copy of the caller's context).

``Watchdog`` is for blocking drivers that have no per-operation timeout of their own
(psycopg waits on its socket for as long as the network is silent): when an alarm is
due it runs its action (shutting the socket down), once, unless it was disarmed first.
Light on purpose: no third-party import, no thread until the first alarm.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Alarm", "CallTime", "call_deadline", "current", "remaining", "watchdog"]


@dataclass(frozen=True)
class CallTime:
    """When the call must be over (``time.monotonic()``), and its time limit in seconds."""

    deadline: float
    limit: float

    def left(self) -> float:
        return self.deadline - time.monotonic()


_CURRENT: contextvars.ContextVar[CallTime | None] = contextvars.ContextVar(
    "octave_tools_call_time", default=None
)


@contextmanager
def call_deadline(limit: float) -> Iterator[CallTime]:
    """One call: everything it waits on ends ``limit`` seconds from now."""
    call = CallTime(time.monotonic() + limit, limit)
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def current() -> CallTime | None:
    """The deadline of the call this code runs for, or None outside a call."""
    return _CURRENT.get()


def remaining(default: float) -> float:
    """Seconds left in the current call (may be <= 0), or ``default`` outside a call."""
    call = _CURRENT.get()
    return default if call is None else min(default, call.left())


class Alarm:
    """One armed action; ``disarm`` before it is due and it never runs."""

    __slots__ = ("_action", "_lock", "_state", "when")

    def __init__(self, when: float, action: Callable[[], None]) -> None:
        self.when = when
        self._action = action
        self._lock = threading.Lock()
        self._state = "armed"

    def _fire(self) -> None:
        with self._lock:
            if self._state != "armed":
                return
            self._state = "fired"
            with contextlib.suppress(Exception):  # a socket already gone is what it wants
                self._action()

    def disarm(self) -> bool:
        """Stop the alarm; True if it had already fired (the operation was cut off)."""
        with self._lock:
            fired = self._state == "fired"
            self._state = "done"
            return fired

    @property
    def fired(self) -> bool:
        return self._state == "fired"


class Watchdog:
    """One daemon thread that fires due alarms (started on the first one)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, action: Callable[[], None]) -> Alarm:
        """Run ``action`` at ``when`` (``time.monotonic()``) unless disarmed before."""
        alarm = Alarm(when, action)
        with self._cond:
            if len(self._heap) > 4096:  # mostly disarmed ones, still waiting for their time
                self._heap = [item for item in self._heap if item[2]._state != "done"]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (when, next(self._seq), alarm))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="octave-tools-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is alarm:
                self._cond.notify()
        return alarm

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    # Disarmed alarms are dropped as they reach the top.
                    while self._heap and self._heap[0][2]._state == "done":
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        alarm = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait)
            alarm._fire()


watchdog = Watchdog()
