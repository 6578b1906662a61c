"""What one paper alert costs the journal's connection, counted, and the process's CPU per alert, for commits
alternated: figures that a shared, loaded machine does not move (statements and SQLite's steps are counts).

    python3 bench/per_alert.py 2305f11 HEAD        # refs, installed as bench/ab.py installs them
    PER_ALERT_N=2000 PER_ALERT_ROUNDS=5 python3 bench/per_alert.py main HEAD

Each round runs, in a fresh process of each commit's venv, the real app (every guard, the paper book joined to
the SQLite journal, the CSV order log, JSON log lines to a file) in aiohttp's test server, loaded by its client
at concurrency 32 with the load client's alert (one MKT leg, price 0, a unique symbol/quantity/bar), after 200
alerts of warm-up. Counted on the journal's connection over the measured alerts: SQL statements
(`set_trace_callback`), SQLite virtual machine steps (`set_progress_handler`, to 100), commits; and the process's
CPU time (server and client together: the client's share is the same for both). Never run from the tests.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import asyncio, collections, json, os, sys, tempfile, time
from pathlib import Path
from aiohttp.test_utils import TestClient, TestServer
from tvbridge.app import create_app
from tvbridge.config import load_config
from tvbridge.keys import JOURNAL
from tvbridge.logsetup import configure_logging
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

SECRET = "bench-secret-0123456789abcdef"
N = int(sys.argv[1])

def body(i):
    leg = {"transactionType": "B", "orderType": "MKT", "quantity": str(1 + (i // 20) % 50), "exchange": "NSE",
           "symbol": f"SYM{i % 20}", "instrument": "EQ", "productType": "C", "sort_order": "1", "price": "0",
           "meta": {"interval": "1D", "time": iso(BAR_BASE - i), "timenow": iso(time.time())}}
    return {"secret": SECRET, "alertType": "multi_leg_order", "order_legs": [leg]}

def iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))

BAR_BASE = int(time.time()) - 86_400

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": tmp, "TVBRIDGE_SESSIONS__ENABLED": "false",
               "TVBRIDGE_RATE_LIMIT__ENABLED": "false"}
        config = load_config(None, make_converter(), env, Path(tmp))
        configure_logging(level="info", fmt="json", file=Path(tmp) / "log.jsonl", stream=open(os.devnull, "w"))
        app = create_app(config, make_converter(), resolve_credentials(config))
        async with TestClient(TestServer(app)) as client:
            sem = asyncio.Semaphore(32)
            async def post(i):
                async with sem:
                    r = await client.post("/webhook", json=body(i))
                    if r.status != 200:
                        raise RuntimeError(await r.text())
            for i in range(200):
                await post(10_000_000 + i)
            journal = app[JOURNAL]
            await journal.settle()
            statements = collections.Counter()
            steps = [0]
            def count():
                steps[0] += 1
                return 0
            def trace(sql):
                statements[" ".join(sql.split()[:2])] += 1
            def hook(conn):
                conn.set_trace_callback(trace)
                conn.set_progress_handler(count, 100)
            await journal.database.read(hook)
            before, cpu = journal.database.batches, time.process_time()
            await asyncio.gather(*(post(i) for i in range(N)))
            await journal.settle()
            cpu = time.process_time() - cpu
            commits = journal.database.batches - before
    print(json.dumps({"cpu_us": round(cpu / N * 1e6, 1), "statements": round(sum(statements.values()) / N, 2),
                      "steps": round(steps[0] * 100 / N), "commits": round(commits / N, 3),
                      "by_kind": {k: round(v / N, 2) for k, v in statements.most_common()}}))

asyncio.run(main())
"""


def main(refs: list[str]) -> int:
    if not refs:
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "bench"))
    from ab import install  # noqa: PLC0415 - one venv per commit, shared with ab.py

    pythons = {ref: install(ref) for ref in refs}
    n = os.environ.get("PER_ALERT_N", "2000")
    rounds = int(os.environ.get("PER_ALERT_ROUNDS", "4"))
    found: dict[str, list[dict[str, object]]] = {ref: [] for ref in refs}
    for round_ in range(rounds):
        for ref in refs if round_ % 2 == 0 else refs[::-1]:
            done = subprocess.run(
                [str(pythons[ref]), "-c", CHILD, n],
                check=True,
                capture_output=True,
                text=True,
                cwd=tempfile.gettempdir(),
            )
            line = json.loads(done.stdout.strip().splitlines()[-1])
            found[ref].append(line)
            print(json.dumps({"ref": ref, "round": round_ + 1, **line}), flush=True)
    for ref in refs:
        lines = found[ref]
        print(
            f"{ref}: CPU {statistics.median(float(x['cpu_us']) for x in lines):.0f} us/alert (median of"  # type: ignore[arg-type]
            f" {len(lines)}), {lines[-1]['statements']} statements, {lines[-1]['steps']} SQLite steps,"
            f" {lines[-1]['commits']} commits per alert"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
