"""The day's positions and P&L per account, worked out from the fills in the journal (pure: no I/O).

Why from the journal and not from the broker: the journal is the one record every broker shares (paper, Dhan,
plugins), it has each fill's time (so the page can draw realised P&L over the day), and it is what `GET
/alerts/<id>` shows, so the numbers on the page can be checked against the alerts that made them. Only fills
tvbridge placed are seen: a position opened before today, or an order placed in the broker's own terminal (or by
`flatten`, which does not go through an alert), is not in these numbers; the broker's own positions are shown
beside them.

Average-cost accounting, the same rule as the paper broker's book: adding to a position moves its average price;
reducing it books `closed quantity x (price - average)` as realised; going through zero opens the rest at the fill
price. Unrealised P&L needs a last price: the latest price > 0 an alert carried for the contract, or the latest
fill price (paper has no market feed; a broker's LTP is not asked for yet).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


@attrs.frozen(kw_only=True)
class Fill:
    at: str
    """ISO UTC time the fill was recorded."""
    account: str
    exchange: str
    symbol: str
    side: str
    """`B`, `S`, or `EXIT` for a leg that closed whatever was open (`manage_position = EXIT_ALL`: the broker chose
    the side, opposite to the position)."""
    quantity: int
    price: Decimal


@attrs.define
class _Position:
    net: int = 0
    average: Decimal | None = None
    realised: Decimal = Decimal(0)

    def apply(self, signed: int, price: Decimal) -> Decimal:
        """Book one fill; the P&L it realised."""
        booked = Decimal(0)
        new_net = self.net + signed
        if self.net == 0 or (self.net > 0) == (signed > 0):
            held = abs(self.net) * (self.average or Decimal(0))
            self.average = (held + abs(signed) * price) / abs(new_net)
        else:
            closed = min(abs(self.net), abs(signed))
            booked = closed * (price - (self.average or price)) * (1 if self.net > 0 else -1)
            if new_net == 0:
                self.average = None
            elif (new_net > 0) != (self.net > 0):
                self.average = price
        self.net = new_net
        self.realised += booked
        return booked


def decimal_or_none(text: object) -> Decimal | None:
    try:
        value = Decimal(str(text))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def day_pnl(fills: Iterable[Fill], last_prices: Mapping[tuple[str, str], Decimal]) -> dict[str, Any]:
    """Per account: positions (net quantity, average price, realised, last price, unrealised) and totals; and the
    realised P&L series (one point per fill, cumulative per account), for the page's chart."""
    books: dict[str, dict[tuple[str, str], _Position]] = {}
    series: list[dict[str, Any]] = []
    totals: dict[str, Decimal] = {}
    for fill in sorted(fills, key=lambda f: f.at):
        position = books.setdefault(fill.account, {}).setdefault((fill.exchange, fill.symbol), _Position())
        if fill.side == "EXIT":
            signed = -fill.quantity if position.net > 0 else fill.quantity
        else:
            signed = fill.quantity if fill.side == "B" else -fill.quantity
        totals[fill.account] = totals.get(fill.account, Decimal(0)) + position.apply(signed, fill.price)
        series.append({"at": fill.at, "account": fill.account, "realised": _money(totals[fill.account])})
    accounts = []
    for account, book in sorted(books.items()):
        rows = []
        unrealised_total = Decimal(0)
        for (exchange, symbol), position in sorted(book.items()):
            last = last_prices.get((exchange, symbol))
            unrealised = None
            if position.net and last is not None and position.average is not None:
                unrealised = position.net * (last - position.average)
                unrealised_total += unrealised
            rows.append(
                {
                    "exchange": exchange,
                    "symbol": symbol,
                    "net_quantity": position.net,
                    "average_price": _money(position.average) if position.average is not None else None,
                    "realised": _money(position.realised),
                    "last_price": str(last) if last is not None else None,
                    "unrealised": _money(unrealised) if unrealised is not None else None,
                }
            )
        accounts.append(
            {
                "account": account,
                "realised": _money(totals.get(account, Decimal(0))),
                "unrealised": _money(unrealised_total),
                "positions": rows,
            }
        )
    return {"accounts": accounts, "series": series}
