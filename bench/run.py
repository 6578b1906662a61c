"""tvbridge against its peers, in one run on one machine: throughput, latency, memory, and the ratios.

Runs `../shared/peers/run_peers.sh` (override with PEERS_DIR) with tvbridge in the same A B C D A B C D
alternation as the bare aiohttp floor, the guide's FastAPI server and the durable floor (one SQLite transaction,
a CSV row and a log line per alert: issue 22), so the ratios come from one run on one
noisy machine. tvbridge is started the way the guide's server is (WEBHOOK_* environment, its working directory)
from a venv of its own with the paper broker, every guard on, the journal on (`synchronous = normal`, the
default; `BENCH_JOURNAL_SYNC=full` for the other) and only the rate limits raised out of the way (load.py sends
unique alerts, so dedupe stays on and never fires) and market sessions off, so that every alert is placed on the
paper broker whatever the hour (else, outside NSE's hours, they would all be queued). Peak RSS is each server's
VmHWM from /proc, sampled while it runs.

    python bench/run.py                 # figures on stdout, bench/results/latest.{json,md}
    PEERS_ROUNDS=4 python bench/run.py  # more rounds (medians are reported); other PEERS_* pass through
    BENCH_JOURNAL_SYNC=full python bench/run.py   # the journal's `synchronous` (default: normal, as config.toml)
    BENCH_VARIANT=without-io python bench/run.py  # the ceiling: storage stubbed out (bench/without_io.py)
    BENCH_VARIANT=without-io-or-logs python bench/run.py  # ... and no info log lines either

Never run from the tests: it takes minutes and measures the machine as much as the code.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERS = ("floor_aiohttp", "seed_fastapi", "floor_durable", "tvbridge")
RAISED_LIMITS = {
    "TVBRIDGE_RATE_LIMIT__PER_STRATEGY_PER_S": "1000000",
    "TVBRIDGE_RATE_LIMIT__PER_STRATEGY_BURST": "1000000",
    "TVBRIDGE_RATE_LIMIT__PER_IP_PER_S": "1000000",
    "TVBRIDGE_RATE_LIMIT__PER_IP_BURST": "1000000",
    "TVBRIDGE_RATE_LIMIT__GLOBAL_PER_S": "1000000",
}
EVERY_HOUR = {"TVBRIDGE_SESSIONS__ENABLED": "false"}
"""Market sessions off: otherwise, outside NSE's hours, every alert is queued (202) rather than placed, and the
figures would depend on the hour of the run. Each alert is placed on the paper broker, the whole path."""
MATCH = {
    "floor_aiohttp": re.compile(r"floor_aiohttp\.py"),
    "seed_fastapi": re.compile(r"seed_fastapi\.py"),
    "floor_durable": re.compile(r"floor_durable\.py"),
    "tvbridge": re.compile(r"-m tvbridge serve|without_io\.py serve"),
}
VARIANTS: dict[str, dict[str, str]] = {
    "": {},
    "without-io": {},
    "without-io-or-logs": {"TVBRIDGE_LOGGING__LEVEL": "warning", "TVBRIDGE_LOGGING__FILE": ""},
}
"""BENCH_VARIANT: tvbridge as it is (""), or started through `bench/without_io.py` (storage stubbed out), to
measure how much of the time is storage and how much the Python pipeline itself."""


def bench_venv() -> Path:
    """A venv with tvbridge installed from this checkout (rebuilt each run: the code is what is measured)."""
    venv = Path(os.environ.get("BENCH_VENV", "/tmp/tvbridge-bench-venv"))  # noqa: S108 - a throwaway venv, overridable
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
    )
    return venv


class RssSampler(threading.Thread):
    """Peak RSS (VmHWM, kB) per peer per server process, from /proc every 100 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[tuple[str, int], int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if "load.py" in cmdline:
                        continue
                    peer = next((p for p, rx in MATCH.items() if rx.search(cmdline)), None)
                    if peer is None:
                        continue
                    status = (proc / "status").read_text()
                except OSError:
                    continue
                match = re.search(r"VmHWM:\s+(\d+) kB", status)
                if match:
                    key = (peer, int(proc.name))
                    self.peaks[key] = max(self.peaks.get(key, 0), int(match.group(1)))

    def peak_mb(self, peer: str) -> float | None:
        values = [kb for (p, _), kb in self.peaks.items() if p == peer]
        return round(max(values) / 1024, 1) if values else None


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(rows: list[dict[str, Any]], sampler: RssSampler) -> dict[str, Any]:
    peers: dict[str, Any] = {}
    for peer in PEERS:
        latency = [r for r in rows if r.get("peer") == peer and r.get("mode") == "latency"]
        throughput = [r for r in rows if r.get("peer") == peer and r.get("mode") == "throughput"]
        if not latency and not throughput:
            continue
        peers[peer] = {
            "rps_c32": median(throughput, "rps"),
            "p50_ms_c1": median(latency, "p50_ms"),
            "p99_ms_c1": median(latency, "p99_ms"),
            "p99_ms_c32": median(throughput, "p99_ms"),
            "non_2xx": sum(r.get("non_2xx", 0) for r in latency + throughput),
            "errors": sum(r.get("errors", 0) for r in latency + throughput),
            "server_cpu_pct_c32": median(throughput, "server_cpu_pct"),
            "peak_rss_mb": sampler.peak_mb(peer),
            "rounds": len(throughput),
        }
    ratios: dict[str, Any] = {}
    tv = peers.get("tvbridge", {})
    for base in ("floor_aiohttp", "seed_fastapi", "floor_durable"):
        other = peers.get(base, {})
        if tv.get("rps_c32") and other.get("rps_c32"):
            ratios[f"rps_c32_tvbridge_over_{base}"] = round(tv["rps_c32"] / other["rps_c32"], 2)
        if tv.get("p99_ms_c1") and other.get("p99_ms_c1"):
            ratios[f"p99_c1_tvbridge_over_{base}"] = round(tv["p99_ms_c1"] / other["p99_ms_c1"], 2)
    targets = {
        "rps_c32_at_least_0.85x_durable_floor": bool(ratios.get("rps_c32_tvbridge_over_floor_durable", 0) >= 0.85),
        "rps_c32_at_least_1.5x_guide": bool(ratios.get("rps_c32_tvbridge_over_seed_fastapi", 0) >= 1.5),
        "p99_c1_under_2ms": bool(tv.get("p99_ms_c1") is not None and tv["p99_ms_c1"] < 2),
        "peak_rss_under_80mb": bool(tv.get("peak_rss_mb") is not None and tv["peak_rss_mb"] < 80),
    }
    return {"peers": peers, "ratios": ratios, "targets": targets}


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        (
            f"Measured {meta['when']} on {meta['cpus']} cores, Python {meta['python']}, client {meta['client']},"
            f" {meta['requests']} requests per mode, medians of {meta['rounds']} rounds (one run: compare ratios);"
            f" tvbridge: paper broker, journal.synchronous = {meta['journal_synchronous']}, {meta['variant']}."
        ),
        "",
        "| server | req/s at c=32 | p50 ms at c=1 | p99 ms at c=1 | p99 ms at c=32 | peak RSS MB | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer, f in summary["peers"].items():
        lines.append(
            f"| {peer} | {f['rps_c32']} | {f['p50_ms_c1']} | {f['p99_ms_c1']} | {f['p99_ms_c32']} |"
            f" {f['peak_rss_mb']} | {f['non_2xx']} |"
        )
    lines.append("")
    lines.extend(f"- {name}: {value}" for name, value in summary["ratios"].items())
    lines.extend(f"- target {name}: {'met' if ok else 'NOT met'}" for name, ok in summary["targets"].items())
    if summary.get("arrival_to_broker_c1"):
        lines.append(f"- arrival to broker call at c=1 (bench/to_broker.py): {summary['arrival_to_broker_c1']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    peers_dir = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    script = peers_dir / "run_peers.sh"
    if not script.exists():
        print(f"bench: {script} not found (set PEERS_DIR)", file=sys.stderr)
        return 2
    venv = bench_venv()
    synchronous = os.environ.get("BENCH_JOURNAL_SYNC", "normal")
    variant = os.environ.get("BENCH_VARIANT", "")
    if variant not in VARIANTS:
        print(f"bench: BENCH_VARIANT must be one of {sorted(VARIANTS)}", file=sys.stderr)
        return 2
    python = shlex.quote(str(venv / "bin" / "python"))
    command = (
        f"{python} {shlex.quote(str(ROOT / 'bench' / 'without_io.py'))} serve"
        if variant
        else f"{python} -m tvbridge serve"
    )
    env = {
        **os.environ,
        **RAISED_LIMITS,
        **EVERY_HOUR,
        "TVBRIDGE_JOURNAL__SYNCHRONOUS": synchronous,
        "PEERS_ONLY": os.environ.get("PEERS_ONLY", " ".join(PEERS)),
        "TVBRIDGE_CMD": command,
        **VARIANTS[variant],
    }
    sampler = RssSampler()
    sampler.start()
    started = time.monotonic()
    done = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True, check=False)
    sampler.stop.set()
    sampler.join(2)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        print(f"bench: run_peers.sh failed with {done.returncode}", file=sys.stderr)
        return 1
    summary = summarize(rows, sampler)
    to_broker = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "to_broker.py")],
        env={**os.environ, "BENCH_PYTHON": str(venv / "bin" / "python"), "PEERS_DIR": str(peers_dir)},
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = [line for line in to_broker.stdout.splitlines() if line.startswith("{")]
    summary["arrival_to_broker_c1"] = json.loads(lines[-1]) if lines else None
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "client": rows[0].get("client", "?"),
        "requests": os.environ.get("PEERS_N", "10000"),
        "rounds": os.environ.get("PEERS_ROUNDS", "2"),
        "seconds": round(time.monotonic() - started, 1),
        "journal_synchronous": synchronous,
        "variant": variant or "as shipped",
    }
    result = {"meta": meta, **summary, "raw": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"latest-{variant}" if variant else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(summary, meta)
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
