"""A small in-process stand-in for the "SampleX" broker HTTP API, for tests and the conformance kit.

A real plugin talks to a broker it does not own; its tests need something that answers like that broker without
the internet and without real money. This is that: an aiohttp application with the API's routes, an order book
in memory and a few switches to misbehave on purpose (`reject_symbols`, `slow_symbols`, `drop_symbols`), so the
plugin's handling of refusals, timeouts and dropped answers can be tested from the outside.

The API (JSON; every call needs `Authorization: Bearer <api key>`, else 401)::

    GET    /v1/ping                          {"ok": true}
    POST   /v1/orders                        201 {"order": ...}; 409 {"order": ...} for a known client_order_id;
                                             422 {"error": ...} refused; 503 {"error": ...} busy
    GET    /v1/orders/by-client-id/{cid}     200 {"order": ...} or 404
    GET    /v1/orders?symbol=&side=&status=  200 {"orders": [...]}
    DELETE /v1/orders/{order_id}             200 {"order": ...}; 404 unknown; 409 not open

An order: `id`, `client_order_id`, `symbol`, `exchange`, `side` (BUY/SELL), `quantity`, `type`
(MARKET/LIMIT/STOP/STOP_LIMIT), `price`, `trigger_price`, `status` (open/trigger_pending/filled/cancelled),
`filled_quantity`, `average_price`, `message`. Market orders fill at `prices[symbol]` (default 100); a limit order
fills when it crosses that price, else rests `open`; stop orders wait `trigger_pending`.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

DEFAULT_PRICE: Final = Decimal(100)
API_KEY: Final = "sample-test-key"
SLOW_S: Final = 30.0


@attrs.define(kw_only=True)
class FakeVenue:
    """The venue's state and switches; `app()` serves it. Tests read `orders` to see what arrived."""

    api_key: str = API_KEY
    prices: dict[str, Decimal] = attrs.field(factory=dict)
    reject_symbols: set[str] = attrs.field(factory=lambda: {"REJECTME"})
    slow_symbols: set[str] = attrs.field(factory=lambda: {"SLOWME"})
    """Recorded, then the answer comes after 30 s: the client's timeout fires (an unknown outcome)."""
    drop_symbols: set[str] = attrs.field(factory=lambda: {"DROPME"})
    """Recorded, then the connection is closed without an answer (an unknown outcome)."""
    busy: bool = False
    """True: every order is refused with 503 before it is recorded."""
    orders: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """By venue order id, in arrival order."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/ping", self._ping)
        app.router.add_post("/v1/orders", self._place)
        app.router.add_get("/v1/orders", self._list)
        app.router.add_get("/v1/orders/by-client-id/{cid}", self._by_client_id)
        app.router.add_delete("/v1/orders/{order_id}", self._cancel)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "invalid api key"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _ping(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def _by_cid(self, cid: str) -> dict[str, Any] | None:
        return next((o for o in self.orders.values() if o["client_order_id"] == cid), None)

    async def _place(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.busy:
            return web.json_response({"error": "venue busy, try later"}, status=503)
        known = self._by_cid(str(body.get("client_order_id", "")))
        if known is not None:
            return web.json_response({"order": known}, status=409)
        symbol = str(body.get("symbol", ""))
        if symbol in self.reject_symbols:
            return web.json_response({"error": f"symbol {symbol} is not tradeable"}, status=422)
        order = self._new_order(body)
        self.orders[order["id"]] = order
        if symbol in self.slow_symbols:
            await asyncio.sleep(SLOW_S)
        if symbol in self.drop_symbols and request.transport is not None:
            request.transport.close()
            return web.Response(status=500)
        return web.json_response({"order": order}, status=201)

    def _new_order(self, body: Mapping[str, Any]) -> dict[str, Any]:
        market = self.prices.get(str(body["symbol"]), DEFAULT_PRICE)
        kind = str(body["type"])
        price = Decimal(str(body.get("price") or 0))
        status, fill = "open", None
        if kind == "MARKET":
            status, fill = "filled", market
        elif kind == "LIMIT":
            crossed = price >= market if body["side"] == "BUY" else price <= market
            status, fill = ("filled", price) if crossed else ("open", None)
        else:
            status = "trigger_pending"
        return {
            "id": f"SX{len(self.orders) + 1:06d}",
            "client_order_id": str(body["client_order_id"]),
            "symbol": str(body["symbol"]),
            "exchange": str(body.get("exchange", "")),
            "side": str(body["side"]),
            "quantity": int(body["quantity"]),
            "type": kind,
            "price": str(price),
            "trigger_price": body.get("trigger_price"),
            "status": status,
            "filled_quantity": int(body["quantity"]) if fill is not None else 0,
            "average_price": str(fill) if fill is not None else None,
            "message": "",
        }

    async def _list(self, request: web.Request) -> web.Response:
        wanted = {k: request.query[k] for k in ("symbol", "side", "status") if k in request.query}
        orders = [o for o in self.orders.values() if all(o[k] == v for k, v in wanted.items())]
        return web.json_response({"orders": orders})

    async def _by_client_id(self, request: web.Request) -> web.Response:
        order = self._by_cid(request.match_info["cid"])
        if order is None:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response({"order": order})

    async def _cancel(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["order_id"])
        if order is None:
            return web.json_response({"error": "no such order"}, status=404)
        if order["status"] not in {"open", "trigger_pending"}:
            return web.json_response({"error": f"order is {order['status']}"}, status=409)
        order["status"] = "cancelled"
        return web.json_response({"order": order})


@contextlib.asynccontextmanager
async def serve(venue: FakeVenue | None = None) -> AsyncIterator[tuple[FakeVenue, str]]:
    """Run the venue on 127.0.0.1 (a free port) for the duration; yields it and its base URL."""
    venue = venue or FakeVenue()
    runner = web.AppRunner(venue.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield venue, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def conformance_venue(settings: Mapping[str, object]) -> AsyncIterator[dict[str, object]]:
    """The conformance kit's `venue` hook: start a fake venue, hand the kit the settings that point at it."""
    async with serve() as (venue, url):
        yield {**settings, "base_url": url, "api_key": venue.api_key}
