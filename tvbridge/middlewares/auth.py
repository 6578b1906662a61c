"""Step 5: the alert must carry the webhook secret, or arrive on the path token's URL.

Both are compared in constant time (`hmac.compare_digest`). The body is decoded here, once (400 when it is not
a JSON object), because the secret is inside it: TradingView cannot set headers. A refusal is logged with the
source address and never with what was sent.

On success it sets `request[AUTHENTICATED]`: `errors` (the outermost step, through `rate_limit.charge_failure`)
charges every webhook request that fails without it to the source address, and a raised `AuthError` also to
that address's failed-auth bucket.
So the accounting needs no call from here into the limiter, and turning rate limiting off leaves auth as is.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from tvbridge.errors import AuthError
from tvbridge.keys import AUTHENTICATED, CREDENTIAL, RAW_ALERT, SOURCE_IP
from tvbridge.middlewares.body_limit import body_of
from tvbridge.parsing import decode_body
from tvbridge.refusals import should_log
from tvbridge.routes import PATH_TOKEN

if TYPE_CHECKING:
    from tvbridge.secretstore import Credentials

log = structlog.get_logger()


def same_secret(given: object, expected: str) -> bool:
    if not isinstance(given, str) or not expected:
        return False
    # surrogatepass: a lone surrogate in the JSON ("\ud800") must be a wrong secret, not a 500
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _failed(request: web.Request, reason: str, message: str = "Invalid webhook secret") -> AuthError:
    """The refusal, after its `auth.failed` line when the request is one `tvbridge.refusals` samples."""
    if should_log(request, 401):
        log.warning("auth.failed", source=request.get(SOURCE_IP), reason=reason)
    return AuthError(message)


def authenticate(credentials: Credentials, request: web.Request) -> None:
    """Decode the body into `RAW_ALERT` and check the path token or the body's secret (401); on success set
    `AUTHENTICATED` and `CREDENTIAL` (which credential matched: the request's strategy, for the rate limit)."""
    token = request.match_info.get(PATH_TOKEN)
    if token is not None:
        if not credentials.path_token:
            raise web.HTTPNotFound  # no path token configured: /webhook/<anything> is no route
        if not same_secret(token, credentials.path_token):
            raise _failed(request, "wrong path token")
        request[RAW_ALERT] = decode_body(body_of(request))
        request[AUTHENTICATED] = True
        request[CREDENTIAL] = "path_token"
        return
    raw = decode_body(body_of(request))
    request[RAW_ALERT] = raw
    if "secret" not in raw:
        raise _failed(request, "no secret in the alert", "Invalid webhook secret: the alert has no secret")
    if not same_secret(raw["secret"], credentials.secret):
        raise _failed(request, "wrong secret")
    request[AUTHENTICATED] = True
    request[CREDENTIAL] = "secret"
