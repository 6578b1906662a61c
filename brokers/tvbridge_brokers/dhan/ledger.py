"""The orders this account sent to Dhan, on disk, written *before* each order is sent.

Two jobs that both need to survive a crash:

* idempotency: `place()` looks the order up by correlation id before sending only when the ledger says the id
  was tried before. That costs one Dhan round trip on a retry instead of on every order (the 3 s TradingView
  budget and Dhan's rate limits both count), while still catching a retry after a crash, because the intent is
  fsynced before the order leaves;
* `cancel_order` by symbol: "the open orders tvbridge placed for that symbol" are the ones listed here.

One JSON object per line (`client_order_id`, `symbol`, `trading_symbol`, `exchange`, `side`,
`security_id`, `order_id`); the last
line for an id wins. No token or price is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path  # noqa: TC003 - used at runtime
from typing import Final

import attrs

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


@attrs.frozen(kw_only=True)
class Entry:
    client_order_id: str
    symbol: str
    """As the alert gave it (upper-cased)."""
    trading_symbol: str
    """Dhan's name for the contract, e.g. NIFTY-Dec2026-FUT."""
    exchange: str
    side: str
    security_id: str
    order_id: str | None = None
    super_order: bool = False
    """A bracket, placed as a Dhan Super Order: looked up in the super order list (`superorders.py`)."""


def ledger_path(data_dir: Path, account: str) -> Path:
    return data_dir / f"dhan-{_UNSAFE.sub('_', account)}-orders.jsonl"


class OrderLedger:
    """Append-only; blocking methods (call them in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Entry] = {}

    def load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    raw = json.loads(line)
                    entry = Entry(**raw)
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash: the intent before it still stands
                self._entries[entry.client_order_id] = entry

    def get(self, client_order_id: str) -> Entry | None:
        return self._entries.get(client_order_id)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def record(self, entry: Entry) -> None:
        """Append and fsync; raises `OSError` when the disk refuses (then the order must not be sent)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(attrs.asdict(entry), separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._entries[entry.client_order_id] = entry
