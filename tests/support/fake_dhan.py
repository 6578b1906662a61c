"""A fake Dhan API v2 for the tests: an aiohttp server on 127.0.0.1, port 0, that the real dhanhq client talks to.

It keeps an order book and the account's positions (GET /orders lists the book, GET /positions the positions;
tests set them with `set_position` / `add_order`), checks the `access-token` header like Dhan (DH-901 when it is not accepted), records
every request it receives (method, path, JSON body) and can be told, one request at a time, to misbehave:
answer a Dhan error code, take the order and answer an empty body, answer an HTML page without taking it, take
the order and drop the connection, or take the order and hang until the server closes. A test moves an order on
later, as the exchange would (`trade`, `reject`, `set_status`), and counts the look-ups that follow it.

For the unattended day it also has Dhan's token calls and the instrument master:

* `GET /v2/RenewToken` (dhanhq's `DhanLogin.renew_token`): a valid token is exchanged for a new JWT that lives
  24 h from `now()`; like Dhan, the old token stops working.
* `POST /app/generateAccessToken?dhanClientId=&pin=&totp=` on a separate server (`auth_url`, dhanhq's
  `DhanLogin.generate_token`): a new JWT when the PIN and the TOTP code (checked with pyotp) are right.
* `GET /api-data/api-scrip-master.csv` (`master_url`): `master` as CSV; misbehaves on request (500, an HTML
  page, a 200 HTML page, a body cut short).

Super orders (dhanhq's `place_super_order`, `get_super_order_list`, `modify_super_order`, `cancel_super_order`)
are kept in `super_orders`, each with its TARGET_LEG and STOP_LOSS_LEG in `legDetails`, as Dhan lists them. A
test trades the entry (`super_trade_entry`), fills the target or the stop (`super_fill`: the other leg is
cancelled and the super order CLOSED, as Dhan's one-cancels-other does) and trails the stop (`super_trail`).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import enum
import itertools
import json
import time
from collections import defaultdict, deque
from typing import Any, Final

import attrs
import pyotp
from aiohttp import web

TOKEN: Final = "tok-SECRET-0123456789abcdef"
CLIENT_ID: Final = "1000000001"
PIN: Final = "246813"
TOTP_SECRET: Final = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
TOKEN_LIFE_S: Final = 24 * 3600
MASTER_PATH: Final = "/api-data/api-scrip-master.csv"
BODY: Final = web.RequestKey("body", dict[str, Any])

_ERRORS: Final = {
    "DH-901": ("Invalid_Authentication", "Client ID or user generated access token is invalid or expired."),
    "DH-904": ("Rate_Limit", "Too many requests on server from single user breaching rate limits."),
    "DH-905": ("Input_Exception", "Missing required fields, bad values for parameters etc."),
    "DH-906": ("Order_Error", "Incorrect request for order and cannot be processed."),
    "DH-907": ("Data_Error", "System is unable to fetch data due to incorrect parameters or no data present."),
    "DH-908": ("Internal_Server_Error", "Server was not able to process API request."),
}


class Kind(enum.Enum):
    ERROR = "error"
    EMPTY = "empty"
    HTML = "html"
    DROP = "drop"
    HANG = "hang"
    TRUNCATE = "truncate"
    HTML_OK = "html_ok"


@attrs.frozen
class Misbehave:
    kind: Kind
    code: str = ""
    take_order: bool = False

    @classmethod
    def error(cls, code: str) -> Misbehave:
        return cls(Kind.ERROR, code)

    @classmethod
    def empty_body(cls, *, take_order: bool = True) -> Misbehave:
        return cls(Kind.EMPTY, take_order=take_order)

    @classmethod
    def html(cls, *, take_order: bool = False) -> Misbehave:
        return cls(Kind.HTML, take_order=take_order)

    @classmethod
    def drop_after_taking_order(cls) -> Misbehave:
        return cls(Kind.DROP, take_order=True)

    @classmethod
    def hang_after_taking_order(cls) -> Misbehave:
        return cls(Kind.HANG, take_order=True)

    @classmethod
    def truncated(cls) -> Misbehave:
        """The master: announce the full length, send half, drop the connection."""
        return cls(Kind.TRUNCATE)

    @classmethod
    def html_page_ok(cls) -> Misbehave:
        """The master: a 200 answer that is an HTML page (a captive portal, a CDN error page)."""
        return cls(Kind.HTML_OK)


@attrs.frozen
class Recorded:
    method: str
    path: str
    body: dict[str, Any] | None
    token: str


class FakeDhan:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.super_orders: dict[str, dict[str, Any]] = {}
        """Dhan's super orders by order id, as GET /super/orders lists them."""
        self.positions: list[dict[str, Any]] = []
        """What GET /positions answers: Dhan's position rows (`set_position` keeps one per contract and product)."""
        self.valid_tokens: set[str] = {TOKEN}
        self.script: dict[str, deque[Misbehave]] = defaultdict(deque)
        self._ids = itertools.count(52000000001)
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._auth_runner: web.AppRunner | None = None
        self.port = 0
        self.auth_port = 0
        self.now: Any = time.time
        """Seconds since the epoch for the expiry of the tokens it issues; tests set it to their clock."""
        self.pin = PIN
        self.totp_secret = TOTP_SECRET
        self.issued: list[str] = []
        """Every token RenewToken or generation handed out, in order."""
        self.master = b""
        self.date_skew_s = 0.0
        """Seconds added to the `Date` header of the trading API's answers (a Dhan clock off ours)."""
        """The CSV `GET /api-data/api-scrip-master.csv` answers."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{MASTER_PATH}"

    def token_calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path in {"/v2/RenewToken", "/app/generateAccessToken"}]

    def new_token(self) -> str:
        token = jwt(self.now() + TOKEN_LIFE_S)
        self.valid_tokens.add(token)
        self.issued.append(token)
        return token

    def next_reply(self, endpoint: str, *behaviours: Misbehave) -> None:
        """Queue misbehaviours for `endpoint` (place, lookup, order, cancel, funds, orders, positions), one per
        request."""
        self.script[endpoint].extend(behaviours)

    def placed(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST /orders the fake received, in order."""
        return [r.body or {} for r in self.requests if r.method == "POST" and r.path == "/v2/orders"]

    def set_status(self, order_id: str, status: str, **fields: Any) -> None:
        self.orders[order_id].update(orderStatus=status, **fields)

    def trade(self, order_id: str, *, price: str, quantity: int | None = None) -> None:
        """The exchange filled the order later (all of it unless `quantity` says a part): what a look-up now
        answers, as Dhan does (`TRADED` or `PART_TRADED`, `filledQty`, `averageTradedPrice`)."""
        order = self.orders[order_id]
        total = int(order["quantity"])
        filled = total if quantity is None else quantity
        status = "TRADED" if filled >= total else "PART_TRADED"
        self.set_status(order_id, status, filledQty=filled, averageTradedPrice=float(price))

    def reject(self, order_id: str, reason: str) -> None:
        """The exchange or Dhan's risk system refused the order after Dhan accepted it."""
        self.set_status(order_id, "REJECTED", omsErrorCode="16283", omsErrorDescription=reason)

    def lookups(self, correlation_id: str) -> int:
        """How many times the order with this correlation id was looked up (`get_order_by_correlationID`)."""
        path = f"/v2/orders/external/{correlation_id}"
        return sum(1 for r in self.requests if r.method == "GET" and r.path == path)

    def set_position(
        self,
        security_id: str,
        net_qty: int,
        *,
        segment: str = "NSE_EQ",
        product: str = "CNC",
        trading_symbol: str = "",
        average: float = 0.0,
        **fields: Any,
    ) -> None:
        """The account's net position in one security id and product, as Dhan's GET /positions reports it."""
        self.positions = [
            p
            for p in self.positions
            if (p["securityId"], p["exchangeSegment"], p["productType"]) != (security_id, segment, product)
        ]
        self.positions.append(
            {
                "dhanClientId": CLIENT_ID,
                "tradingSymbol": trading_symbol,
                "securityId": security_id,
                "positionType": "LONG" if net_qty > 0 else "SHORT" if net_qty < 0 else "CLOSED",
                "exchangeSegment": segment,
                "productType": product,
                "buyAvg": average if net_qty > 0 else 0.0,
                "sellAvg": average if net_qty < 0 else 0.0,
                "costPrice": average,
                "buyQty": max(net_qty, 0),
                "sellQty": max(-net_qty, 0),
                "netQty": net_qty,
                "realizedProfit": 0.0,
                "unrealizedProfit": 0.0,
                "drvExpiryDate": "0001-01-01",
                "drvOptionType": "NA",
                "drvStrikePrice": 0.0,
                **fields,
            }
        )

    def add_order(self, **fields: Any) -> str:
        """An order already in the account's book (placed elsewhere, e.g. on Dhan's own terminal)."""
        order_id = str(next(self._ids))
        self.orders[order_id] = {
            "orderId": order_id,
            "orderStatus": "PENDING",
            "transactionType": "BUY",
            "exchangeSegment": "NSE_EQ",
            "productType": "CNC",
            "orderType": "LIMIT",
            "quantity": 1,
            "filledQty": 0,
            "price": 1.0,
            "triggerPrice": 0.0,
            "averageTradedPrice": 0,
            "tradingSymbol": "",
            **fields,
        }
        return order_id

    def super_placed(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST /super/orders the fake received, in order."""
        return [r.body or {} for r in self.requests if r.method == "POST" and r.path == "/v2/super/orders"]

    def super_cancels(self) -> list[tuple[str, str]]:
        """(order id, leg name) of every DELETE /super/orders/{id}/{leg}, in order."""
        found = []
        for r in self.requests:
            if r.method == "DELETE" and r.path.startswith("/v2/super/orders/"):
                order_id, leg_name = r.path.removeprefix("/v2/super/orders/").split("/", 1)
                found.append((order_id, leg_name))
        return found

    def super_leg(self, order_id: str, leg_name: str) -> dict[str, Any]:
        legs: list[dict[str, Any]] = self.super_orders[order_id]["legDetails"]
        return next(leg for leg in legs if leg["legName"] == leg_name)

    def super_trade_entry(self, order_id: str, *, price: str) -> None:
        """The super order's entry traded: its target and stop-loss legs now wait at the exchange."""
        order = self.super_orders[order_id]
        order.update(orderStatus="TRADED", filledQty=order["quantity"], averageTradedPrice=float(price))

    def super_fill(self, order_id: str, leg_name: str) -> None:
        """The target or stop-loss leg traded: the other leg is cancelled, the super order CLOSED."""
        other = "STOP_LOSS_LEG" if leg_name == "TARGET_LEG" else "TARGET_LEG"
        self.super_leg(order_id, leg_name)["orderStatus"] = "TRADED"
        self.super_leg(order_id, other)["orderStatus"] = "CANCELLED"
        self.super_orders[order_id]["orderStatus"] = "CLOSED"

    def super_trail(self, order_id: str, *, stop: float) -> None:
        """Dhan moved the trailing stop-loss leg to `stop`."""
        self.super_leg(order_id, "STOP_LOSS_LEG")["price"] = stop

    def cancels(self) -> list[str]:
        """The order ids of every DELETE /orders/{id} the fake received, in order."""
        return [r.path.rsplit("/", 1)[1] for r in self.requests if r.method == "DELETE"]

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_and_auth])
        app.router.add_post("/v2/orders", self._place)
        app.router.add_get("/v2/orders", self._order_list)
        app.router.add_get("/v2/positions", self._positions)
        app.router.add_get("/v2/orders/external/{cid}", self._by_correlation)
        app.router.add_get("/v2/orders/{order_id}", self._by_id)
        app.router.add_delete("/v2/orders/{order_id}", self._cancel)
        app.router.add_get("/v2/fundlimit", self._funds)
        app.router.add_post("/v2/super/orders", self._super_place)
        app.router.add_get("/v2/super/orders", self._super_list)
        app.router.add_put("/v2/super/orders/{order_id}", self._super_modify)
        app.router.add_delete("/v2/super/orders/{order_id}/{leg}", self._super_cancel)
        app.router.add_get("/v2/RenewToken", self._renew)
        app.router.add_get(MASTER_PATH, self._master)
        app.on_response_prepare.append(self._date)
        self._runner, self.port = await _serve(app)
        auth = web.Application(middlewares=[self._record])
        auth.router.add_post("/app/generateAccessToken", self._generate)
        self._auth_runner, self.auth_port = await _serve(auth)

    async def close(self) -> None:
        self._release.set()
        for runner in (self._runner, self._auth_runner):
            if runner is not None:
                await runner.cleanup()

    async def _date(self, _request: web.Request, response: web.StreamResponse) -> None:
        if self.date_skew_s:
            response.headers["Date"] = email.utils.formatdate(time.time() + self.date_skew_s, usegmt=True)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(Recorded(request.method, request.path, dict(request.query), ""))
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _record_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        token = request.headers.get("access-token", "")
        self.requests.append(Recorded(request.method, request.path, body, token))
        request[BODY] = body or {}
        # DhanLogin.renew_token names the client in `dhanClientId`, the trading calls in `client-id`
        client = request.headers.get("client-id") or request.headers.get("dhanClientId")
        if request.path != MASTER_PATH and (token not in self.valid_tokens or client != CLIENT_ID):
            return _error("DH-901", 401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _misbehave(self, endpoint: str, request: web.Request, take: Any = None) -> web.StreamResponse | None:
        if not self.script[endpoint]:
            return None
        how = self.script[endpoint].popleft()
        if how.take_order and take is not None:
            take()
        if how.kind is Kind.ERROR:
            return _error(how.code, 401 if how.code == "DH-901" else 400)
        if how.kind is Kind.EMPTY:
            return web.Response(status=200, body=b"")
        if how.kind is Kind.HTML:
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if how.kind is Kind.DROP:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        await self._release.wait()  # HANG: until the test's server closes
        return web.Response()

    async def _place(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        order_id = str(next(self._ids))

        def take() -> None:
            self.orders[order_id] = {
                **body,
                "orderId": order_id,
                "orderStatus": "PENDING",
                "filledQty": 0,
                "averageTradedPrice": 0,
                "tradingSymbol": "",
            }

        failed = await self._misbehave("place", request, take)
        if failed is not None:
            return failed
        take()
        return web.json_response({"orderId": order_id, "orderStatus": "TRANSIT"})

    async def _by_correlation(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("lookup", request)
        if failed is not None:
            return failed
        cid = request.match_info["cid"]
        found = [o for o in self.orders.values() if o.get("correlationId") == cid]
        if not found:
            return _error("DH-907", 400)
        return web.json_response(found[0])

    async def _by_id(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("order", request)
        if failed is not None:
            return failed
        order = self.orders.get(request.match_info["order_id"])
        return web.json_response(order) if order else _error("DH-907", 400)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        order_id = request.match_info["order_id"]

        def take() -> None:
            self.orders[order_id]["orderStatus"] = "CANCELLED"

        failed = await self._misbehave("cancel", request, take)
        if failed is not None:
            return failed
        order = self.orders.get(order_id)
        if order is None:
            return _error("DH-906", 400)
        if order["orderStatus"] not in {"PENDING", "TRANSIT", "PART_TRADED"}:
            return _error("DH-906", 400)
        take()
        return web.json_response({"orderId": order_id, "orderStatus": "CANCELLED"})

    async def _order_list(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("orders", request)
        if failed is not None:
            return failed
        return web.json_response(list(self.orders.values()))

    async def _positions(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("positions", request)
        if failed is not None:
            return failed
        return web.json_response(self.positions)

    async def _renew(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("renew", request)
        if failed is not None:
            return failed
        self.valid_tokens.discard(request.headers["access-token"])  # Dhan: the old token stops working
        return web.json_response(self._token_answer(self.new_token()))

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("generate", request)
        if failed is not None:
            return failed
        query = request.query
        totp_ok = pyotp.TOTP(self.totp_secret).verify(query.get("totp", ""), valid_window=1)
        if query.get("dhanClientId") != CLIENT_ID or query.get("pin") != self.pin or not totp_ok:
            return web.json_response({"status": "error", "message": "Invalid PIN or TOTP"}, status=400)
        return web.json_response(self._token_answer(self.new_token()))

    def _token_answer(self, token: str) -> dict[str, Any]:
        expiry = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.now() + TOKEN_LIFE_S + 19800))
        return {"dhanClientId": CLIENT_ID, "dhanClientName": "TEST", "accessToken": token, "expiryTime": expiry}

    async def _master(self, request: web.Request) -> web.StreamResponse:
        how = self.script["master"].popleft() if self.script["master"] else None
        if how is None:
            return web.Response(body=self.master, content_type="text/csv")
        if how.kind is Kind.ERROR:
            return web.Response(status=500, text="Internal Server Error")
        if how.kind is Kind.HTML:
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if how.kind is Kind.HTML_OK:
            return web.Response(text="<html><body>Please sign in</body></html>", content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": "text/csv"})
        response.content_length = len(self.master)
        await response.prepare(request)
        await response.write(self.master[: len(self.master) // 2])
        assert request.transport is not None
        request.transport.abort()  # TRUNCATE
        return response

    async def _funds(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("funds", request)
        if failed is not None:
            return failed
        return web.json_response({"dhanClientId": CLIENT_ID, "availabelBalance": 100000.0, "sodLimit": 100000.0})

    async def _super_place(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        order_id = str(next(self._ids))

        def take() -> None:
            exit_side = "SELL" if body.get("transactionType") == "BUY" else "BUY"
            legs = [
                {"legName": name, "transactionType": exit_side, "price": body.get(key, 0.0), "orderStatus": "PENDING"}
                for name, key in (("TARGET_LEG", "targetPrice"), ("STOP_LOSS_LEG", "stopLossPrice"))
                if body.get(key)
            ]
            self.super_orders[order_id] = {
                **{k: v for k, v in body.items() if k not in {"targetPrice", "stopLossPrice"}},
                "orderId": order_id,
                "orderStatus": "PENDING",
                "legName": "ENTRY_LEG",
                "filledQty": 0,
                "averageTradedPrice": 0,
                "tradingSymbol": "",
                "legDetails": legs,
            }

        failed = await self._misbehave("super_place", request, take)
        if failed is not None:
            return failed
        take()
        return web.json_response({"orderId": order_id, "orderStatus": "PENDING"})

    async def _super_list(self, request: web.Request) -> web.StreamResponse:
        failed = await self._misbehave("super_list", request)
        if failed is not None:
            return failed
        return web.json_response(list(self.super_orders.values()))

    async def _super_modify(self, request: web.Request) -> web.StreamResponse:
        order_id = request.match_info["order_id"]
        body = request[BODY]
        if order_id not in self.super_orders:
            return _error("DH-906", 400)
        if body.get("legName") == "STOP_LOSS_LEG":
            self.super_leg(order_id, "STOP_LOSS_LEG")["price"] = body.get("stopLossPrice")
        elif body.get("legName") == "TARGET_LEG":
            self.super_leg(order_id, "TARGET_LEG")["price"] = body.get("targetPrice")
        return web.json_response({"orderId": order_id, "orderStatus": self.super_orders[order_id]["orderStatus"]})

    async def _super_cancel(self, request: web.Request) -> web.StreamResponse:
        """ENTRY_LEG cancels every leg while the entry is open; after it traded, each exit leg is cancelled
        alone (Dhan refuses ENTRY_LEG then)."""
        failed = await self._misbehave("super_cancel", request)
        if failed is not None:
            return failed
        order = self.super_orders.get(request.match_info["order_id"])
        leg_name = request.match_info["leg"]
        if order is None:
            return _error("DH-906", 400)
        if leg_name == "ENTRY_LEG":
            if order["orderStatus"] not in {"PENDING", "TRANSIT"}:
                return _error("DH-906", 400)
            order["orderStatus"] = "CANCELLED"
            for leg in order["legDetails"]:
                leg["orderStatus"] = "CANCELLED"
        else:
            leg = self.super_leg(order["orderId"], leg_name)
            if leg["orderStatus"] != "PENDING":
                return _error("DH-906", 400)
            leg["orderStatus"] = "CANCELLED"
        return web.json_response({"orderId": order["orderId"], "orderStatus": "CANCELLED"})


def jwt(expires_at: float, subject: str = CLIENT_ID) -> str:
    """A token shaped like Dhan's (a JWT with `exp`), unsigned: the fake only compares whole strings."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    nonce = next(_NONCES)
    return f"{part({'alg': 'HS512', 'typ': 'JWT'})}.{part({'exp': int(expires_at), 'sub': subject, 'n': nonce})}.sig"


_NONCES: Final = itertools.count(1)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
    assert isinstance(server, asyncio.Server)
    return runner, server.sockets[0].getsockname()[1]


def _error(code: str, status: int) -> web.Response:
    error_type, message = _ERRORS.get(code, ("Others", "Something went wrong"))
    return web.json_response({"errorType": error_type, "errorCode": code, "errorMessage": message}, status=status)
