"""`tvbridge serve` with its storage replaced by no-ops: the ceiling of the Python pipeline. Benchmark only.

    python bench/without_io.py serve      # as `tvbridge serve`, but nothing is stored

What it takes away: the journal's writes and dedupe look-ups (nothing journaled, every alert new), the paper
broker's book (every order "filled" without SQLite) and the CSV order log. What stays: aiohttp, every guard
middleware, parsing, the executor, metrics and the JSON log lines (`TVBRIDGE_LOGGING__LEVEL=warning` and an empty
`TVBRIDGE_LOGGING__FILE` take those away too). `bench/run.py` starts this instead of tvbridge with
`BENCH_VARIANT=without-io` (or `without-io-or-logs`), in the same alternation as the reference servers, so that
the figure says how far tvbridge could get by making its storage cheaper alone.

Never a way to run tvbridge: an alert "placed" here is placed nowhere and recorded nowhere.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tvbridge import cli
from tvbridge.broker import OrderResult, OrderState
from tvbridge.journal import Journal
from tvbridge.orderlog import OrderLog
from tvbridge_brokers.paper.broker import PaperBroker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.broker import OrderRequest
    from tvbridge.models import LegResult


def stub_storage() -> None:
    """Replace the per-alert storage calls; opening and closing (schema, files) stay real."""

    async def no_write(self: Journal, fn: Any) -> None:  # noqa: ARG001 - the write is dropped
        return None

    async def never_seen(self: Journal, dedupe_key: str, since: str) -> None:  # noqa: ARG001
        return None

    async def filled(self: PaperBroker, request: OrderRequest) -> OrderResult:  # noqa: ARG001
        return OrderResult(
            order_id=f"NOIO-{request.client_order_id}",
            state=OrderState.FILLED,
            message="filled (benchmark without storage)",
            client_order_id=request.client_order_id,
        )

    async def no_rows(self: OrderLog, results: Sequence[LegResult], *, alert_id: str, alert_type: str) -> None:  # noqa: ARG001
        return None

    opened = Journal.open

    async def open_then_stub(self: Journal) -> None:
        await opened(self)  # the schema is created for real, then writes stop
        self._write = no_write.__get__(self)  # type: ignore[method-assign]

    Journal.open = open_then_stub  # type: ignore[method-assign]
    Journal.find_by_dedupe_key = never_seen  # type: ignore[method-assign]
    PaperBroker.place = filled  # type: ignore[method-assign]
    # the book would join the journal (its first order inside the dropped write): it keeps its stubbed place()
    PaperBroker.join_journal = lambda self, database: False  # type: ignore[method-assign]  # noqa: ARG005
    OrderLog.append = no_rows  # type: ignore[method-assign]


if __name__ == "__main__":
    stub_storage()
    sys.exit(cli.main(sys.argv[1:]))
