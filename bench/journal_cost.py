"""What the journal costs per alert, and what group commit buys: the journal alone, no HTTP, no broker.

Each simulated alert does what the webhook path does: `record_alert` (alert + pending legs), one
`mark_sending` per leg, `finish_alert`. Run at concurrency 1 (every write its own commit) and 32 (writes of
concurrent alerts share commits), for `synchronous` full and normal, with and without the sending marks.
Prints one JSON line per case: microseconds per alert (wall), commits per alert.

    .venv/bin/python bench/journal_cost.py [alerts]
    .venv/bin/python bench/journal_cost.py [alerts] --alert-path   # issue 22: two writes against one commit

`--alert-path` measures the webhook's own journal writes for a one-leg paper alert instead: `record_plan` (the
leg premarked `sending`) then `record_results` ("two writes", every alert but a settled joined one), against
`record_plan` whose join returns the alert's `Finished` (results, status and answer in the same transaction)
followed by `order_log_written` ("one commit": the mark's clearing rides on the next alert's transaction).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from tvbridge.alerts.records import AlertEntry, Finished, LegEntry
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


def planned(alert_id: str) -> AlertEntry:
    legs = (LegEntry(account="paper", leg_number=1, client_order_id=f"{alert_id}-1", state="sending"),)
    return AlertEntry(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload=PAYLOAD,
        dedupe_key=None,
        source=None,
        order_log_offset=0,
        legs=legs,
        strategy="default",
    )


async def path_alert(journal: Journal, alert_id: str, *, one_commit: bool) -> None:
    response = {"status": "success", "results": [{"leg_number": 1, "status": "success"}]}
    if one_commit:
        finished = Finished(status="success", response=response, results=(result(1),))
        await journal.record_plan(planned(alert_id), join=lambda _: finished)
        journal.order_log_written(alert_id)
    else:
        await journal.record_plan(planned(alert_id))
        await journal.record_results(alert_id, "success", response, [result(1)])


async def path_case(alerts: int, concurrency: int, *, one_commit: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite3")
        await journal.open()
        for i in range(300):
            await path_alert(journal, f"warm{i}", one_commit=one_commit)
        before = journal.database.batches
        semaphore = asyncio.Semaphore(concurrency)

        async def run(i: int) -> None:
            async with semaphore:
                await path_alert(journal, f"a{i}", one_commit=one_commit)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(alerts)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        commits = journal.database.batches - before
        await journal.close()
    return {
        "path": "one commit" if one_commit else "two writes",
        "concurrency": concurrency,
        "us_per_alert": round(elapsed / alerts * 1e6, 1),
        "cpu_us_per_alert": round(cpu / alerts * 1e6, 1),
        "commits_per_alert": round(commits / alerts, 3),
    }


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    alerts = int(args[0]) if args else 2000
    if "--alert-path" in sys.argv:
        for _ in range(3):  # alternated: this machine is shared
            for concurrency in (1, 32):
                for one_commit in (False, True):
                    print(json.dumps(await path_case(alerts, concurrency, one_commit=one_commit)), flush=True)
        return
    for synchronous in ("normal", "full"):
        for concurrency in (1, 32):
            for sending in (False, True):
                print(json.dumps(await case(alerts, concurrency, synchronous, sending=sending)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
