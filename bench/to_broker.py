"""Time from a webhook request's arrival to its broker call, at concurrency 1: what tvbridge adds before an order
leaves (the guards, parsing, planning, the journal's commit). Issue 22's target: p99 below 1 ms.

Starts `python -m tvbridge serve` (the venv's python, `BENCH_PYTHON`, else this one) in a temporary directory
with the benchmark's settings (paper broker, every guard on, rate limits raised, sessions off), sends alerts with
the peers' load client at concurrency 1, then reads the `tvbridge_alert_to_broker_seconds` histogram from
`GET /metrics` and prints one JSON line: the count, each bucket's share and p50/p90/p99 as bucket upper bounds.

    python bench/to_broker.py            # 3000 alerts; BENCH_TO_BROKER_N to change
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "peers-S3cret-7d1f0c9a2b4e6f8a1c3e5d7b9f0a2c4e"  # noqa: S105 - the peers' benchmark secret (run_peers.sh)
BUCKET = re.compile(r'^tvbridge_alert_to_broker_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def quantiles(buckets: list[tuple[float, float]]) -> dict[str, Any]:
    """Cumulative bucket counts -> each bucket's share and the upper bound under which 50/90/99% fall."""
    total = buckets[-1][1] if buckets else 0
    out: dict[str, Any] = {"count": int(total)}
    if not total:
        return out
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        bound = next(le for le, cumulative in buckets if cumulative >= q * total)
        out[f"{name}_ms_at_most"] = round(bound * 1000, 3) if bound != float("inf") else None
    previous = 0.0
    shares = {}
    for le, cumulative in buckets:
        shares[f"le_{le * 1000:g}ms" if le != float("inf") else "le_inf"] = round((cumulative - previous) / total, 4)
        previous = cumulative
    out["shares"] = shares
    return out


def main() -> int:
    python = os.environ.get("BENCH_PYTHON", sys.executable)
    peers = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    n = os.environ.get("BENCH_TO_BROKER_N", "3000")
    port = free_port()
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
    with tempfile.TemporaryDirectory() as work:
        server = subprocess.Popen(
            [python, "-m", "tvbridge", "serve"], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}/webhook"
            load = [python, str(peers / "load.py"), url, "--secret", SECRET, "--max-seconds", "60"]
            subprocess.run([*load, "-n", "0", "--wait-health", "30"], check=True)
            subprocess.run([*load, "-n", "500", "-c", "1"], check=True, stdout=subprocess.DEVNULL)
            before = scrape(port)
            subprocess.run([*load, "-n", n, "-c", "1"], check=True, stdout=subprocess.DEVNULL)
            after = scrape(port)
        finally:
            server.terminate()
            server.wait(timeout=15)
    buckets = [(le, after[le] - before.get(le, 0.0)) for le in sorted(after)]
    print(json.dumps({"what": "arrival_to_broker_c1", **quantiles(buckets)}))
    return 0


def scrape(port: int) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {float(le): float(count) for le, count in BUCKET.findall(text)}


if __name__ == "__main__":
    sys.exit(main())
