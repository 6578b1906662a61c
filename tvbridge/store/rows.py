"""The stores' rows as the rest of tvbridge reads them: one shaping for both stores.

The SQL differs between the SQLite journal and the PostgreSQL store (JSON functions, placeholders), the rows do
not: both keep the same columns with the same text forms (`tvbridge/store/migrations.py`), and both drivers' rows
(`sqlite3.Row`, `asyncpg.Record`) are read by column name and list their `keys()`. So what a row becomes (an
alert's record for `GET /alerts/<id>`, a leg for order follow-up, a strategy's fill, a repeat's answer) is
written once here, and `tests/test_store.py` comparing both stores' records compares their SQL only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from tvbridge.config import DEFAULT_STRATEGY
from tvbridge.positions import StrategyFill

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


class Row(Protocol):
    """What both drivers' rows offer: `row["column"]` and the column names."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


_JSON_COLUMNS = frozenset({"result", "bracket"})


def json_or_none(text: str | None) -> Any:
    return json.loads(text) if text else None


def leg_record(row: Row) -> dict[str, Any]:
    """A leg's columns, its `result` and `bracket` (JSON text) decoded; no bracket is `[]`."""
    return {
        **{key: row[key] for key in row.keys() if key not in _JSON_COLUMNS},  # noqa: SIM118 - a sqlite3.Row iterates values
        "result": json_or_none(row["result"]),
        "bracket": json_or_none(row["bracket"]) or [],
    }


def alert_record(row: Row, legs: Sequence[Row]) -> dict[str, Any]:
    """`get_alert`'s answer: the alert's row (payload and response decoded) with its legs."""
    return {
        "alert_id": row["alert_id"],
        "received_at": row["received_at"],
        "alert_type": row["alert_type"],
        "strategy": row["strategy"] or DEFAULT_STRATEGY,
        "status": row["status"],
        "updated_at": row["updated_at"],
        "payload": json.loads(row["payload"]),
        "response": json_or_none(row["response"]),
        "legs": [leg_record(leg) for leg in legs],
    }


def dedupe_record(row: Row) -> dict[str, Any]:
    """`find_by_dedupe_key`'s answer: the first copy's id, status and response."""
    return {"alert_id": row["alert_id"], "status": row["status"], "response": json_or_none(row["response"])}


def strategy_fill(row: Row) -> StrategyFill:
    """One filled leg as a strategy's position sums it (`positions.book`)."""
    return StrategyFill(
        strategy=row["strategy"],
        key=row["key"],
        side=row["side"],
        quantity=int(row["filled"]),
        bracket=tuple(json_or_none(row["bracket"]) or ()),
        at=row["received_at"],
        # tvbridge flatten / POST /admin/flatten (square-off's flatten runs under its strategy)
        resets=row["alert_type"] == "flatten" and row["strategy"] == DEFAULT_STRATEGY,
    )
