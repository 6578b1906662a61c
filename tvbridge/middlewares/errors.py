"""Step 2: the only code that builds error answers.

A `TvBridgeError` gets the status `errors.http_status_of` finds for its class and the contract's body
(`status`, the guide's `message`, `errors` with paths for a 422, `alert_id`); aiohttp's own HTTP errors (404,
405, 413) get the same shape. Anything else is a bug: 500, the traceback in the log, no detail in the answer.

Every refusal is counted (`tvbridge_refusals_total{status, reason}`); its `request.refused` line is written for
the sample `tvbridge.refusals` picks. Messages and a 422's problem lines are cut to a bounded length: they can
quote what the client sent.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from tvbridge.errors import InvalidAlertError, RateLimitedError, RequestError, TvBridgeError, http_status_of
from tvbridge.keys import ALERT_ID, REFUSAL_JOURNAL, SOURCE_IP
from tvbridge.metrics import reason_of, refused
from tvbridge.middlewares.rate_limit import charge_failure
from tvbridge.refusals import should_log
from tvbridge.routes import is_webhook
from tvbridge.text import bounded

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger()


MESSAGE_LIMIT: Final = 500
"""Characters of an error message answered and logged (a message can quote what the client sent)."""
MAX_ERRORS: Final = 100
"""Problems listed in a 422 (an alert with a thousand bad legs gets the first ones and a count)."""


def bounded_errors(errors: list[str]) -> list[str]:
    """A 422's problem lines, each and all of them cut to a bounded size."""
    shown = [bounded(line, MESSAGE_LIMIT) for line in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append(f"... and {len(errors) - MAX_ERRORS} more")
    return shown


def _snake(reason: str) -> str:
    """aiohttp's reason phrase as a label value: `Not Found` -> `not_found` (a small, fixed set)."""
    return reason.lower().replace(" ", "_").replace("-", "_")


def error_response(request: web.Request, status: int, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"status": "error", "message": message, "alert_id": request.get(ALERT_ID), **extra}
    response = web.json_response(body, status=status)
    if not request.content.is_eof():
        # the body was not read to its end (too large, undecodable, cut off): what follows on this connection
        # is not a request, so the answer closes it (`Connection: close`)
        response.force_close()
    return response


async def _keep(request: web.Request, status: int, reason: str, message: str, errors: list[str]) -> None:
    """A refused webhook request goes to the journal's refusals table (the status page lists it with its reason)."""
    if (journal := request.app.get(REFUSAL_JOURNAL)) is not None and is_webhook(request):
        await journal.record(request, status=status, reason=reason, message=message, errors=errors)


def errors() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TvBridgeError as e:
            status = http_status_of(e)
            refused(request.app, reason_of(e), status)
            if isinstance(e, RequestError):
                charge_failure(request, e)
            message = bounded(str(e), MESSAGE_LIMIT)
            extra: dict[str, Any] = {}
            headers: dict[str, str] = {}
            if isinstance(e, InvalidAlertError):
                extra["errors"] = bounded_errors(e.errors)
            if isinstance(e, RateLimitedError):
                headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
            if should_log(request, status):
                log.info(
                    "request.refused",
                    status=status,
                    reason=type(e).__name__,
                    message=message,
                    source=request.get(SOURCE_IP),
                    **extra,
                )
            response = error_response(request, status, message, **extra)
            response.headers.update(headers)
            await _keep(request, status, reason_of(e), str(e), extra.get("errors", []))
            return response
        except web.HTTPException as e:
            if e.status < 400:
                raise
            refused(request.app, _snake(e.reason), e.status)
            charge_failure(request, e)
            await _keep(request, e.status, "http", e.reason, [])
            return error_response(request, e.status, e.reason)
        except Exception:
            log.exception("request.failed")
            return error_response(request, 500, "internal error: see the server log for this alert id")

    return middleware
