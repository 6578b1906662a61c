"""The status page's controls: halt, resume, flatten (preview, then an explicit confirmation) and cancelling a
queued alert, as `POST /status/actions/<name>`.

Why their own routes and not `POST /admin/*`: those take only a Bearer token, which a page cannot hold; the page
has the browser's Basic login instead. But a browser sends Basic credentials with any request to this origin,
also one a hostile page makes it send, so every action here needs, besides the admin token, the CSRF token
printed in the page (an HMAC of the admin token, in the `X-CSRF-Token` header: another origin can neither read
the page nor set that header on a form post). Without it: 403, nothing done. Nothing changes on a GET (405).

Every action is journaled (table `admin_actions`, in the journal's file, the newest `MAX_ACTIONS` kept) with its
source address, and logged (`admin.action`); the page lists the latest ones. Halting per strategy needs
`[strategies]`, which the config does not have yet: halt and resume act on all trading.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from tvbridge import notify
from tvbridge.access import has_admin_token
from tvbridge.alertqueue import cancel_entries
from tvbridge.broker import BrokerError
from tvbridge.errors import (
    AuthError,
    BadRequestError,
    ForbiddenError,
    JournalError,
    NotFoundError,
    UnavailableError,
)
from tvbridge.flatten import execute, make_plan
from tvbridge.halt import clear_halt, halt_path, set_halt
from tvbridge.keys import BROKERS, CONFIG, CREDENTIALS, JOURNAL, ORDER_LOG, SCHEDULER, SOURCE_IP

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from tvbridge.store import Store

log = structlog.get_logger()

CSRF_HEADER: Final = "X-CSRF-Token"
MAX_ACTIONS: Final = 1000
SHOWN_ACTIONS: Final = 20
BY: Final = "status page"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS admin_actions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    source  TEXT,
    by      TEXT NOT NULL
)
"""


def csrf_token(app: web.Application) -> str:
    """The page's CSRF token: derived from the admin token, so it changes when the token does."""
    token = app[CREDENTIALS].admin_token
    # surrogatepass, as the token compares do: an admin token from a non-UTF-8 environment is still a token
    return hmac.new(token.encode("utf-8", "surrogatepass"), b"tvbridge status csrf", hashlib.sha256).hexdigest()


def create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)


async def recent_actions(store: Store) -> list[dict[str, Any]]:
    """The latest actions, newest first."""
    rows = await store.fetch(
        "SELECT at, action, detail, source, by FROM admin_actions ORDER BY id DESC LIMIT ?", SHOWN_ACTIONS
    )
    return [
        {"at": r["at"], "action": r["action"], "detail": json.loads(r["detail"]), "source": r["source"], "by": r["by"]}
        for r in rows
    ]


async def actions_version(store: Store) -> str:
    [row] = await store.fetch("SELECT max(id) FROM admin_actions")
    return str(row[0])


def _check(request: web.Request) -> None:
    """The admin token (Basic or Bearer), then the CSRF token; raises `AuthError` (401) / `ForbiddenError` (403)."""
    if not has_admin_token(request):
        log.warning("admin.auth_failed", path=request.path, source=request.get(SOURCE_IP))
        raise AuthError("admin token required")
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), csrf_token(request.app).encode()):
        log.warning("admin.csrf_refused", path=request.path, source=request.get(SOURCE_IP))
        raise ForbiddenError(f"CSRF token missing or wrong ({CSRF_HEADER}): reload the status page")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        raw = await request.json()
    except ValueError:
        raise BadRequestError("body is not JSON") from None
    if not isinstance(raw, dict):
        raise BadRequestError("body must be a JSON object")
    return raw


async def _journal(request: web.Request, action: str, detail: dict[str, Any]) -> bool:
    """Journal and log the action; whether it was journaled (the action itself is done either way)."""
    source = request.get(SOURCE_IP)
    log.warning("admin.action", action=action, by=BY, source=source, detail=detail)
    row = (datetime.now(UTC).isoformat(), action, json.dumps(detail, default=str), source, BY)

    statements: list[tuple[str, Sequence[object]]] = [
        ("INSERT INTO admin_actions (at, action, detail, source, by) VALUES (?, ?, ?, ?, ?)", row),
        ("DELETE FROM admin_actions WHERE id <= (SELECT max(id) FROM admin_actions) - ?", (MAX_ACTIONS,)),
    ]
    try:
        await request.app[JOURNAL].run(statements)
    except JournalError:
        log.exception("admin.action_not_journaled", action=action)
        return False
    return True


async def halt(request: web.Request) -> web.Response:
    _check(request)
    raw = await _body(request)
    reason = str(raw.get("reason", ""))[:200] or "halted from the status page"
    state = set_halt(halt_path(request.app[CONFIG].server.data_dir), reason=reason, by=BY)
    notify.event(request.app, "halted", f"trading halted from the status page: {reason}")
    journaled = await _journal(request, "halt", {"reason": state.reason})
    return web.json_response({"halted": True, "reason": state.reason, "since": state.since, "journaled": journaled})


async def resume(request: web.Request) -> web.Response:
    _check(request)
    was = clear_halt(halt_path(request.app[CONFIG].server.data_dir))
    notify.event(request.app, "resumed", "trading resumed from the status page")
    if (scheduler := request.app.get(SCHEDULER)) is not None:
        scheduler.wake.set()
    journaled = await _journal(request, "resume", {"was_halted": was})
    return web.json_response({"halted": False, "was_halted": was, "journaled": journaled})


async def flatten(request: web.Request) -> web.Response:
    """`{"account": NAME}`: the plan, nothing sent; `{"account": NAME, "confirm": true}`: carried out."""
    _check(request)
    raw = await _body(request)
    account = str(raw.get("account", ""))
    brokers = request.app[BROKERS]
    if account not in brokers:
        raise BadRequestError(f"account: must be one of {', '.join(brokers)}")
    try:
        plan = await make_plan(account, brokers[account])
    except BrokerError as e:
        raise UnavailableError(f"account {account}: cannot list what is open: {e}") from None
    body: dict[str, Any] = {"plan": plan.as_json(), "lines": plan.lines(), "done": [], "journaled": False}
    if raw.get("confirm") is True:
        detail: dict[str, Any] = {"account": account}
        if not plan.unsupported:
            report = await execute(
                plan,
                brokers[account],
                broker_name=request.app[CONFIG].broker_of(account),
                journal=request.app[JOURNAL],
                order_log=request.app[ORDER_LOG],
                source=BY,
            )
            body.update(done=list(report.lines), alert_id=report.alert_id, status=report.status)
            detail |= {"alert_id": report.alert_id, "status": report.status}
        body["journaled"] = await _journal(request, "flatten", detail)
    return web.json_response(body)


async def cancel_queued(request: web.Request) -> web.Response:
    _check(request)
    raw = await _body(request)
    alert_id = str(raw.get("alert_id", ""))
    cancelled = await cancel_entries(request.app[JOURNAL], alert_id)
    if not cancelled:
        raise NotFoundError(f"alert {alert_id!r} has nothing queued")
    accounts = [entry.account for entry in cancelled]
    journaled = await _journal(request, "cancel_queued", {"alert_id": alert_id, "accounts": accounts})
    return web.json_response({"alert_id": alert_id, "cancelled": accounts, "journaled": journaled})


ACTIONS: Final[dict[str, Callable[[web.Request], Awaitable[web.Response]]]] = {
    "halt": halt,
    "resume": resume,
    "flatten": flatten,
    "cancel": cancel_queued,
}


def add_routes(app: web.Application) -> None:
    for name, handler in ACTIONS.items():
        app.router.add_post(f"/status/actions/{name}", handler)


async def actions_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the `admin_actions` table in the journal's file."""
    await app[JOURNAL].ensure_tables(create_schema)
    yield


def action_paths() -> dict[str, Any]:
    """The OpenAPI description of the controls (merged into /openapi.json by `status.status_paths`)."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    described = {
        "halt": ("Halt all trading from the status page", {"reason": {"type": "string"}}),
        "resume": ("Resume trading from the status page", {}),
        "flatten": (
            "Flatten an account: its plan, or with `confirm: true` carried out",
            {"account": {"type": "string"}, "confirm": {"type": "boolean"}},
        ),
        "cancel": ("Cancel a queued alert", {"alert_id": {"type": "string"}}),
    }
    return {
        f"/status/actions/{name}": {
            "post": {
                "summary": summary,
                "operationId": f"statusAction{name.capitalize()}",
                "security": [{"basic": []}, {"bearer": []}],
                "parameters": [{"name": CSRF_HEADER, "in": "header", "required": True, "schema": {"type": "string"}}],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object", "properties": properties}}},
                },
                "responses": {
                    "200": {"description": "done", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": {"description": "bad body", **error},
                    "401": {"description": "admin token required", **error},
                    "403": {"description": "CSRF token missing or wrong", **error},
                    "404": {"description": "nothing queued for that alert", **error},
                },
            }
        }
        for name, (summary, properties) in described.items()
    }
