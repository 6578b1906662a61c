"""Where each microsecond of an alert goes: tvbridge under cProfile, loaded at concurrency 32, CPU time per alert
by area (self time of every function, grouped by where it lives).

    python bench/profile.py                   # this checkout's tvbridge (BENCH_PYTHON: another venv's python)
    python bench/profile.py --stats FILE      # group an existing cProfile output instead

cProfile slows Python code by about half again as much and leaves C calls (SQLite, socket writes) as they are,
so compare areas and runs with each other, not with the unprofiled figures of `bench/run.py`. The idle wait in
`epoll` is left out. Never run from the tests.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "peers-S3cret-7d1f0c9a2b4e6f8a1c3e5d7b9f0a2c4e"  # noqa: S105 - the peers' benchmark secret (run_peers.sh)
AREAS = (  # first match wins: (area, substrings of the function's file or name)
    ("sqlite (journal, paper book, dedupe look-up)", ("sqlite3.Connection", "sqlite3.Cursor", "tvbridge/sqlite.py")),
    ("socket writes", ("_socket.socket",)),
    ("json encode/decode", ("json/",)),
    ("logging (structlog, 4 lines per alert)", ("structlog", "tvbridge/logsetup.py", "logging/")),
    ("metrics (prometheus_client)", ("prometheus_client", "tvbridge/metrics.py")),
    ("parsing (cattrs, parsing.py, models)", ("cattrs", "tvbridge/parsing.py", "tvbridge/models.py", "<cattrs")),
    ("guards (middlewares/)", ("tvbridge/middlewares/", "tvbridge/addresses.py", "tvbridge/refusals.py", "hashlib")),
    ("plan, flow, answer (alerts/)", ("tvbridge/alerts/", "tvbridge/handlers.py", "tvbridge/deadline.py")),
    ("journal (journal.py, Python side)", ("tvbridge/journal.py",)),
    (
        "executor, plugin guard, risk, sizing",
        (
            "tvbridge/executor.py",
            "tvbridge/pluginguard.py",
            "tvbridge/risk.py",
            "tvbridge/sizing.py",
            "tvbridge/contracts.py",
            "tvbridge/positions.py",
            "tvbridge/brackets.py",
            "tvbridge/broker.py",
        ),
    ),
    ("paper broker (Python side)", ("tvbridge_brokers/paper",)),
    ("order log (CSV)", ("tvbridge/orderlog.py", "csv")),
    ("files: stat, halt, identity", ("posix.stat", "pathlib", "tvbridge/fileid.py", "tvbridge/halt.py")),
    ("aiohttp (HTTP parsing, request, response)", ("aiohttp/", "multidict", "yarl")),
    ("attrs (evolve, asdict)", ("attr/",)),
    ("event loop (asyncio)", ("asyncio/", "selectors.py", "_contextvars", "contextvars")),
)
IDLE = ("select.epoll",)


def area_of(where: str) -> str:
    for area, marks in AREAS:
        if any(mark in where for mark in marks):
            return area
    return "other (builtins, datetime, enum, dict operations)"


def report(stats_file: Path, alerts: int) -> str:
    stats = pstats.Stats(str(stats_file))
    totals: dict[str, float] = {}
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]  # pstats' own table
        where = f"{filename}:{line}({name})"
        if any(mark in where for mark in IDLE):
            continue
        totals[area_of(where)] = totals.get(area_of(where), 0.0) + row[2]
    total = sum(totals.values())
    lines = [f"{alerts} alerts, {total / alerts * 1e6:.0f} us of CPU per alert under cProfile", ""]
    lines += ["| area | us per alert | share |", "| --- | ---: | ---: |"]
    for area, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        lines.append(f"| {area} | {seconds / alerts * 1e6:.0f} | {seconds / total:.0%} |")
    return "\n".join(lines)


def run(python: str, alerts: int, out: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "ENABLE_DHAN": "false",
        "TVBRIDGE_SESSIONS__ENABLED": "false",
        **{
            f"TVBRIDGE_RATE_LIMIT__{key}": "1000000"
            for key in ("PER_STRATEGY_PER_S", "PER_STRATEGY_BURST", "PER_IP_PER_S", "PER_IP_BURST", "GLOBAL_PER_S")
        },
    }
    peers = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    with tempfile.TemporaryDirectory() as work:
        server = subprocess.Popen(
            [python, "-m", "cProfile", "-o", str(out), "-m", "tvbridge", "serve"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            load = [python, str(peers / "load.py"), f"http://127.0.0.1:{port}/webhook", "--secret", SECRET]
            subprocess.run([*load, "-n", "0", "--wait-health", "30"], check=True)
            subprocess.run([*load, "-n", str(alerts), "-c", "32"], check=True, stdout=subprocess.DEVNULL)
        finally:
            server.send_signal(signal.SIGINT)  # a clean stop, so cProfile writes its file
            server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stats", type=Path, help="an existing cProfile output to group")
    parser.add_argument("-n", type=int, default=10000, help="alerts to send (also the divisor with --stats)")
    args = parser.parse_args()
    stats = args.stats
    if stats is None:
        stats = Path(tempfile.mkdtemp()) / "tvbridge.prof"
        run(os.environ.get("BENCH_PYTHON", sys.executable), args.n, stats)
    print(report(stats, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
