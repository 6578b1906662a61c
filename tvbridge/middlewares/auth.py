"""Step 5: the alert must carry the webhook secret, or arrive on the path token's URL.

Both are compared in constant time (`hmac.compare_digest`). The body is decoded here, once (400 when it is not
a JSON object), because the secret is inside it: TradingView cannot set headers. A refusal is logged with the
source address and never with what was sent.

The credential also picks the alert's strategy (`tvbridge/strategies.py`): every strategy's secret (or path
token) is compared, the global one being `default`; on success `request[STRATEGY]` names it and it is bound
into the log context and `strategies.current_strategy()` for the rest of the request. A credential that is no
strategy's is the same 401 as any wrong secret.

On success it sets `request[AUTHENTICATED]`: `errors` (the outermost step, through `rate_limit.charge_failure`)
charges every webhook request that fails without it to the source address, and a raised `AuthError` also to
that address's failed-auth bucket.
So the accounting needs no call from here into the limiter, and turning rate limiting off leaves auth as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from tvbridge.errors import AuthError
from tvbridge.keys import AUTHENTICATED, RAW_ALERT, SOURCE_IP, STRATEGY
from tvbridge.middlewares.body_limit import body_of
from tvbridge.parsing import decode_body
from tvbridge.refusals import should_log
from tvbridge.routes import PATH_TOKEN
from tvbridge.strategies import enter_strategy, pick

if TYPE_CHECKING:
    from tvbridge.secretstore import Credentials

log = structlog.get_logger()


def _failed(request: web.Request, reason: str, message: str = "Invalid webhook secret") -> AuthError:
    """The refusal, after its `auth.failed` line when the request is one `tvbridge.refusals` samples."""
    if should_log(request, 401):
        log.warning("auth.failed", source=request.get(SOURCE_IP), reason=reason)
    return AuthError(message)


def _authenticated(request: web.Request, strategy: str) -> None:
    request[AUTHENTICATED] = True
    request[STRATEGY] = strategy
    enter_strategy(strategy)  # the rest of the request (the same task) runs under it


def authenticate(credentials: Credentials, request: web.Request) -> None:
    """Decode the body into `RAW_ALERT` and check the path token or the body's secret against every strategy's
    (401); on success set `AUTHENTICATED` and `STRATEGY` (the strategy whose credential matched)."""
    token = request.match_info.get(PATH_TOKEN)
    if token is not None:
        if not credentials.path_tokens:
            raise web.HTTPNotFound  # no path token configured: /webhook/<anything> is no route
        strategy = pick(credentials.path_tokens, token)
        if strategy is None:
            raise _failed(request, "wrong path token")
        request[RAW_ALERT] = decode_body(body_of(request))
        _authenticated(request, strategy)
        return
    raw = decode_body(body_of(request))
    request[RAW_ALERT] = raw
    if "secret" not in raw:
        raise _failed(request, "no secret in the alert", "Invalid webhook secret: the alert has no secret")
    strategy = pick(credentials.secrets, raw["secret"])
    if strategy is None:
        raise _failed(request, "wrong secret")
    _authenticated(request, strategy)
