"""What one JSON log line costs: `configure_logging` as the server runs it, a log file and a stdout, no HTTP.

Each line is a `leg.done` as the executor logs it (eight fields, the request's `alert_id` bound in contextvars
by the request id middleware), with three configured secrets to redact. stdout is a second real file (the
server's stdout redirected, as under a process manager), JSON, so both outputs get every line. The figure is
CPU time (user + system, `time.process_time`) per line: the median of the rounds, after a warm-up; wall time
is printed beside it. Results go to stdout and, under `--label` (default: the checkout's commit), to
bench/results/log_cost.json, so a run against another commit's code sits beside this one:

    .venv/bin/python bench/log_cost.py [--lines N] [--rounds R] [--label NAME]
    PYTHONPATH=/tmp/old .venv/bin/python bench/log_cost.py --label before   # an older tvbridge/ in /tmp/old
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog

import tvbridge.logsetup
from tvbridge.logsetup import configure_logging

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "log_cost.json"
SECRETS = ("whsec-0123456789abcdef0123", "admin-token-abcdef0123456789", "dhan-access-token-0123456789abcdef")


def commit() -> str:
    git = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def one_round(log: structlog.typing.FilteringBoundLogger, lines: int) -> tuple[float, float]:
    """CPU and wall microseconds per line for `lines` leg.done events."""
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(lines):
        log.info(
            "leg.done",
            alert_id="01JDQ2M7X8Y9Z0ABCDEF123456",
            leg=1,
            account="main",
            broker="paper",
            status="success",
            order_id=f"P{n}",
            message="filled",
            latency_ms=1.234,
        )
    return (time.process_time() - cpu) / lines * 1e6, (time.perf_counter() - wall) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=20_000, help="lines per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--label", default=None, help="the key in log_cost.json (default: the current commit)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:  # the disk under test, not a tmpfs
        log_file = Path(tmp) / "webhook_server.log"
        with (Path(tmp) / "stdout.log").open("w", encoding="utf-8") as stdout:
            configure_logging(level="info", fmt="json", file=log_file, secrets=SECRETS, stream=stdout)
            structlog.contextvars.bind_contextvars(alert_id="01JDQ2M7X8Y9Z0ABCDEF123456")
            log: structlog.typing.FilteringBoundLogger = structlog.get_logger()
            one_round(log, 2_000)  # warm-up: first-use caching, the file's first blocks
            rounds = [one_round(log, args.lines) for _ in range(args.rounds)]
            written = len(log_file.read_text(encoding="utf-8").splitlines())
            sample = log_file.read_text(encoding="utf-8").splitlines()[-1]
            root = logging.getLogger()  # undone the way the tests always did, which the old code understands too
            for handler in root.handlers[:]:
                root.removeHandler(handler)
                handler.close()
            structlog.reset_defaults()

    expected = 2_000 + args.lines * args.rounds
    if written != expected:
        raise SystemExit(f"the log file holds {written} lines, expected {expected}")
    cpu = [c for c, _ in rounds]
    wall = [w for _, w in rounds]
    result = {
        "us_per_line": round(statistics.median(cpu), 2),
        "us_per_line_min": round(min(cpu), 2),
        "wall_us_per_line": round(statistics.median(wall), 2),
        "lines_per_round": args.lines,
        "rounds": args.rounds,
        "module": str(Path(tvbridge.logsetup.__file__).resolve()),
        "commit": commit(),
        "python": platform.python_version(),
        "structlog": structlog.__version__,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sample_line": sample,
    }
    label = args.label or result["commit"]
    print(json.dumps({"label": label} | result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps(previous | {label: result}, indent=2) + "\n", encoding="utf-8")
    print(f"{label}: {result['us_per_line']} us of CPU per line -> {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
