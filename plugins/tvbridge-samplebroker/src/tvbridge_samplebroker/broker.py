"""`SampleBroker`: a complete tvbridge broker plugin for the "SampleX" HTTP API (see `fake_api` for the API).

It is the worked example of `docs/plugins.md`: settings validated by an attrs class through `settings_from()`,
one aiohttp session per account opened in `start()` and closed in `aclose()`, every HTTP answer mapped to a
result or a typed error, and the one rule that matters most: an answer that never came is an *unknown outcome*
(`BrokerUnknownOutcomeError`), resolved by looking the order up by its client order id, never by resending.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self
from urllib.parse import urlsplit

import aiohttp
import attrs

from tvbridge.broker import (
    API_VERSION,
    BrokerAuthError,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    Capabilities,
    ContractId,
    Exchange,
    Health,
    Instrument,
    OpenOrder,
    OrderResult,
    OrderState,
    OrderType,
    Product,
    SettingsError,
    Side,
    check_supported,
    settings_from,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tvbridge.broker import BrokerContext, CancelRequest, OrderRequest

ORDER_TYPES: Final = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP_LOSS: "STOP_LIMIT",
    OrderType.STOP_LOSS_MARKET: "STOP",
}
BAD_KEY: Final = "SampleX refused the api key"
STATES: Final = {
    "open": OrderState.OPEN,
    "trigger_pending": OrderState.TRIGGER_PENDING,
    "partially_filled": OrderState.PARTIALLY_FILLED,
    "filled": OrderState.FILLED,
    "cancelled": OrderState.CANCELLED,
    "rejected": OrderState.REJECTED,
}


@attrs.frozen(kw_only=True)
class SampleSettings:
    """The `[accounts.NAME]` table of a `broker = "sample"` account."""

    base_url: str
    """The API's root, e.g. `https://api.samplex.example`."""
    api_key: str = attrs.field(default="", repr=False)
    """Sent as a bearer token; never logged (repr=False)."""
    timeout_s: float = 2.0
    """Per HTTP call; TradingView gives up after 3 s, so leave room for a lookup after a timeout."""
    live: bool = False
    """True when this account trades real money (tvbridge then refuses a weak webhook secret)."""


def parse_settings(table: Mapping[str, object]) -> SampleSettings:
    """The account table, checked: `SettingsError` names every bad key."""
    settings = settings_from(SampleSettings, table)
    problems: list[tuple[str, str]] = []
    url = urlsplit(settings.base_url)
    if url.scheme not in {"http", "https"} or not url.netloc:
        problems.append(("base_url", f"must be an http(s) URL, got {settings.base_url!r}"))
    if not 0 < settings.timeout_s <= 30:
        problems.append(("timeout_s", f"must be between 0 and 30 seconds, got {settings.timeout_s}"))
    if problems:
        raise SettingsError(problems)
    return settings


class SampleBroker:
    """Orders on one SampleX account."""

    api_version: ClassVar[int] = API_VERSION

    def __init__(self, settings: SampleSettings, context: BrokerContext) -> None:
        self._settings = settings
        self._context = context
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, object], context: BrokerContext) -> Self:
        return cls(parse_settings(settings), context)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            order_types=frozenset(ORDER_TYPES),
            products=frozenset({Product.CNC, Product.INTRADAY}),
            exchanges=frozenset({Exchange.NSE, Exchange.BSE}),
            instruments=frozenset({Instrument.EQUITY}),
            orders=True,  # GET /v1/orders lists open orders, so flatten can cancel them
            # positions=False (the default): SampleX has no positions endpoint, so tvbridge refuses EXIT_ALL legs
            # for this account before sending, and flatten says to close positions in SampleX's own terminal
            live=self._settings.live,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            base_url=self._settings.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {self._settings.api_key}"},
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
        )
        health = await self.health()
        if not health.ok:
            await self.aclose()  # start() failed: nobody will call aclose(), so clean up here
            error = BrokerAuthError if health.detail == BAD_KEY else BrokerUnavailableError
            raise error(f"account {self._context.account}: {health.detail}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def place(self, request: OrderRequest) -> OrderResult:
        leg = request.leg
        check_supported(self.capabilities, leg)
        body = {
            "client_order_id": request.client_order_id,
            "symbol": leg.symbol,
            "exchange": leg.exchange.value,
            "side": "BUY" if leg.side.value == "B" else "SELL",
            "quantity": leg.quantity,
            "type": ORDER_TYPES[leg.order_type],
            "price": str(leg.price),
            "trigger_price": str(leg.trigger_price) if leg.trigger_price is not None else None,
        }
        try:
            status, answer = await self._call("POST", "v1/orders", json=body)
        except aiohttp.ClientConnectorError as e:  # never connected: nothing was sent
            raise BrokerUnavailableError(f"SampleX unreachable, nothing sent: {e.os_error}") from e
        except (TimeoutError, aiohttp.ClientError) as e:  # sent, no answer: it may exist
            raise BrokerUnknownOutcomeError(f"no answer from SampleX ({type(e).__name__})") from e
        if status in {200, 201, 409}:  # 409: the venue already has this client order id; that order is ours
            return _result(answer["order"])
        _raise_for(status, answer)
        raise AssertionError  # pragma: no cover - _raise_for always raises

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        try:
            status, answer = await self._call("GET", f"v1/orders/by-client-id/{client_order_id}")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise BrokerUnavailableError(f"SampleX lookup failed ({type(e).__name__})") from e
        if status == 404:
            return None
        if status != 200:
            _raise_for(status, answer)
        return _result(answer["order"])

    async def cancel(self, request: CancelRequest) -> list[OrderResult]:
        leg = request.leg
        if leg.order_id:
            ids = [leg.order_id]
        elif leg.symbol:
            query = {"symbol": leg.symbol}
            if leg.side is not None:
                query["side"] = "BUY" if leg.side.value == "B" else "SELL"
            ids = []
            for open_status in ("open", "trigger_pending"):
                _, answer = await self._checked("GET", "v1/orders", params={**query, "status": open_status})
                ids += [o["id"] for o in answer["orders"]]
        else:
            raise BrokerRejectedError("cancel needs an order_id or a symbol: nothing was cancelled")
        results = []
        for order_id in ids:
            status, answer = await self._checked("DELETE", f"v1/orders/{order_id}", allow={404, 409})
            if status == 404:
                raise BrokerRejectedError(f"unknown order id {order_id!r}")
            if status == 409:
                raise BrokerRejectedError(f"order {order_id} cannot be cancelled: {answer.get('error', '')}")
            results.append(_result(answer["order"]))
        return results

    async def open_orders(self) -> list[OpenOrder]:
        """Every order of the account SampleX still holds open, for `tvbridge flatten` (declared: `orders`)."""
        found: list[OpenOrder] = []
        for open_status in ("open", "trigger_pending"):
            _, answer = await self._checked("GET", "v1/orders", params={"status": open_status})
            found += [_open_order(o) for o in answer["orders"]]
        return found

    async def health(self) -> Health:
        if self._session is None:
            return Health(ok=False, detail="not started")
        try:
            status, _ = await self._call("GET", "v1/ping")
        except (TimeoutError, aiohttp.ClientError) as e:
            return Health(ok=False, detail=f"SampleX unreachable ({type(e).__name__})")
        if status == 401:
            return Health(ok=False, detail=BAD_KEY)
        return Health(ok=status == 200, detail="" if status == 200 else f"SampleX answered {status}")

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise BrokerUnavailableError("the SampleX session is not started")
        async with self._session.request(method, path, **kwargs) as response:
            try:
                answer = await response.json()
            except (aiohttp.ContentTypeError, ValueError):
                answer = {"error": (await response.text())[:200]}
            return response.status, answer if isinstance(answer, dict) else {}

    async def _checked(
        self, method: str, path: str, *, allow: frozenset[int] | set[int] = frozenset(), **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        try:
            status, answer = await self._call(method, path, **kwargs)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise BrokerUnavailableError(f"SampleX call failed ({type(e).__name__})") from e
        if status >= 300 and status not in allow:
            _raise_for(status, answer)
        return status, answer


def _raise_for(status: int, answer: Mapping[str, Any]) -> None:
    error = str(answer.get("error", "")) or f"HTTP {status}"
    if status == 401:
        raise BrokerAuthError(f"SampleX refused the api key: {error}")
    if status in {429, 503}:
        raise BrokerUnavailableError(f"SampleX is busy, nothing placed: {error}")
    if 400 <= status < 500:
        raise BrokerRejectedError(f"SampleX rejected the order: {error}")
    raise BrokerUnknownOutcomeError(f"SampleX answered {status}: {error}")


def _open_order(order: Mapping[str, Any]) -> OpenOrder:
    trigger = order.get("trigger_price")
    return OpenOrder(
        order_id=str(order["id"]),
        state=STATES.get(str(order["status"]), OrderState.PENDING),
        contract=ContractId(
            exchange=Exchange(order.get("exchange") or "NSE"), symbol=str(order["symbol"]), instrument=Instrument.EQUITY
        ),
        side=Side.BUY if order["side"] == "BUY" else Side.SELL,
        quantity=int(order["quantity"]),
        order_type=next((ours for ours, theirs in ORDER_TYPES.items() if theirs == order["type"]), None),
        filled_quantity=int(order.get("filled_quantity", 0)),
        price=Decimal(str(order["price"])),
        trigger_price=Decimal(str(trigger)) if trigger is not None else None,
        client_order_id=str(order["client_order_id"]),
    )


def _result(order: Mapping[str, Any]) -> OrderResult:
    average = order.get("average_price")
    return OrderResult(
        order_id=str(order["id"]),
        state=STATES.get(str(order["status"]), OrderState.PENDING),
        message=str(order.get("message") or order["status"]),
        client_order_id=str(order["client_order_id"]),
        filled_quantity=int(order.get("filled_quantity", 0)),
        average_price=Decimal(str(average)) if average is not None else None,
        details={"venue_status": order["status"]},
    )


__all__ = ["SampleBroker", "SampleSettings", "parse_settings"]
