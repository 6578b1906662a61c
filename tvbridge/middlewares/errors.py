"""Step 2: the only code that builds error answers.

A `TvBridgeError` gets the status `errors.http_status_of` finds for its class and the contract's body
(`status`, the guide's `message`, `errors` with paths for a 422, `alert_id`); aiohttp's own HTTP errors (404,
405, 413) get the same shape. Anything else is a bug: 500, the traceback in the log, no detail in the answer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from tvbridge.errors import InvalidAlertError, RateLimitedError, TvBridgeError, http_status_of
from tvbridge.keys import ALERT_ID, REFUSALS, SOURCE_IP
from tvbridge.metrics import reason_of, refused
from tvbridge.routes import is_webhook

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger()


def error_response(request: web.Request, status: int, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"status": "error", "message": message, "alert_id": request.get(ALERT_ID), **extra}
    return web.json_response(body, status=status)


async def _keep(request: web.Request, status: int, reason: str, message: str, errors: list[str]) -> None:
    """A refused webhook request goes to the refusal log (the status page lists it with its reason)."""
    if (refusals := request.app.get(REFUSALS)) is not None and is_webhook(request):
        await refusals.record(request, status=status, reason=reason, message=message, errors=errors)


def errors() -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TvBridgeError as e:
            status = http_status_of(e)
            refused(request.app, reason_of(e))
            extra: dict[str, Any] = {}
            headers: dict[str, str] = {}
            if isinstance(e, InvalidAlertError):
                extra["errors"] = e.errors
            if isinstance(e, RateLimitedError):
                headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
            log.info(
                "request.refused",
                status=status,
                reason=type(e).__name__,
                message=str(e),
                source=request.get(SOURCE_IP),
                **({"errors": e.errors} if isinstance(e, InvalidAlertError) else {}),
            )
            response = error_response(request, status, str(e), **extra)
            response.headers.update(headers)
            await _keep(request, status, reason_of(e), str(e), extra.get("errors", []))
            return response
        except web.HTTPException as e:
            if e.status < 400:
                raise
            await _keep(request, e.status, "http", e.reason, [])
            return error_response(request, e.status, e.reason)
        except Exception:
            log.exception("request.failed")
            return error_response(request, 500, "internal error: see the server log for this alert id")

    return middleware
