"""The result cache, and coalescing of identical in-flight calls, in Redis (``redis`` extra).

Cache entries expire by Redis TTL. Coalescing across replicas: the first caller
for a key becomes its leader (``SET NX PX``: a lock with a TTL, so a leader that
dies frees it); the others ``follow`` — they poll, bounded by a timeout, for the
result the leader ``finish``-es with. A follower that gets nothing (the leader
failed or died) makes the call itself.

Time: each command waits at most OP_TIMEOUT on its socket, and no longer than the
call has left (it goes through a client whose socket timeout fits: one small pool per
step of TIMEOUT_STEPS); none is retried (redis-py's default retries a timed-out
command three times, with back-off). Once the call's time is up nothing is sent,
except the end of a lead (it frees followers), which gets FINISH_FLOOR.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import uuid
from typing import cast

from ._calltime import remaining
from ._redact import redact_url, scrub
from .errors import ConfigurationError

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised without the extra
    redis = None  # type: ignore[assignment]

__all__ = ["RedisCache", "open_redis_cache"]

logger = logging.getLogger("octave_tools")

# Longest wait for one command's answer (and for a connection). Redis answers in
# milliseconds; one that does not is a cache miss, not a call held up.
OP_TIMEOUT = 1.0
# Socket timeouts of the clients a command with less time left goes through.
TIMEOUT_STEPS = (0.05, 0.1, 0.25, 0.5)
FINISH_FLOOR = 0.25

# Delete the lock only if it is still ours (its TTL may have passed and a new leader
# taken it).
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisCache:
    """Cache and in-flight coalescing under one key prefix of one Redis database."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "octave-tools:",
        setting: str = "OCTAVE_TOOLS_CACHE_URL",
        connect_timeout: float = 2.0,
    ) -> None:
        if redis is None:
            raise ConfigurationError(
                f"{setting} is a redis:// URL, which needs the Redis client: "
                "pip install 'octave-tools[redis]'."
            )
        self.url = url
        self.setting = setting
        self.prefix = prefix
        self._warned = False
        self._short: dict[float, redis.Redis] = {}
        self._short_lock = threading.Lock()
        try:
            self._redis = self._connect(OP_TIMEOUT)
            client = self._client(connect_timeout)
            if client is None:
                raise redis.TimeoutError("the call's time was up before Redis was asked")
            client.ping()
        except (redis.RedisError, ValueError) as exc:
            reason = scrub(str(exc), url) or type(exc).__name__
            raise ConfigurationError(
                f"The cache in {setting} ({redact_url(url)}) cannot be used: {reason}. "
                f"Check that Redis is running and the URL is right, or unset {setting} to "
                "keep the cache in the store."
            ) from None
        self._unlock = self._redis.register_script(_UNLOCK)

    def _connect(self, timeout: float) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def _client(self, limit: float = OP_TIMEOUT, floor: float = 0.0) -> redis.Redis | None:
        """A client whose commands end within the call's time left (at least ``floor``),
        at most ``limit``; None when no time is left."""
        left = max(remaining(limit), floor)
        if left >= OP_TIMEOUT:
            return self._redis
        fits = [step for step in TIMEOUT_STEPS if step <= left]
        if not fits:
            return None
        step = fits[-1]
        client = self._short.get(step)
        if client is None:
            with self._short_lock:
                client = self._short.get(step)
                if client is None:
                    client = self._short[step] = self._connect(step)
        return client

    def close(self) -> None:
        self._redis.close()
        for client in self._short.values():
            client.close()

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "octave-tools: %s failed on the cache in %s (%s): %s",
                what,
                self.setting,
                redact_url(self.url),
                scrub(str(exc), self.url) or type(exc).__name__,
            )

    # ------------------------------------------------------------ cache

    def cache_get(self, key: str, now: float) -> str | None:
        """The value for ``key`` (Redis drops it at its expiry); a failure is a miss."""
        client = self._client()
        if client is None:
            return None
        try:
            value = client.get(self.prefix + "cache:" + key)
        except redis.RedisError as exc:
            self._failed("reading", exc)
            return None
        return value if isinstance(value, str) else None

    def cache_put(self, key: str, value: str, expires_at: float) -> None:
        """Keep ``value`` until ``expires_at`` (epoch seconds)."""
        ttl_ms = int((expires_at - time.time()) * 1000)
        client = self._client()
        if ttl_ms <= 0 or client is None:
            return
        try:
            client.set(self.prefix + "cache:" + key, value, px=ttl_ms)
        except redis.RedisError as exc:
            self._failed("writing", exc)

    # ------------------------------------------------------------ coalescing

    def lead(self, key: str, ttl: float) -> str | None:
        """Become the one process making the call for ``key``: a token, or None if taken.

        The lock lapses after ``ttl`` seconds (set it above the call's time limit), so
        a leader that dies holds no one up for longer. If Redis fails, every caller
        leads: coalescing is a saving, never a reason to fail a call.
        """
        token = uuid.uuid4().hex
        client = self._client()
        if client is None:
            return token
        try:
            got = client.set(
                self.prefix + "lead:" + key, token, nx=True, px=max(1, int(ttl * 1000))
            )
            if got:  # an earlier leader's result must not answer this lead's followers
                client.delete(self.prefix + "done:" + key)
        except redis.RedisError as exc:
            self._failed("taking a lead lock", exc)
            return token
        return token if got else None

    def finish(self, key: str, token: str, value: str | None, keep: float = 60.0) -> None:
        """End the lead: publish ``value`` for followers (None: failed), free the lock."""
        client = self._client(floor=FINISH_FLOOR)
        assert client is not None
        try:
            if value is not None:
                client.set(self.prefix + "done:" + key, value, px=max(1, int(keep * 1000)))
            self._unlock(keys=[self.prefix + "lead:" + key], args=[token], client=client)
        except redis.RedisError as exc:
            self._failed("finishing a lead", exc)

    def follow(self, key: str, timeout: float, poll: float = 0.01) -> str | None:
        """Wait up to ``timeout`` s for the leader's value; None when it failed or left.

        Polls with a growing interval (10 ms to 200 ms): results take seconds, so the
        extra wait is small and Redis sees a few requests per follower per second.
        """
        deadline = time.monotonic() + timeout
        done, lead = self.prefix + "done:" + key, self.prefix + "lead:" + key
        while True:
            client = self._client()
            if client is None:
                return None
            try:
                value, leader = cast("list[str | None]", client.mget(done, lead))
            except redis.RedisError as exc:
                self._failed("waiting for a lead", exc)
                return None
            if isinstance(value, str):
                return value
            if leader is None:
                return None  # the leader finished without a value, or its lock lapsed
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(poll, left))
            poll = min(poll * 1.5, 0.2)


_CACHES: dict[str, RedisCache] = {}
_CACHES_LOCK = threading.Lock()


def open_redis_cache(url: str, *, setting: str = "OCTAVE_TOOLS_CACHE_URL") -> RedisCache:
    """The process-wide RedisCache for ``url``."""
    with _CACHES_LOCK:
        cache = _CACHES.get(url)
        if cache is None:
            cache = _CACHES[url] = RedisCache(url, setting=setting)
        return cache


@atexit.register
def _close_all() -> None:
    with _CACHES_LOCK:
        caches = list(_CACHES.values())
        _CACHES.clear()
    for cache in caches:
        with contextlib.suppress(Exception):  # exiting; nothing left to tell
            cache.close()
