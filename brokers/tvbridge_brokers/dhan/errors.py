"""dhanhq's answer dicts -> success, a typed broker error, or "we cannot tell".

dhanhq never raises: an HTTP error, a timeout, a refused connection and an HTML page from a proxy all come back
as `{'status': 'failure', 'remarks': ..., 'data': ''}` (`dhanhq/dhan_http.py`). Only when Dhan itself answered
with JSON is `remarks` a dict carrying its `error_code`, so that code (not the HTTP status, which dhanhq drops)
decides:

======== ======================== =========================================================================
code     Dhan's meaning           here
======== ======================== =========================================================================
DH-901   token invalid/expired    `BrokerAuthError`; the broker halts Dhan orders until a new token
DH-902   no API/trading access    `BrokerAuthError` (account setup: API access, static IP)
DH-903   account problem          `BrokerRejectedError`
DH-904   rate limit               `BrokerUnavailableError` (nothing placed, a later try may work)
DH-905   bad input                `BrokerRejectedError`
DH-906   order refused            `BrokerRejectedError`
DH-907   no data                  `BrokerRejectedError` (for a lookup: "no such order")
DH-908+  server/network/other     ambiguous: for a placement, the order may exist
======== ======================== =========================================================================

Anything that is not a JSON answer from Dhan is ambiguous too. What to do with an ambiguous answer (look the
order up by correlation id) is `broker.py`'s decision, not this module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from tvbridge.broker import (
    BrokerAuthError,
    BrokerError,
    BrokerRejectedError,
    BrokerUnavailableError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

TOKEN_EXPIRED: Final = "DH-901"  # noqa: S105 - an error code, not a password
NO_DATA: Final = "DH-907"

REAUTH_HELP: Final = (
    "Dhan rejected the access token (DH-901: expired or invalid). Dhan orders are halted until it is replaced: "
    "generate a new token on web.dhan.co, put it in the account's access_token (or DHAN_ACCESS_TOKEN, or run "
    "`tvbridge dhan token set`), then send SIGHUP to tvbridge; no restart is needed."
)

_DEFINITE: Final[Mapping[str, tuple[type[BrokerError], str]]] = {
    "DH-902": (BrokerAuthError, "no access to Dhan's trading API (check API access and the static IP on web.dhan.co)"),
    "DH-903": (BrokerRejectedError, "Dhan refused it for the account (segment not active or account blocked)"),
    "DH-904": (BrokerUnavailableError, "Dhan's rate limit was hit; nothing was placed, a later try may work"),
    "DH-905": (BrokerRejectedError, "Dhan refused the input"),
    "DH-906": (BrokerRejectedError, "Dhan refused the order"),
    "DH-907": (BrokerRejectedError, "Dhan has no such data"),
}


@attrs.frozen(kw_only=True)
class Answer:
    """A classified dhanhq answer: exactly one of `data`, `error` or `ambiguous` is meaningful."""

    ok: bool
    data: object = None
    error: BrokerError | None = None
    error_code: str | None = None
    ambiguous: str | None = None
    """Why we cannot tell what Dhan did (transport failure, empty or non-JSON body, server error)."""


def scrub(text: str, secret: str) -> str:
    """Remove the token from text that came from dhanhq or requests, in case it ever echoes a header."""
    return text.replace(secret, "***") if secret else text


def classify(response: object, *, secret: str) -> Answer:
    """Classify what a dhanhq call returned."""
    if not isinstance(response, dict):
        return Answer(ok=False, ambiguous=f"unexpected answer from dhanhq: {type(response).__name__}")
    if response.get("status") == "success":
        return Answer(ok=True, data=response.get("data"))
    remarks = response.get("remarks")
    if not isinstance(remarks, dict):
        # not a JSON answer from Dhan: timeout, refused/dropped connection, empty or HTML body
        detail = scrub(str(remarks or "no answer"), secret)[:300]
        return Answer(ok=False, ambiguous=f"no usable answer from Dhan ({detail})")
    code = str(remarks.get("error_code") or "")
    text = scrub(str(remarks.get("error_message") or remarks.get("error_type") or ""), secret)[:300]
    if code == TOKEN_EXPIRED:
        return Answer(ok=False, error=BrokerAuthError(REAUTH_HELP), error_code=code)
    known = _DEFINITE.get(code)
    if known is not None:
        kind, meaning = known
        message = f"{meaning} ({code}: {text})" if text else f"{meaning} ({code})"
        return Answer(ok=False, error=kind(message), error_code=code)
    return Answer(ok=False, ambiguous=f"Dhan answered {code or 'an error without a code'}: {text}", error_code=code)
