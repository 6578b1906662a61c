"""What the journal costs per alert, and what group commit buys: the journal alone, no HTTP, no broker.

Each simulated alert does what the webhook path does: `record_alert` (alert + pending legs), one
`mark_sending` per leg, `finish_alert`. Run at concurrency 1 (every write its own commit) and 32 (writes of
concurrent alerts share commits), for `synchronous` full and normal, with and without the sending marks.
Prints one JSON line per case: microseconds per alert (wall), commits per alert.

    .venv/bin/python bench/journal_cost.py [alerts]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from tvbridge.journal import Journal, PlannedLeg
from tvbridge.models import LegResult, LegStatus

PAYLOAD = {"alertType": "multi_leg_order", "order_legs": [{"symbol": "RELIANCE", "quantity": "10"}]}


def result(n: int) -> LegResult:
    return LegResult(
        leg_number=n,
        account="paper",
        broker="paper",
        symbol="RELIANCE",
        exchange="NSE",
        transaction="B",
        quantity="10",
        order_type="MKT",
        product_type="C",
        price="0",
        status=LegStatus.SUCCESS,
        message="filled",
        order_id="P1",
        client_order_id=f"x-{n}",
    )


async def one_alert(journal: Journal, alert_id: str, *, sending: bool) -> None:
    legs = [PlannedLeg(account="paper", leg_number=1, client_order_id=f"{alert_id}-1")]
    await journal.record_alert(
        alert_id=alert_id, alert_type="multi_leg_order", payload=PAYLOAD, dedupe_key=None, source=None, legs=legs
    )
    if sending:
        await journal.mark_sending(alert_id, "paper", 1, None)
    await journal.finish_alert(alert_id, "success", {"status": "success"}, [result(1)])


async def case(alerts: int, concurrency: int, synchronous: str, *, sending: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the disk under test, not a tmpfs
        journal = Journal(Path(tmp) / "journal.sqlite3", synchronous=synchronous)  # type: ignore[arg-type]
        await journal.open()
        for i in range(300):  # grow the WAL past its first checkpoint: steady state, not first-use cost
            await one_alert(journal, f"warm{i}", sending=sending)
        before = journal._db.batches  # noqa: SLF001 - the benchmark reads the worker's counter
        semaphore = asyncio.Semaphore(concurrency)

        async def run(i: int) -> None:
            async with semaphore:
                await one_alert(journal, f"a{i}", sending=sending)

        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(alerts)))
        elapsed = time.perf_counter() - started
        commits = journal._db.batches - before  # noqa: SLF001 - same
        await journal.close()
    return {
        "synchronous": synchronous,
        "concurrency": concurrency,
        "sending_mark": sending,
        "us_per_alert": round(elapsed / alerts * 1e6, 1),
        "alerts_per_s": round(alerts / elapsed),
        "commits_per_alert": round(commits / alerts, 3),
    }


async def main() -> None:
    alerts = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for synchronous in ("normal", "full"):
        for concurrency in (1, 32):
            for sending in (False, True):
                print(json.dumps(await case(alerts, concurrency, synchronous, sending=sending)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
