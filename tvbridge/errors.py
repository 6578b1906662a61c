"""tvbridge's own exceptions and the one place they map to HTTP statuses.

Code raises; only `middlewares/errors.py` turns an exception into a response, looking its class (or the
nearest base class) up in `HTTP_STATUS`. The tree::

    TvBridgeError
    +-- ConfigError            bad config at start (the CLI exits 2; never an HTTP answer)
    +-- PluginError            a broker plugin cannot be loaded, does not fit the interface or refuses its settings
    +-- PluginStartError       a broker plugin's start() failed (the CLI exits 1)
    +-- StorageError           a data file or the data directory cannot be used at start (the CLI exits 1)
    +-- RequestError           refused with a 4xx; nothing was recorded
    |   +-- BadRequestError        400 body is not a JSON object
    |   +-- AuthError              401 wrong or missing secret
    |   +-- ForbiddenError         403 source address not allowed
    |   +-- PayloadTooLargeError   413
    |   +-- InvalidAlertError      422 the alert is JSON but not a valid alert (`errors` lists every problem)
    |   +-- NotFoundError          404
    |   +-- RateLimitedError       429 (`retry_after_s`)
    +-- UnavailableError       503 nothing was recorded; TradingView may resend
        +-- ShuttingDownError
        +-- JournalError           the journal could not be written
        +-- RecordsError           a record file (journal, order log) was deleted or replaced under the server
        +-- HaltedError            trading halted by the kill switch
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class TvBridgeError(Exception):
    """Base class. `str(exc)` is what the user reads: no secrets, no internals."""


class ConfigError(TvBridgeError):
    pass


class PluginError(TvBridgeError):
    pass


class PluginStartError(TvBridgeError):
    """A plugin's `start()` raised or did not return: the server does not start (a broker we cannot use)."""


class StorageError(TvBridgeError):
    """A state file (secret, log, journal...) or the data directory cannot be opened or created at start."""


class RequestError(TvBridgeError):
    pass


class BadRequestError(RequestError):
    pass


class AuthError(RequestError):
    def __init__(self, message: str = "Invalid webhook secret") -> None:
        super().__init__(message)


class ForbiddenError(RequestError):
    pass


class PayloadTooLargeError(RequestError):
    pass


class NotFoundError(RequestError):
    pass


class InvalidAlertError(RequestError):
    """422. `errors` are `path: message` lines, one per problem, all of them at once."""

    def __init__(self, errors: Sequence[str], message: str = "Payload validation error") -> None:
        super().__init__(message)
        self.errors = list(errors)


class RateLimitedError(RequestError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(TvBridgeError):
    pass


class ShuttingDownError(UnavailableError):
    def __init__(self, message: str = "shutting down, resend later") -> None:
        super().__init__(message)


class JournalError(UnavailableError):
    pass


class RecordsError(UnavailableError):
    """A file the records go to is no longer the one the server opened: nothing more is accepted into it."""


class HaltedError(UnavailableError):
    def __init__(self, message: str = "trading halted") -> None:
        super().__init__(message)


HTTP_STATUS: Final[Mapping[type[TvBridgeError], int]] = {
    BadRequestError: 400,
    AuthError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    PayloadTooLargeError: 413,
    InvalidAlertError: 422,
    RateLimitedError: 429,
    UnavailableError: 503,
}


def http_status_of(exc: TvBridgeError) -> int:
    """The status for `exc`: its class or the nearest base class in `HTTP_STATUS`; 500 if none (a bug)."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500
