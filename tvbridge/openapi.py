"""`GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, built here as plain data.

A hand-written document rather than one generated from handlers: the contract (DESIGN.md) is the source, the
alert's own enums come from `tvbridge.models` so they cannot drift, and `tests/test_openapi.py` checks that
the document is valid and names every route the app serves (and no other); schemathesis checks the answers of
a live server against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from tvbridge import __version__
from tvbridge.models import (
    AlertStatus,
    AlertType,
    Exchange,
    Instrument,
    LegStatus,
    OptionType,
    OrderType,
    PositionAction,
    Product,
    QuantityUnit,
    Side,
)

if TYPE_CHECKING:
    from enum import Enum

JSON: Final = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(enum: type[Enum], description: str, *aliases: str) -> dict[str, Any]:
    values = [member.value for member in enum]
    return {"type": "string", "enum": [*values, *aliases], "description": description}


def _number(description: str) -> dict[str, Any]:
    """A number that TradingView sends as a string (`"10"`) or a client as a JSON number."""
    return {"type": ["string", "number"], "description": description}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


REQUEST_ID_HEADER: Final = {
    "X-Request-ID": {
        "description": "The alert id: the same as `alert_id` in the body, the log lines, the journal.",
        "schema": {"type": "string"},
    }
}


def _schemas() -> dict[str, Any]:
    leg_properties: dict[str, Any] = {
        "transactionType": _enum(Side, "B buy, S sell", "BUY", "SELL"),
        "orderType": _enum(OrderType, "market, limit, stop-loss, stop-loss market", "MARKET", "LIMIT", "SLM"),
        "quantity": _number(
            "a positive whole number: units (shares; derivatives contracts x lot size), or lots when the account's"
            " or the leg's quantity_unit is lots; optional with manage_position EXIT_ALL (the open position"
            " decides)"
        ),
        "quantity_unit": _enum(QuantityUnit, "what quantity counts; default: the account's quantity_unit (units)"),
        "exchange": _enum(Exchange, "the exchange; optional when the symbol has an EXCHANGE: prefix"),
        "symbol": {
            "type": "string",
            "description": "the trading symbol (RELIANCE) or TradingView's ticker: NSE:RELIANCE, NIFTY1!, and on"
            " option legs NIFTY261229C24000 (underlying, expiry YYMMDD, C/P, strike)",
        },
        "instrument": _enum(Instrument, "EQ, FUT, OPT (with option_type, strike_price, expiry_date), CE, PE"),
        "productType": _enum(Product, "C CNC, I intraday, M margin, MTF", "CNC", "INTRADAY", "MARGIN"),
        "sort_order": _number("legs run in this order: 1, 2, ..."),
        "price": _number("0 for market; > 0 for LMT and SL"),
        "triggerPrice": _number("required > 0 for SL and SL-M"),
        "option_type": _enum(OptionType, "with instrument OPT"),
        "strike_price": {
            "type": ["string", "number"],
            "description": "with instrument OPT: a strike, or ATM, ATM+N (N strikes out of the money), ATM-N with"
            " underlying_price",
        },
        "expiry_date": {
            "type": "string",
            "description": "YYYY-MM-DD, or current_week, next_week, current_month, next_month; with OPT or FUT",
        },
        "manage_position": _enum(
            PositionAction,
            "EXIT_ALL: close the net position of the leg's contract in its product (needs a broker that declares"
            " the positions capability)",
        ),
        "target_price": _number(
            "bracket: the exit at a profit (above the entry for B, below for S); needs a broker that declares the"
            " brackets capability"
        ),
        "stoploss_price": _number("bracket: the stop-loss exit (below the entry for B, above for S)"),
        "trailing_jump": _number("bracket: the stop follows each move of this size in the position's favour"),
        "position_size": _number(
            "a target position ({{strategy.position_size}}): > 0 long, < 0 short, 0 flat; tvbridge sends the"
            " difference to the account's position (transactionType and quantity optional)"
        ),
        "market_position": {
            "type": "string",
            "enum": ["long", "short", "flat"],
            "description": "the target as {{strategy.market_position}}, with market_position_size",
        },
        "market_position_size": _number("the size of a market_position target ({{strategy.market_position_size}})"),
        "underlying_price": _number("the underlying's price ({{close}}): picks the ATM strike"),
        "quantity_type": {
            "type": "string",
            "enum": ["fixed", "capital", "percent_of_funds", "risk"],
            "description": "what quantity holds: the quantity (fixed), rupees to spend (capital), a percentage of"
            " the account's funds (percent_of_funds), rupees to risk to triggerPrice (risk)",
        },
        "amoTime": {"type": "string", "description": "after-market order timing"},
        "order_id": {"type": "string", "description": "cancel_order: the broker's order id to cancel"},
        "meta": _ref("Meta"),
    }
    return {
        "Meta": {
            "type": "object",
            "description": "TradingView's bar information; `timenow` older than `alerts.max_age_s` is refused",
            "properties": {
                "interval": {"type": "string"},
                "time": {"type": "string"},
                "timenow": {"type": "string", "description": "ISO-8601 time the alert fired"},
            },
        },
        "Leg": {
            "type": "object",
            "description": "One order leg. Unknown keys are accepted and answered back as `warnings`.",
            "properties": leg_properties,
        },
        "Alert": {
            "type": "object",
            "description": "Dhan's TradingView JSON alert. Every value may be a string or the natural JSON type.",
            "required": ["secret", "alertType", "order_legs"],
            "properties": {
                "secret": {"type": "string", "description": "the webhook secret (`auth.secret`)"},
                "alertType": _enum(AlertType, "single_order takes exactly one leg"),
                "order_legs": {"type": "array", "minItems": 1, "items": _ref("Leg")},
                "id": {"type": "string", "description": "the trader's own key for dedupe"},
                "idempotency_key": {"type": "string", "description": "same as id"},
                "meta": _ref("Meta"),
            },
        },
        "LegResult": {
            "type": "object",
            "required": ["leg_number", "status", "message"],
            "properties": {
                "leg_number": {"type": "integer"},
                "symbol": {"type": "string"},
                "transaction": {"type": "string"},
                "quantity": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in LegStatus]},
                "message": {"type": "string"},
                "order_id": {"type": ["string", "null"]},
                "account": {"type": "string"},
                "broker": {"type": "string"},
                "client_order_id": {"type": ["string", "null"]},
                "order_state": {"type": ["string", "null"]},
                "bracket": {
                    "type": "array",
                    "description": "a bracket leg's parts (entry, target, stop_loss) with order id, state and price",
                    "items": {"type": "object"},
                },
                "contract": {
                    "type": "string",
                    "description": "the contract chosen for a relative strike or expiry (trading symbol, expiry,"
                    " strike, security id); only on such legs",
                },
                "position_before": {
                    "type": "integer",
                    "description": "a target-position leg: the account's net position (units) before",
                },
                "position_target": {
                    "type": "integer",
                    "description": "a target-position leg: the target (units, after quantity_multiplier)",
                },
            },
        },
        "AlertResult": {
            "type": "object",
            "description": "The answer to an alert: the guide's body, with the alert id, per-leg accounts and warnings",
            "required": ["status", "message", "alert_id", "results"],
            "properties": {
                "status": {"type": "string", "enum": [s.value for s in AlertStatus]},
                "message": {"type": "string", "description": "Processed N order leg(s)"},
                "alertType": {"type": "string"},
                "alert_id": {"type": "string"},
                "timestamp": {"type": "string"},
                "results": {"type": "array", "items": _ref("LegResult")},
                "warnings": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Error": {
            "type": "object",
            "description": "Every refusal and error. `errors` lists each problem of a 422 with its path.",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "string", "enum": ["error"]},
                "message": {"type": "string", "description": "e.g. Invalid webhook secret, Payload validation error"},
                "alert_id": {"type": ["string", "null"]},
                "errors": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "timestamp", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "timestamp": {"type": "string"},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}},
                    },
                },
            },
        },
    }


def _webhook(*, with_token: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": "A TradingView alert: place its legs" + (" (the secret is the path token)" if with_token else ""),
        "operationId": "webhookWithToken" if with_token else "webhook",
        "requestBody": {
            "required": True,
            "description": "TradingView sends text/plain unless the message is valid JSON; both are read as JSON.",
            "content": {JSON: {"schema": _ref("Alert")}, "text/plain": {"schema": {"type": "string"}}},
        },
        "responses": {
            "200": {
                "description": "processed: per-leg results (status success, partial, failed, test_mode, duplicate)",
                "headers": REQUEST_ID_HEADER,
                "content": {JSON: {"schema": _ref("AlertResult")}},
            },
            "202": {
                "description": "accepted and journaled, still running after the deadline: GET /alerts/{alert_id}",
                "headers": REQUEST_ID_HEADER,
                "content": {JSON: {"schema": _ref("AlertResult")}},
            },
            "400": _error("the body is not JSON, not an object, or too slow to arrive"),
            "401": _error("wrong or missing secret (Invalid webhook secret)"),
            "403": _error("the source address is not allowed"),
            "404": _error("no such route (a path token when none is configured)"),
            "413": _error("body too large (limits.max_body_bytes)"),
            "422": {
                "description": "the alert is invalid (Payload validation error, `errors` with paths) or stale",
                "content": {JSON: {"schema": {"oneOf": [_ref("Error"), _ref("AlertResult")]}}},
            },
            "429": _error(
                "rate limited",
                {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
            ),
            "500": _error("a bug; never with a traceback"),
            "503": _error("shutting down, journal unwritable or trading halted: nothing recorded, resend"),
        },
    }
    if with_token:
        operation["parameters"] = [
            {"name": "path_token", "in": "path", "required": True, "schema": {"type": "string"}},
        ]
    return {"post": operation}


def _admin_error() -> dict[str, Any]:
    return _error(
        "the admin token is missing or wrong",
        {"WWW-Authenticate": {"description": "present on /status", "schema": {"type": "string"}}},
    )


def build_openapi(paths_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole document; `paths_extra` lets a module that adds a route describe it next to the route."""
    admin: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Service name, version and state",
                "operationId": "index",
                "responses": {
                    "200": {
                        "description": "running",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["service", "version", "status"],
                                    "properties": {
                                        "service": {"type": "string", "enum": ["tvbridge"]},
                                        "version": {"type": "string"},
                                        "status": {"type": "string"},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Whether the journal and every broker work",
                "operationId": "health",
                "responses": {
                    "200": {"description": "healthy", "content": {JSON: {"schema": _ref("Health")}}},
                    "503": {"description": "something is broken", "content": {JSON: {"schema": _ref("Health")}}},
                },
            }
        },
        "/webhook": _webhook(with_token=False),
        "/webhook/{path_token}": _webhook(with_token=True),
        "/alerts/{alert_id}": {
            "get": {
                "summary": "One alert's state and leg results (or why it was refused), from the journal",
                "operationId": "getAlert",
                "security": [{"bearer": []}, {"basic": []}],
                "parameters": [{"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "the journal's record: status, payload, the answer given, and `legs`, each with"
                        " its `state` and its order's current `order_state`, `filled_quantity`, `average_price` and"
                        " `order_message` (kept current by order follow-up); a refused alert has `status: refused`,"
                        " `http_status`, `reason`, `errors` and no legs. A browser that prefers `text/html` (HTTP Basic"
                        " login with the admin token) gets the same record as a page",
                        "content": {JSON: {"schema": {"type": "object"}}, "text/html": {"schema": {"type": "string"}}},
                    },
                    "401": _error("admin token required"),
                    "404": _error("no such alert"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (loopback / metrics.allow, or the admin token)",
                "operationId": "metrics",
                "security": [{}, *admin],
                "responses": {
                    "200": {
                        "description": "text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("not an allowed address and no admin token"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}},
            }
        },
        **(paths_extra or {}),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tvbridge",
            "version": __version__,
            "description": "TradingView webhook alerts to broker orders: authenticated, journaled, deduplicated.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the admin token"},
                "basic": {"type": "http", "scheme": "basic", "description": "any user, the admin token as password"},
            },
        },
    }


def _admin_operations() -> dict[str, Any]:
    """The kill switch, flattening and the market clock (added by the trading-day code when it is installed)."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    halted_body = {
        "type": "object",
        "required": ["halted"],
        "properties": {
            "halted": {"type": "boolean"},
            "reason": {"type": "string"},
            "since": {"type": "string"},
            "was_halted": {"type": "boolean"},
            "strategy": {"type": "string", "description": "the one strategy halted or resumed, when the body named it"},
        },
    }
    strategy = {
        "type": "string",
        "description": "a [strategies.NAME]: halt or resume only it (docs/strategies.md); absent: all trading",
    }
    reason_body = {
        "required": False,
        "content": {
            JSON: {"schema": {"type": "object", "properties": {"reason": {"type": "string"}, "strategy": strategy}}}
        },
    }

    def admin(summary: str, operation_id: str, body: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "operationId": operation_id,
                "security": bearer,
                "requestBody": body,
                "responses": {
                    "200": {"description": "done", "content": {JSON: {"schema": ok}}},
                    "400": _error("the body is not JSON, or names no known account"),
                    "401": _error("admin token required"),
                },
            }
        }

    flatten_body = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["account"],
                    "properties": {"account": {"type": "string"}, "confirm": {"type": "boolean"}},
                }
            }
        },
    }
    exchange = {
        "type": "object",
        "properties": {
            "open": {"type": "boolean"},
            "phase": {"type": "string"},
            "reason": {"type": "string"},
            "next_open": {"type": ["string", "null"]},
            "closes_at": {"type": ["string", "null"]},
        },
    }
    return {
        "/market": {
            "get": {
                "summary": "Per exchange: open or closed, why, and the next open (exchange time)",
                "operationId": "market",
                "responses": {
                    "200": {
                        "description": "the market clock",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "timestamp": {"type": "string"},
                                        "timezone": {"type": "string"},
                                        "sessions_enabled": {"type": "boolean"},
                                        "halted": {"type": "boolean"},
                                        "exchanges": {"type": "object", "additionalProperties": exchange},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/admin/halt": admin("Halt trading (the kill switch)", "halt", reason_body, halted_body),
        "/admin/resume": admin("Resume trading", "resume", reason_body, halted_body),
        "/admin/flatten": admin(
            "Cancel an account's open orders and close its positions: the plan, or with confirm the actions",
            "flatten",
            flatten_body,
            {
                "type": "object",
                "properties": {
                    "plan": {"type": "object", "description": "open orders to cancel, positions to close, notes"},
                    "done": {"type": "array", "items": {"type": "string"}, "description": "one line per action"},
                    "alert_id": {
                        "type": ["string", "null"],
                        "description": "with confirm: the run's id in the journal (GET /alerts/<id>) and order log",
                    },
                    "status": {"type": "string", "description": "with confirm: success, partial, failed, test_mode"},
                    "results": {"type": "array", "items": _ref("LegResult"), "description": "one per action"},
                },
            },
        ),
        "/admin/ready": {"get": _ready_operation(bearer)},
    }


def _ready_operation(bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """`GET /admin/ready`: the pre-open readiness check, run now (`tvbridge/readiness.py`)."""
    check = {
        "type": "object",
        "required": ["name", "ok", "detail"],
        "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"}},
    }
    account = {
        "type": "object",
        "required": ["account", "ready", "checks"],
        "properties": {
            "account": {"type": "string"},
            "ready": {"type": "boolean"},
            "checks": {"type": "array", "items": check},
        },
    }
    report = {
        "type": "object",
        "required": ["ready", "checked_at", "close_at", "accounts"],
        "properties": {
            "ready": {"type": "boolean"},
            "checked_at": {"type": "string"},
            "close_at": {"type": "string"},
            "accounts": {"type": "array", "items": account},
        },
    }
    return {
        "summary": "Pre-open readiness of every live account, checked now",
        "operationId": "ready",
        "security": bearer,
        "responses": {
            "200": {"description": "ready", "content": {JSON: {"schema": report}}},
            "401": _error("admin token required"),
            "503": {"description": "not ready: the failing checks say why", "content": {JSON: {"schema": report}}},
        },
    }


def served(document: dict[str, Any], app: web.Application) -> dict[str, Any]:
    """The document cut to the operations `app` serves: one description for every build, never a route that
    answers 404."""
    routes = {
        (route.method.lower(), route.resource.canonical) for route in app.router.routes() if route.resource is not None
    }
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        kept = {method: op for method, op in item.items() if (method, path) in routes}
        if kept:
            paths[path] = kept
    return {**document, "paths": paths}


def full_document() -> dict[str, Any]:
    """Every operation any build of tvbridge may serve."""
    from tvbridge.status import status_paths  # noqa: PLC0415 - status imports the app's keys; keep this module light

    return build_openapi({**status_paths(), **_admin_operations()})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(served(full_document(), request.app))
