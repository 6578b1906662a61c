"""The middleware pipeline and its order, in one place.

Outermost first:
1. `request_id`    the alert id, `X-Request-ID`, log context, one `http.request` line with the final status
                    (outermost so that even an error answer carries the id and is logged with its status);
2. `errors`         the only code that turns exceptions into HTTP answers;
3. `client_cert`    with `auth.require_client_cert`: TradingView's TLS client certificate, checked before the
                    body is read (403);
4. `body_limit`     413 before a large body is read whole, and a read deadline for slow clients;
5. `ip_allowlist`   the real client address (`trusted_proxies`, `X-Forwarded-For`) into `request[SOURCE_IP]`
                    for every later step and log line, and 403 for callers not on `ip_allowlist.allow`;
6. `rate_limit`     before auth: per-address buckets for failed auth and unauthenticated traffic (429 +
                    `Retry-After`); needs `SOURCE_IP`. `errors` charges every unauthenticated refusal, from
                    whichever step, to its source (`rate_limit.charge_failure`), never to the global bucket;
7. `auth`           secret in the body or a path token, constant-time; decodes the body once (400 if not JSON);
                    sets `AUTHENTICATED`, by which `rate_limit` tells failures from genuine alerts;
8. `dedupe`         the same alert within the window runs once; needs `RAW_ALERT`, sets `DEDUPE_KEY` for the
                    handler to journal;
9. `rate_limit`     after dedupe: the strategy's bucket and a global token, for genuine alerts that will run
                    (per-strategy limiting needs the secret checked and the alert decoded; a repeat answered
                    from its first copy places nothing, so it costs no token and fifty copies are fifty 200s).

Each guard can be turned off in config (`ip_allowlist.enabled`, `rate_limit.enabled`, `dedupe.enabled`,
`auth.require_client_cert`; the body limit and the secret always apply). Guards act on the webhook routes
only (`routes.is_webhook`); the admin endpoints check the admin token in their handlers. A guard's refusal is
an exception (answered by `errors`) after one JSON log line of its own with the reason; the alert id is in
every line through the log context; a refusal's lines are written for a sample (`tvbridge.refusals`), and
`request_id` already knows the real client (`trusted_proxies`), so the body limit's refusals count against it.
The guards' tables (`RATE_LIMITER`, `DEDUPER`) are app state, made by `rate_limit_ctx` and `dedupe_ctx`
(registered in `app.py`); the middlewares here only read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvbridge.middlewares.auth import auth
from tvbridge.middlewares.body_limit import body_limit
from tvbridge.middlewares.client_cert import client_cert
from tvbridge.middlewares.dedupe import dedupe
from tvbridge.middlewares.errors import errors
from tvbridge.middlewares.ip_allowlist import ip_allowlist
from tvbridge.middlewares.rate_limit import rate_limit
from tvbridge.middlewares.request_id import request_id

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials


def build_middlewares(config: Config, credentials: Credentials) -> list[Middleware]:
    rate_limit_before_auth, rate_limit_after_auth = rate_limit(config.rate_limit)
    return [
        request_id(config.ip_allowlist.trusted_proxies),
        errors(),
        client_cert(config.auth),
        body_limit(config.limits),
        ip_allowlist(config.ip_allowlist),
        rate_limit_before_auth,
        auth(credentials),
        dedupe(config.dedupe),
        rate_limit_after_auth,
    ]
