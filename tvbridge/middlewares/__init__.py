"""The middleware pipeline and the guards' order, in one place.

Three aiohttp middlewares, outermost first:
1. `request_id`     the alert id, `X-Request-ID`, the arrival time, the real client address (`trusted_proxies`) in
                    `request[SOURCE_IP]`, log context, one `http.request` line with the final status
                    (outermost so that even an error answer carries the id and is logged with its status); for a
                    placed alert, its `alert.done` with the answer's status instead (`tvbridge/accessline.py`);
2. `errors`         the only code that turns exceptions into HTTP answers;
3. `guards`         on the webhook routes, the guards below as plain functions, in this order, in one pass (issue
                    22: one coroutine frame per request instead of one per guard); every other route goes
                    straight to its handler (the admin endpoints check the admin token themselves).

The guards, each its own small module with one plain function; what one learns is written into the request's
state (its `RequestKey`s, `keys.py`) for the next ones and the handler:
3a. `client_cert`   with `auth.require_client_cert`: TradingView's TLS client certificate, checked before the
                    body is read (403);
3b. `body_limit`    413 before a large body is read whole, and a read deadline for slow clients; the bytes in
                    `BODY`, read once;
3c. `ip_allowlist`  403 for callers not on `ip_allowlist.allow` (when enabled);
3d. `rate_limit`    before auth (`check_source`): per-address buckets for failed auth and unauthenticated traffic
                    (429 + `Retry-After`); needs `SOURCE_IP`. `errors` charges every unauthenticated refusal, from
                    whichever step, to its source (`rate_limit.charge_failure`), never to the global bucket;
3e. `auth`          secret in the body or a path token, constant-time; decodes the body once into `RAW_ALERT` (400
                    if not JSON); sets `AUTHENTICATED` (by which `rate_limit` tells failures from genuine alerts)
                    and `STRATEGY` (the strategy whose credential matched: `tvbridge/strategies.py`);
3f. `dedupe`        the same alert within the window runs once; needs `RAW_ALERT`, sets `DEDUPE_KEY` for the
                    journal; it wraps the steps after it, to release its claim with their answer's status;
3g. `rate_limit`    after dedupe (`check_strategy`): the strategy's bucket and a global token, for genuine alerts
                    that will run (per-strategy limiting needs the secret checked and the alert decoded; a repeat
                    answered from its first copy places nothing, so it costs no token and fifty copies are fifty
                    200s);
then the handler (`handlers.webhook` -> `alerts/flow.py`).

Each guard can be turned off in config (`ip_allowlist.enabled`, `rate_limit.enabled`, `dedupe.enabled`,
`auth.require_client_cert`; the body limit and the secret always apply). A guard's refusal is an exception
(answered by `errors`) after one JSON log line of its own with the reason; the alert id is in every line
through the log context; a refusal's lines are written for a sample (`tvbridge.refusals`), and `request_id`
already knows the real client (`trusted_proxies`), so the body limit's refusals count against it. The guards'
tables (`RATE_LIMITER`, `DEDUPER`) are app state, made by `rate_limit_ctx` and `dedupe_ctx` (registered in
`app.py`); the guards here only read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tvbridge.middlewares.auth import authenticate
from tvbridge.middlewares.body_limit import read_body
from tvbridge.middlewares.client_cert import check_client_cert
from tvbridge.middlewares.dedupe import deduplicated
from tvbridge.middlewares.errors import errors
from tvbridge.middlewares.ip_allowlist import ip_check
from tvbridge.middlewares.rate_limit import check_source, check_strategy
from tvbridge.middlewares.request_id import request_id
from tvbridge.routes import is_webhook

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials


def build_middlewares(config: Config, credentials: Credentials) -> list[Middleware]:
    return [request_id(config.ip_allowlist.trusted_proxies), errors(), guards(config, credentials)]


def guards(config: Config, credentials: Credentials) -> Middleware:
    """The guards of the webhook routes, in the order of the module docstring, in one middleware."""
    allowlist = ip_check(config.ip_allowlist)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_webhook(request):
            return await handler(request)
        check_client_cert(config.auth, request)
        post = request.method == "POST"
        if post:
            await read_body(config.limits, request)
        allowlist(request)
        if not post:
            return await handler(request)
        check_source(request)
        authenticate(credentials, request)

        async def admitted() -> web.StreamResponse:
            check_strategy(request)
            return await handler(request)

        return await deduplicated(config.dedupe, request, admitted)

    return middleware
