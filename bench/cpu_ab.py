"""Two commits' server CPU per alert, in short bursts alternated between two servers running side by side.

`bench/ab.py` starts each commit's server afresh for every round (~40 s each, with the durable floor): on a
machine shared with other engineers' test suites its rounds move by more than a cut of 3-5% (issue 22's last
sessions: the durable floor's own CPU per alert moved 213-317 us between rounds). Here both commits' `tvbridge
serve` run at once, set up as `bench/run.py` sets one up (paper, every guard, journal `normal`, CSV, JSON log
file, rate limits raised, sessions off), warmed up; then bursts of alerts at concurrency 32 (the peers' `load.py`,
wrk) go to A, B, B, A, A, B ... (each pair in both orders), and each burst's CPU per alert is read from `/proc`
(every thread of the server, user + system) over the alerts the burst sent. A pair of bursts is seconds apart,
so the other work on the machine weighs on both alike; the figure is the median of the paired differences.

    python3 bench/cpu_ab.py 2305f11 HEAD                  # refs of this repository (installed as ab.py does)
    CPU_AB_PAIRS=12 CPU_AB_N=3000 python3 bench/cpu_ab.py main HEAD

Prints each pair, the medians and the median paired difference; writes bench/results/cpu-ab-latest.json.
Never run from the tests.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from ab import install  # noqa: E402 - one venv per commit, shared with ab.py
from run import EVERY_HOUR, RAISED_LIMITS  # noqa: E402 - the same tvbridge set-up as run.py

SECRET = "peers-S3cret-7d1f0c9a2b4e6f8a1c3e5d7b9f0a2c4e"  # noqa: S105 - the peers' benchmark secret (run_peers.sh)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of `pid` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(refs: list[str]) -> int:
    if len(refs) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    pairs = int(os.environ.get("CPU_AB_PAIRS", "10"))
    n = int(os.environ.get("CPU_AB_N", "3000"))
    peers = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    load = [os.environ.get("PEERS_PYTHON", "/tmp/peers-venv/bin/python"), str(peers / "load.py")]  # noqa: S108
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for ref in refs:
                python = install(ref)
                port = free_port()
                home = Path(tmp) / ref.replace("/", "_")
                home.mkdir()
                env = {
                    **os.environ,
                    **RAISED_LIMITS,
                    **EVERY_HOUR,
                    "TVBRIDGE_JOURNAL__SYNCHRONOUS": os.environ.get("BENCH_JOURNAL_SYNC", "normal"),
                    "WEBHOOK_SECRET": SECRET,
                    "WEBHOOK_HOST": "127.0.0.1",
                    "WEBHOOK_PORT": str(port),
                    "ENABLE_DHAN": "false",
                }
                with (home / "server.out").open("wb") as out:
                    process = subprocess.Popen(
                        [str(python), "-m", "tvbridge", "serve"], cwd=home, env=env, stdout=out, stderr=out
                    )
                url = f"http://127.0.0.1:{port}/webhook"
                servers[ref] = (process, url)
                base = [*load, url, "--client", "wrk", "--secret", SECRET, "--max-seconds", "60"]
                subprocess.run([*base, "-n", "0", "--wait-health", "30"], check=True, capture_output=True)
                subprocess.run([*base, "-n", "2000", "-c", "32"], check=True, capture_output=True)
            found: dict[str, list[float]] = {ref: [] for ref in refs}
            rps: dict[str, list[float]] = {ref: [] for ref in refs}
            for pair in range(pairs):
                order = refs if pair % 2 == 0 else refs[::-1]
                for ref in order:
                    process, url = servers[ref]
                    before = cpu_s(process.pid)
                    done = subprocess.run(
                        [*load, url, "--client", "wrk", "--secret", SECRET, "-n", str(n), "-c", "32"],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    spent = cpu_s(process.pid) - before
                    line = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("{")))
                    if line.get("non_2xx") or line.get("errors"):
                        raise RuntimeError(f"{ref}: {line}")
                    found[ref].append(spent / line["responses"] * 1e6)
                    rps[ref].append(line["rps"])
                a, b = found[refs[0]][-1], found[refs[1]][-1]
                print(f"pair {pair + 1}: {refs[0]} {a:.0f} us, {refs[1]} {b:.0f} us ({b - a:+.0f})", flush=True)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
            for process, _ in servers.values():
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    a, b = (found[ref] for ref in refs)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    summary = {
        "refs": refs,
        "alerts_per_burst": n,
        "cpu_us_per_alert": found,
        "rps": rps,
        "median_cpu_us": {ref: round(statistics.median(found[ref]), 1) for ref in refs},
        "median_paired_difference_us": round(statistics.median(diffs), 1),
        "b_lower_in": f"{sum(d < 0 for d in diffs)} of {len(diffs)} pairs",
        "load_average": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in {"cpu_us_per_alert", "rps"}}))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "cpu-ab-latest.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(shlex.join(["# wrote", str(ROOT / "bench" / "results" / "cpu-ab-latest.json")]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
