"""`GET /status`: what happened today, at a glance, in a browser; live through server-sent events.

For the operator who wants to see, without a terminal, whether the server and brokers are healthy, whether
trading is halted, which alerts came today (India's trading day, Asia/Kolkata) with their legs and results, and
the paper broker's open positions. The page needs the admin token (HTTP Basic with the token as password, so a
browser asks for it; or Bearer). It opens `GET /status/events`, an event stream that sends the whole summary
again whenever the journal changes; the stream's URL carries an HMAC of the admin token (never the token), so
the browser's EventSource needs no header. The journal is the only source of the alerts shown: what the page
shows is what recovery and `GET /alerts/<id>` see.

What the summary holds (issue 21): every alert that reached us today, accepted or refused
(`tvbridge/refusal_journal.py`;
401s only counted), with the reason in plain words; each leg's order state as order follow-up records it; the day's
positions and realised/unrealised P&L per account from the journal's fills (`tvbridge/pnl.py`) beside the broker's
own positions; realised P&L over time and alerts per minute by outcome (drawn by the page as inline SVG); the state
of the day (market phase, halt, broker health); and the admin actions taken from the page
(`tvbridge/status_actions.py`). Per-strategy figures need `[strategies]`, which the config does not have yet.
Times travel as ISO UTC; the page shows them in IST (seconds), with UTC on hover.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import re
from datetime import UTC, datetime, time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from tvbridge import __version__, readiness
from tvbridge.access import has_admin_token, same_token
from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.halt import halt_path, read_halt
from tvbridge.keys import (
    ALERT_ID,
    BROKERS,
    CALENDAR,
    CONFIG,
    CREDENTIALS,
    FOLLOWUP,
    JOURNAL,
    NOW,
    REFUSAL_JOURNAL,
    SOURCE_IP,
    STATE,
    STRATEGY_BOOK,
)
from tvbridge.pnl import Fill, day_pnl, decimal_or_none
from tvbridge.refusal_journal import refusals_version, today_refusals
from tvbridge.sessions import EXCHANGES
from tvbridge.status_actions import action_paths, actions_version, csrf_token, recent_actions
from tvbridge.strategies import strategy_halt_path

if TYPE_CHECKING:
    from collections.abc import Mapping
    from decimal import Decimal

    from tvbridge.broker import Broker
    from tvbridge.config import Config
    from tvbridge.store import Store

log = structlog.get_logger()

MARKET_TZ: Final = ZoneInfo("Asia/Kolkata")
MAX_ALERTS: Final = 200
"""Alerts listed (accepted and refused each); counts and charts cover the whole day."""
REASON_STATUSES: Final = frozenset({"stale", "failed", "rejected", "expired", "cancelled", "partial", "unknown"})
"""Accepted alerts whose answer's `message` is worth showing as their reason."""
POLL_S: Final = 0.25
"""How often an open event stream looks for a change in the journal (one small read)."""
KEEPALIVE_S: Final = 15.0


def _stream_key(request: web.Request) -> str:
    token = request.app[CREDENTIALS].admin_token
    # surrogatepass: a token read from a non-UTF-8 environment variable holds lone surrogates (as in access.py)
    return hmac.new(token.encode("utf-8", "surrogatepass"), b"tvbridge status events", hashlib.sha256).hexdigest()


def _refusal(request: web.Request, *, stream: bool = False) -> web.Response | None:
    """None when the request may see the status; else the 401 that makes a browser ask for the token."""
    if has_admin_token(request):
        return None
    if stream and same_token(request.query.get("key", ""), _stream_key(request)):
        return None
    log.warning("admin.auth_failed", path=request.path, source=request.get(SOURCE_IP))
    body = {"status": "error", "message": "admin token required", "alert_id": request.get(ALERT_ID)}
    return web.json_response(
        body, status=401, headers={"WWW-Authenticate": 'Basic realm="tvbridge status", charset="UTF-8"'}
    )


def page_refusal(request: web.Request) -> web.Response | None:
    """For other admin pages (`GET /alerts/<id>` as HTML): None when the admin token is there, else the 401 that
    makes a browser ask for it."""
    return _refusal(request)


PLACEHOLDER: Final = re.compile(r"__([A-Z]+)__")


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `__NAME__` replaced by `values[NAME]`, in one pass: a value that itself reads
    `__ALERTS__` or `__KEY__` (a symbol, a broker's detail) stays text; chained replaces filled it in (the
    stream key, or a whole table, inside a cell)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _day_start_utc(now: datetime) -> str:
    local = now.astimezone(MARKET_TZ)
    return datetime.combine(local.date(), time(), MARKET_TZ).astimezone(UTC).isoformat()


async def _version(db: Store, since: str) -> str:
    """Changes when anything the page shows from the journal changes (one small read per stream tick)."""
    [row] = await db.fetch("SELECT count(*), max(updated_at) FROM alerts WHERE received_at >= ?", since)
    return f"{row[0]}:{row[1]}/{await refusals_version(db, since)}/{await actions_version(db)}"


async def _alerts_today(db: Store, since: str) -> dict[str, Any]:
    rows = await db.fetch(
        "SELECT alert_id, received_at, alert_type, status, updated_at, response, strategy FROM alerts"
        " WHERE received_at >= ?"
        " ORDER BY received_at DESC LIMIT ?",
        since,
        MAX_ALERTS,
    )
    ids = [row["alert_id"] for row in rows]
    legs: dict[str, list[dict[str, Any]]] = {alert_id: [] for alert_id in ids}
    if ids:
        marks = ",".join("?" * len(ids))
        for leg in await db.fetch(
            f"SELECT alert_id, account, leg_number, state, order_id, order_state, filled_quantity, average_price,"  # noqa: S608 - only placeholders
            f" message, order_message, result FROM legs"
            f" WHERE alert_id IN ({marks}) ORDER BY account, leg_number",
            *ids,
        ):
            result = json.loads(leg["result"]) if leg["result"] else {}
            legs[leg["alert_id"]].append(
                {
                    "account": leg["account"],
                    "leg": leg["leg_number"],
                    "state": leg["state"],
                    "symbol": result.get("symbol", ""),
                    "transaction": result.get("transaction", ""),
                    "quantity": result.get("quantity", ""),
                    "order_id": leg["order_id"],
                    "order_state": leg["order_state"],
                    "filled_quantity": leg["filled_quantity"],
                    "average_price": leg["average_price"],
                    "message": leg["order_message"] or leg["message"] or "",
                }
            )
    accepted = [
        {
            "alert_id": row["alert_id"],
            "received_at": row["received_at"],
            "alert_type": row["alert_type"],
            "strategy": row["strategy"] or DEFAULT_STRATEGY,
            "status": row["status"],
            "reason": _reason_of(row["status"], row["response"]),
            "accounts": sorted({leg["account"] for leg in legs[row["alert_id"]]}),
            "legs": legs[row["alert_id"]],
        }
        for row in rows
    ]
    refused = await today_refusals(db, since, MAX_ALERTS)
    merged = sorted([*accepted, *refused], key=lambda a: a["received_at"], reverse=True)
    return {
        "version": await _version(db, since),
        "alerts": merged[:MAX_ALERTS],
        "per_minute": await _per_minute(db, since),
        "actions": await recent_actions(db),
        **await _fills_today(db, since),
    }


def _reason_of(status: str, response: str | None) -> str:
    if status not in REASON_STATUSES or not response:
        return ""
    try:
        body = json.loads(response)
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


async def _per_minute(db: Store, since: str) -> list[dict[str, Any]]:
    """Alerts per minute (UTC, `YYYY-MM-DDTHH:MM`) by outcome, the whole day: accepted ones by their status,
    refused ones as `refused`."""
    rows = await db.fetch(
        "SELECT substr(received_at, 1, 16) AS minute, status AS outcome, count(*) AS n FROM alerts"
        " WHERE received_at >= ? GROUP BY minute, outcome"
        " UNION ALL SELECT substr(received_at, 1, 16), 'refused', count(*) FROM refusals"
        " WHERE received_at >= ? GROUP BY 1 ORDER BY 1, 2",
        since,
        since,
    )
    return [{"minute": row[0], "outcome": row[1], "count": row[2]} for row in rows]


def _exits(payload: str) -> set[tuple[str, str]]:
    """(exchange, symbol) of the alert's `manage_position` legs: their side is the broker's choice (opposite to
    the position), not the leg's `transactionType`."""
    try:
        legs = json.loads(payload).get("order_legs", [])
    except (ValueError, AttributeError):
        return set()
    return {
        (str(leg.get("exchange", "")), str(leg.get("symbol", "")))
        for leg in legs
        if isinstance(leg, dict) and leg.get("manage_position")
    }


async def _fills_today(db: Store, since: str) -> dict[str, Any]:
    """The day's fills and last prices, as `tvbridge.pnl.day_pnl` takes them, and what it makes of them."""
    fills = []
    last: dict[tuple[str, str], tuple[str, Decimal]] = {}
    exits: dict[str, set[tuple[str, str]]] = {}
    for leg in await db.fetch(
        "SELECT legs.alert_id, legs.account, legs.filled_quantity, legs.average_price, legs.result, alerts.payload,"
        " COALESCE(legs.order_updated_at, legs.updated_at) AS at FROM legs"
        " JOIN alerts ON alerts.alert_id = legs.alert_id WHERE alerts.received_at >= ? AND legs.result IS NOT NULL",
        since,
    ):
        result = json.loads(leg["result"])
        key = (str(result.get("exchange", "")), str(result.get("symbol", "")))
        if leg["alert_id"] not in exits:
            exits[leg["alert_id"]] = _exits(leg["payload"])
        side = "EXIT" if key in exits[leg["alert_id"]] else str(result.get("transaction", ""))
        price = decimal_or_none(result.get("price"))
        fill_price = decimal_or_none(leg["average_price"])
        for seen in (price, fill_price):
            if seen is not None and seen > 0 and (key not in last or last[key][0] <= leg["at"]):
                last[key] = (leg["at"], seen)
        if leg["filled_quantity"] and fill_price is not None and side in {"B", "S", "EXIT"}:
            fills.append(
                Fill(
                    at=leg["at"],
                    account=leg["account"],
                    exchange=key[0],
                    symbol=key[1],
                    side=side,
                    quantity=int(leg["filled_quantity"]),
                    price=fill_price,
                )
            )
    return {"pnl": day_pnl(fills, {key: price for key, (_, price) in last.items()})}


async def _broker_health(account: str, broker: Broker) -> dict[str, Any]:
    try:
        async with asyncio.timeout(2):
            health = await broker.health()
    except Exception as e:  # noqa: BLE001 - a failing health check is a finding
        return {"account": account, "ok": False, "detail": f"health check failed: {type(e).__name__}"}
    return {"account": account, "ok": health.ok, "detail": health.detail}


async def _positions(account: str, broker: Broker) -> list[dict[str, Any]]:
    """Open positions of brokers that declare `capabilities.positions`; others show none."""
    if not broker.capabilities.positions:
        return []
    try:
        async with asyncio.timeout(2):
            found = await broker.positions()
    except Exception:  # noqa: BLE001 - positions are a nicety on this page
        return []
    return [
        {
            "account": account,
            "symbol": p.contract.symbol,
            "exchange": p.contract.exchange.value,
            "contract": p.contract.describe(),
            "product": p.product.value,
            "net_quantity": str(p.net_quantity),
            "average_price": str(p.average_price or ""),
            "realised": str(p.details.get("realized_pnl") or ""),
        }
        for p in found
    ]


async def summary(app: web.Application) -> dict[str, Any]:
    """Everything the page shows, as JSON (the event stream sends this)."""
    now = datetime.now(UTC)
    journal = app[JOURNAL]
    day_start = _day_start_utc(now)
    today = await _alerts_today(journal, day_start)
    brokers = app.get(BROKERS, {})
    state = app[STATE]
    config = app[CONFIG]
    health = await asyncio.gather(*(_broker_health(a, b) for a, b in brokers.items()))
    positions = [p for found in await asyncio.gather(*(_positions(a, b) for a, b in brokers.items())) for p in found]
    clock = app[NOW]()
    calendar = app[CALENDAR]
    halt = read_halt(halt_path(config.server.data_dir))
    refusals = app.get(REFUSAL_JOURNAL)
    market = []
    for exchange in EXCHANGES:
        found = calendar.status(exchange, clock)
        market.append(
            {
                "exchange": exchange,
                "open": found.open,
                "phase": found.phase,
                "reason": found.reason,
                "next_open": found.next_open.astimezone(MARKET_TZ).isoformat() if found.next_open else None,
            }
        )
    return {
        "market": market,
        "server": {
            "version": __version__,
            "started_at": state.started_at.isoformat(),
            "now": now.isoformat(),
            "accepting": not state.shutting_down,
            "halted": halt is not None,
            "halt": {"reason": halt.reason, "since": halt.since, "by": halt.by} if halt is not None else None,
            "journal_ok": journal.healthy,
            "accounts": {a: config.broker_of(a) for a in config.used_accounts},
            "day_start": day_start,
            "unauthenticated": refusals.unauthenticated if refusals is not None else 0,
            "refusals_not_journaled": refusals.not_journaled if refusals is not None else 0,
            "strategies": _strategies(config),
        },
        "brokers": health,
        "followup": _followup(app),
        **readiness.summary_of(app),
        "positions": positions,
        "strategy_positions": await _strategy_positions(app),
        **today,
    }


def _strategies(config: Config) -> dict[str, Any] | None:
    """Each `[strategies.NAME]`: its accounts and whether it is halted (None without strategies)."""
    if not config.strategies:
        return None
    out: dict[str, Any] = {}
    for name in config.strategies:
        halted = read_halt(strategy_halt_path(config.server.data_dir, name))
        out[name] = {
            "accounts": list(config.accounts_of(name)),
            "halted": halted is not None,
            "halt": {"reason": halted.reason, "since": halted.since, "by": halted.by} if halted else None,
        }
    return out


async def _strategy_positions(app: web.Application) -> list[dict[str, Any]]:
    """Each strategy's own position per account and contract, and where the broker's net disagrees with the
    strategies' sum (`mismatch`); only with `[strategies]` configured and for brokers that list positions."""
    book = app.get(STRATEGY_BOOK)
    if book is None or not app[CONFIG].strategies:
        return []
    rows: list[dict[str, Any]] = []
    for account, broker in app.get(BROKERS, {}).items():
        if not broker.capabilities.positions:
            continue
        try:
            async with asyncio.timeout(2):
                found = await broker.positions()
        except Exception:  # noqa: BLE001, S112 - a nicety on this page: the broker health row says what is wrong
            continue
        rows += await book.rows(account, found)
    return rows


def _followup(app: web.Application) -> dict[str, Any]:
    """How many accepted orders order follow-up is still asking about, per account."""
    followup = app.get(FOLLOWUP)
    brokers = app.get(BROKERS)
    accounts = list(brokers) if brokers is not None else []
    by_account = {a: followup.followed(a) for a in accounts} if followup is not None else {}
    return {"orders": sum(by_account.values()), "by_account": by_account}


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value if value is not None else ''))}</td>"


def show_time(iso: str, *, with_day: bool = False) -> str:
    """`<time>` in IST to the second (or day and minute), UTC on hover (the page's script: `timeHtml`)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return html.escape(iso)
    utc = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    local = moment.astimezone(MARKET_TZ).strftime("%a %d %b, %H:%M" if with_day else "%H:%M:%S")
    return f'<time datetime="{html.escape(iso)}" title="{utc}">{local}</time>'


def order_text(leg: dict[str, Any]) -> str:
    """` open`, ` filled 10 @ 2900`: the order's own state at the broker (kept current by order follow-up)."""
    state = leg.get("order_state")
    if not state:
        return ""
    filled = leg.get("filled_quantity")
    text = f" {state}"
    if filled:
        text += f" {filled}" + (f" @ {leg['average_price']}" if leg.get("average_price") else "")
    return text


def leg_text(leg: dict[str, Any]) -> str:
    return f"{leg['account']} #{leg['leg']} {leg['transaction']} {leg['quantity']} {leg['symbol']}: {leg['state']}" + (
        f" ({leg['order_id']}{order_text(leg)})" if leg["order_id"] else ""
    )


def outcome_text(alert: dict[str, Any]) -> str:
    return f"refused {alert['http_status']}" if alert["status"] == "refused" else str(alert["status"])


def render_alerts(alerts: list[dict[str, Any]]) -> str:
    """Server-side rendering of the alerts table body (the page's script renders the same from the stream)."""
    rows = []
    for alert in alerts:
        legs = "".join(
            f'<li data-leg="{html.escape(leg["account"])}-{leg["leg"]}">{html.escape(leg_text(leg))}</li>'
            for leg in alert["legs"]
        )
        alert_id = html.escape(alert["alert_id"])
        rows.append(
            f'<tr data-alert-id="{alert_id}" class="{html.escape(alert["status"])}">'
            f"<td>{show_time(alert['received_at'])}</td>"
            f'<td><a href="/alerts/{alert_id}">{alert_id}</a></td>'
            + _cell(f"{alert['alert_type']} · {alert['strategy']}" if alert.get("strategy") else alert["alert_type"])
            + _cell(outcome_text(alert))
            + f'<td class="reason">{html.escape(alert.get("reason") or "")}</td>'
            + f'<td class="legs-cell"><ul class="legs">{legs}</ul></td>'
            + "</tr>"
        )
    return "\n".join(rows) or '<tr><td colspan="6">no alerts today</td></tr>'


PAGE: Final = (resources.files("tvbridge") / "status.html").read_text(encoding="utf-8")
"""The page; its script renders the stream's summaries the same way `render_alerts` does on the server."""
CSS: Final = (resources.files("tvbridge") / "status.css").read_text(encoding="utf-8")
"""The pages' style sheet (status page and alert page), inlined: the pages load nothing from anywhere."""


def render_market(market: list[dict[str, Any]]) -> str:
    def next_open(m: dict[str, Any]) -> str:
        return ("next open " + show_time(m["next_open"], with_day=True)) if m["next_open"] else ""

    return "".join(
        f'<tr>{_cell(m["exchange"])}<td class="{"ok" if m["open"] else "bad"}">{html.escape(m["phase"])}</td>'
        f"{_cell(m['reason'])}<td>{next_open(m)}</td></tr>"
        for m in market
    )


def _server_html(server: dict[str, Any], followup: dict[str, Any] | None = None) -> str:
    parts = [
        '<span class="ok">accepting alerts</span>' if server["accepting"] else '<span class="bad">shutting down</span>',
        '<span class="bad">HALTED</span>' if server["halted"] else "not halted",
        "journal " + ('<span class="ok">ok</span>' if server["journal_ok"] else '<span class="bad">FAILING</span>'),
        f"up since {show_time(server['started_at'])}",
    ]
    if followup is not None:
        parts.append(f"{int(followup['orders'])} order(s) followed")
    return " · ".join(parts)


async def status_page(request: web.Request) -> web.Response:
    if (refused := _refusal(request)) is not None:
        return refused
    data = await summary(request.app)
    accept = request.headers.get("Accept", "")
    if "application/json" in accept and "text/html" not in accept:  # `tvbridge status`, scripts
        return web.json_response(data, dumps=lambda d: json.dumps(d, default=str))
    followed = data["followup"]["by_account"]
    expiries = {token["account"]: str(token["expires_at"]) for token in data["tokens"]}
    brokers = "".join(
        f'<tr data-account="{html.escape(b["account"])}">{_cell(b["account"])}'
        f"{_cell(data['server']['accounts'].get(b['account'], ''))}"
        f'<td class="{"ok" if b["ok"] else "bad"}">{"ok" if b["ok"] else "DOWN"}</td>'
        f'{_cell(b["detail"])}<td class="num">{int(followed.get(b["account"], 0))}</td>'
        f"<td>{show_time(expiries[b['account']], with_day=True) if b['account'] in expiries else ''}</td><td></td></tr>"
        for b in data["brokers"]
    )
    page = fill(
        PAGE,
        {
            "CSS": CSS,
            "VERSION": html.escape(__version__),
            "SERVER": _server_html(data["server"], data["followup"]),
            "BROKERS": brokers,
            "MARKET": render_market(data["market"]),
            "COUNT": f"({len(data['alerts'])})",
            "ALERTS": render_alerts(data["alerts"]),
            "READINESS": readiness.render_html(data["readiness"]),
            "KEY": _stream_key(request),
            "CSRF": csrf_token(request.app),
        },
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self' 'unsafe-inline'; img-src 'self' data:",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )


async def status_events(request: web.Request) -> web.StreamResponse:
    """The summary as `event: summary` now and after every change in the journal; a comment keeps it open."""
    if (refused := _refusal(request, stream=True)) is not None:
        return refused
    app = request.app
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    journal = app[JOURNAL]
    loop = asyncio.get_running_loop()
    seen = ""
    quiet_since = loop.time()
    while not app[STATE].shutting_down:
        since = _day_start_utc(datetime.now(UTC))

        version = await _version(journal, since)
        version += f"/{read_halt(halt_path(app[CONFIG].server.data_dir)) is not None}"
        if version != seen:
            seen = version
            data = json.dumps(await summary(app), default=str)
            await response.write(f"event: summary\ndata: {data}\n\n".encode())
            quiet_since = loop.time()
        elif loop.time() - quiet_since > KEEPALIVE_S:
            await response.write(b": keepalive\n\n")
            quiet_since = loop.time()
        await asyncio.sleep(POLL_S)  # the stream's own pace: one small journal read per tick
    return response


def status_paths() -> dict[str, Any]:
    """The OpenAPI description of the two routes (merged into /openapi.json)."""
    unauthorized = {
        "description": "the admin token is missing or wrong (asks for HTTP Basic)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    security: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
    return {
        **action_paths(),
        "/status": {
            "get": {
                "summary": "The live status page (HTML)",
                "operationId": "statusPage",
                "security": security,
                "responses": {
                    "200": {
                        "description": "the page; its summary as JSON with `Accept: application/json`",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "401": unauthorized,
                },
            }
        },
        "/status/events": {
            "get": {
                "summary": "Server-sent events: the page's summary, again after each change",
                "operationId": "statusEvents",
                "security": security,
                "parameters": [
                    {"name": "key", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": unauthorized,
                },
            }
        },
    }
