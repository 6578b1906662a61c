"""What one alert's CSV order log row costs: the order log alone, no HTTP, no broker, no journal.

Appends one-row alerts from 1 and from 32 concurrent tasks to a real file in the current directory's disk (not a
tmpfs) and prints one JSON line per case: CPU and wall microseconds per alert. Until 2026-12-04 the rows went
through aiofiles' worker thread (182 µs of CPU per alert one at a time, 32 at 32 at once, measured the same way);
now they are one write(2) on the event loop.

    .venv/bin/python bench/orderlog_cost.py [alerts]
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from journal_cost import result  # the same leg result the journal benchmark records

from tvbridge.orderlog import OrderLog


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def case(alerts: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        order_log = OrderLog(Path(tmp) / "webhook_orders.csv")
        await order_log.open()

        async def worker(k: int) -> None:
            for i in range(alerts // concurrency):
                await order_log.append([result(1)], alert_id=f"a{k}-{i}", alert_type="multi_leg_order")

        cpu, wall = cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        cpu, wall = cpu_s() - cpu, time.perf_counter() - wall
        await order_log.close()
    done = alerts // concurrency * concurrency
    return {
        "concurrency": concurrency,
        "alerts": done,
        "cpu_us_per_alert": round(cpu / done * 1e6, 1),
        "wall_us_per_alert": round(wall / done * 1e6, 1),
    }


async def main() -> None:
    alerts = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for concurrency in (1, 32):
        print(json.dumps(await case(alerts, concurrency)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
