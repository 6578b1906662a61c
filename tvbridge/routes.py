"""Route names and the questions middlewares ask about a request's route."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from aiohttp import web

WEBHOOK: Final = "webhook"
WEBHOOK_TOKEN: Final = "webhook_token"  # noqa: S105 - a route name
PATH_TOKEN: Final = "path_token"  # noqa: S105 - a URL variable name
"""The match_info key of `/webhook/{path_token}`."""


def is_webhook(request: web.Request) -> bool:
    route = request.match_info.route
    return route.name in {WEBHOOK, WEBHOOK_TOKEN}


def public_path(request: web.Request) -> str:
    """The request path fit for a log line: a path token is masked."""
    if request.match_info.route.name == WEBHOOK_TOKEN:
        return "/webhook/<path_token>"
    return request.path
