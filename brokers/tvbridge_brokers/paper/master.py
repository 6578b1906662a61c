"""Paper with Dhan's instrument master: practice that predicts live.

With `instruments_path` set, a paper account loads the same CSV a dhan account reads, with the dhan broker's own
loader (`tvbridge_brokers.dhan.instruments`), and checks every leg with the dhan broker's own mapping rules
(`tvbridge_brokers.dhan.mapping`): the same contract resolution (typos, expiries, strikes, `NIFTY1!`), the same
whole-lot rule, products and prices. Not a copy of those rules: the very functions, so a paper refusal is the
refusal Dhan would give, word for word, and a rule added to the dhan broker reaches paper too. Nothing here
sends anything; the book (`book.py`) simulates the order afterwards.

The dhan modules (and with them the dhanhq client) are imported only by an account that has a master: this module
is imported lazily by `broker.py`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Self

import attrs

from tvbridge.brackets import is_bracket
from tvbridge.broker import BrokerError, InstrumentInfo, Listings
from tvbridge.models import Instrument
from tvbridge_brokers.dhan.broker import IST
from tvbridge_brokers.dhan.instruments import InstrumentMaster, MasterFormatError, load_master
from tvbridge_brokers.dhan.mapping import _CONTINUOUS as CONTINUOUS  # the dhan broker's own reading of NIFTY1!
from tvbridge_brokers.dhan.mapping import build_place_order, listings_of, resolve_contract
from tvbridge_brokers.dhan.superorders import check_super_entry

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from pathlib import Path

    from tvbridge.broker import OrderRequest
    from tvbridge.models import OrderLeg
    from tvbridge_brokers.dhan.instruments import Contract


class DhanRules:
    """The master and the clock that picks "the nearest unexpired" contract (exchange date, IST)."""

    def __init__(self, master: InstrumentMaster, clock: Callable[[], datetime]) -> None:
        self._master = master
        self._clock = clock

    @classmethod
    async def load(cls, path: Path, clock: Callable[[], datetime]) -> Self:
        """Load the master off the event loop; `BrokerError` (tvbridge then refuses to start) if it cannot."""
        return cls(await asyncio.to_thread(_load, path), clock)

    def __len__(self) -> int:
        return len(self._master)

    def contract(self, leg: OrderLeg) -> Contract:
        """The master row the leg means, as the dhan broker resolves it; `BrokerRejectedError` /
        `BrokerUnsupportedError` with Dhan's message otherwise."""
        return resolve_contract(leg, self._master, today=self._clock().astimezone(IST).date())

    def info(self, leg: OrderLeg) -> InstrumentInfo:
        contract = self.contract(leg)
        return InstrumentInfo(
            trading_symbol=contract.trading_symbol, lot_size=contract.lot_size, security_id=contract.security_id
        )

    def listings(self, leg: OrderLeg) -> Listings:
        """The expiries and strikes the master lists, read by the dhan broker's own function."""
        return listings_of(leg, self._master)

    @staticmethod
    def booked_symbol(symbol: str) -> str:
        """The name `check()` books a leg under, from the symbol as an alert wrote it: upper case, and a
        continuous future (`NIFTY1!`) by its underlying. For cancels, which name no instrument to resolve."""
        upper = symbol.strip().upper()
        continuous = CONTINUOUS.fullmatch(upper)
        return continuous["underlying"] if continuous else upper

    def check(self, request: OrderRequest) -> OrderLeg:
        """Refuse what the dhan broker would refuse, with its message; return the leg named as the contract it
        resolved to (upper-case symbol; a future's underlying and expiry, so `NIFTY1!` and NIFTY with that
        expiry are one position, and `NIFTY1!` moves to the next contract when Dhan's does).

        An exit (`manage_position`) is resolved but its order fields are not mapped: its side and quantity come
        from the position, not from the alert."""
        leg = request.leg
        contract = self.contract(leg)
        if leg.manage_position is None:
            build_place_order(leg, contract, client_order_id=request.client_order_id)
        if is_bracket(leg):
            check_super_entry(leg)  # a bracket is a Dhan super order: LMT or MKT with a price
        if leg.instrument is Instrument.FUTURE:
            return attrs.evolve(leg, symbol=contract.underlying, expiry_date=contract.expiry)
        return attrs.evolve(leg, symbol=contract.underlying)


def _load(path: Path) -> InstrumentMaster:
    if not path.exists():
        msg = f"instruments_path {path}: no such file (`tvbridge dhan instruments refresh` downloads it)"
        raise BrokerError(msg)
    try:
        return load_master(path)
    except (OSError, MasterFormatError) as e:
        raise BrokerError(f"cannot load the Dhan instrument master {path}: {e}") from e
