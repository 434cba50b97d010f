"""Every way a call can fail, as one small tree you can catch by what you can do.

```
OctaveError                      base of everything raised here
├── ConfigurationError           no API key, a bad setting, no engine available
├── InvalidInputError            local validation failed; nothing was sent or spent
├── BudgetExceededError          the spend limit would be passed; nothing was sent
├── ClientKeyLimitError          a client key's rate or models refuse the call; nothing sent
└── APIError                     the call reached (or tried to reach) the upstream API
    ├── APIConnectionError       could not connect, or the connection dropped
    ├── APITimeoutError          the call's total time limit was hit
    ├── UnexpectedResponseError  a 2xx whose body holds no usable audio URL
    └── APIStatusError           a non-2xx status (``status_code``)
        ├── BadRequestError          400 / 422: the API rejected the request body
        ├── AuthenticationError      401 / 403: bad key, or no credits / not allowed
        ├── NotFoundError            404: usually a retired or unknown model
        ├── RateLimitError           429 (``retry_after`` seconds, when known)
        └── ServerError              5xx
```

Messages say what to do next. None of them, and no attribute kept here, ever
holds the API key.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientKeyLimitError",
    "ConfigurationError",
    "InvalidInputError",
    "NotFoundError",
    "OctaveError",
    "RateLimitError",
    "ServerError",
    "UnexpectedResponseError",
]


class OctaveError(Exception):
    """Base class of every error raised by octave-tools."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(OctaveError):
    """A setting is missing or invalid (for example no API key)."""


class InvalidInputError(OctaveError, ValueError):
    """An argument failed local validation; no request was sent."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class BudgetExceededError(OctaveError):
    """The call would pass the configured spend limit; no request was sent."""

    def __init__(
        self,
        message: str,
        *,
        limit: float,
        spent: float,
        estimate: float,
        frees_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.spent = spent
        self.estimate = estimate
        self.frees_at = frees_at


class ClientKeyLimitError(OctaveError):
    """A shared server's client key may not make this call now (its requests per minute,
    its models or its daily credits); ``limit`` names which, ``resets_at`` (epoch seconds)
    says when it frees up, if it does."""

    def __init__(self, message: str, *, limit: str, resets_at: float | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.resets_at = resets_at


class APIError(OctaveError):
    """The upstream API could not be reached or gave an unusable answer."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class APIConnectionError(APIError):
    """The connection could not be made or was dropped."""


class APITimeoutError(APIError):
    """The call did not finish within its total time limit."""

    def __init__(self, message: str, *, timeout: float, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.timeout = timeout


class UnexpectedResponseError(APIError):
    """The API answered 2xx, but not with a usable audio URL."""

    def __init__(
        self, message: str, *, status_code: int, body_excerpt: str, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class APIStatusError(APIError):
    """The API answered with a non-2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body_excerpt: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class BadRequestError(APIStatusError):
    """400 or 422: the API rejected the request body."""


class AuthenticationError(APIStatusError):
    """401 or 403: the key is wrong, or the account may not make this call."""


class NotFoundError(APIStatusError):
    """404: the model is unknown or retired."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` says when to try again, if known."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        body_excerpt: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status_code=status_code, body_excerpt=body_excerpt, request_id=request_id
        )
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the API or a gateway in front of it failed."""
