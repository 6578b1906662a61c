"""The middleware pipeline and its order, in one place.

Outermost first:
1. `request_id`  the alert id, `X-Request-ID`, log context, one `http.request` line with the final status
                  (outermost so that even an error answer carries the id and is logged with its status);
2. `errors`       the only code that turns exceptions into HTTP answers;
3. `body_limit`   413 before a large body is read whole, and a read deadline for slow clients;
4. `auth`         secret in the body or a path token, constant-time; decodes the body once (400 if not JSON).

Guards act on the webhook routes only (`routes.is_webhook`); the admin endpoints check the admin token in
their handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvbridge.middlewares.auth import auth
from tvbridge.middlewares.body_limit import body_limit
from tvbridge.middlewares.errors import errors
from tvbridge.middlewares.request_id import request_id

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

    from tvbridge.config import Config
    from tvbridge.secretstore import Credentials


def build_middlewares(config: Config, credentials: Credentials) -> list[Middleware]:
    return [
        request_id(),
        errors(),
        body_limit(config.limits),
        auth(credentials),
    ]
