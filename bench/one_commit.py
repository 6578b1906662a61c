"""One commit against two writes for a one-leg paper alert, on the same code, in one process: the real app (every
guard, the paper book joined to the SQLite journal, the CSV order log) served by aiohttp's test server and loaded
by its client at concurrency 32 (and 1), log lines off (the same in both). The path is switched per round: "two
writes" makes `_finish_joined` settle nothing, so every alert takes the results' own write as before. Alternated
rounds; the process's CPU time per alert (the client's included, the same in both) and the journal's commits per
alert.

    .venv/bin/python bench/one_commit.py [alerts per round] [rounds]

`bench/ab.py` compares commits through the peers' load client, with the durable floor beside them, but its
rounds move by more than this change on a shared machine; here only the path differs. Never run from the tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp.test_utils import TestClient, TestServer

from tvbridge.app import create_app
from tvbridge.config import load_config
from tvbridge.journal import Journal
from tvbridge.keys import EXECUTOR, JOURNAL
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a throwaway server's secret


def body(i: int) -> dict[str, Any]:
    leg = {
        "transactionType": "B",
        "orderType": "MKT",
        "quantity": str(i + 1),
        "exchange": "NSE",
        "symbol": "RELIANCE",
        "instrument": "EQ",
        "productType": "I",
        "price": "100",
    }
    return {"secret": SECRET, "alertType": "multi_leg_order", "order_legs": [leg]}


async def one_round(alerts: int, concurrency: int, *, two_writes: bool, first: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        env = {
            "WEBHOOK_SECRET": SECRET,
            "TVBRIDGE_SERVER__DATA_DIR": tmp,
            "TVBRIDGE_SESSIONS__ENABLED": "false",
            "TVBRIDGE_RATE_LIMIT__ENABLED": "false",
        }
        config = load_config(None, make_converter(), env, Path(tmp))
        app = create_app(config, make_converter(), resolve_credentials(config))
        async with TestClient(TestServer(app)) as client:
            if two_writes:
                app[EXECUTOR]._finish_joined = lambda *_, **__: None  # type: ignore[method-assign]  # noqa: SLF001
            journal = app[JOURNAL]
            assert isinstance(journal, Journal)  # noqa: S101 - the SQLite journal, which the book joins
            semaphore = asyncio.Semaphore(concurrency)

            async def post(i: int) -> None:
                async with semaphore:
                    response = await client.post("/webhook", json=body(i))
                    if response.status != 200:
                        raise RuntimeError(await response.text())

            for i in range(200):  # warm up: the queue's first look, caches, the WAL's first pages
                await post(first + alerts + i)
            await journal.settle()
            before, cpu = journal.database.batches, time.process_time()
            await asyncio.gather(*(post(first + i) for i in range(alerts)))
            await journal.settle()
            cpu = time.process_time() - cpu
            commits = journal.database.batches - before
    return {
        "path": "two writes" if two_writes else "one commit",
        "concurrency": concurrency,
        "cpu_us_per_alert": round(cpu / alerts * 1e6, 1),
        "commits_per_alert": round(commits / alerts, 3),
    }


async def main() -> None:
    # no log lines (both paths write the same ones; rendering them to a terminal would be most of the time)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    alerts = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for concurrency in (32, 1):
        found: dict[str, list[float]] = {"two writes": [], "one commit": []}
        for n in range(rounds):
            for two_writes in (False, True) if n % 2 else (True, False):  # alternated, order swapped each round
                line = await one_round(alerts, concurrency, two_writes=two_writes, first=n * 10 * alerts)
                found[line["path"]].append(line["cpu_us_per_alert"])
                print(json.dumps(line), flush=True)
        medians = {path: statistics.median(values) for path, values in found.items()}
        print(json.dumps({"concurrency": concurrency, "median_cpu_us_per_alert": medians}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
