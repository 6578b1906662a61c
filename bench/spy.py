"""Where the wall time goes, without tracing overhead: py-spy sampling `tvbridge serve` loaded at concurrency 32.

    python3 bench/spy.py                        # this checkout's .venv; BENCH_PYTHON: another venv's python
    SPY_SECONDS=20 SPY_RATE=250 python3 bench/spy.py

Starts tvbridge as `bench/run.py` does (paper broker, every guard, journal `normal`, CSV, JSON log file, rate
limits raised, sessions off) in a temporary directory, warms it up, loads it with the peers' `load.py` at c=32
while `py-spy record --format raw --threads` samples it, and prints the inclusive share of the samples of a
list of places (functions named below, matched in each sampled stack) and the threads' shares, and each
thread's CPU time per alert over the sampled window (`/proc`: the checkpointers' cost without sampling bias).
The raw stacks stay in bench/results/spy-latest.txt. Needs py-spy in the venv (`pip install py-spy`). Never run
from the tests.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from run import EVERY_HOUR, RAISED_LIMITS  # noqa: E402 - the same tvbridge set-up as run.py

SECRET = "peers-S3cret-7d1f0c9a2b4e6f8a1c3e5d7b9f0a2c4e"  # noqa: S105 - the peers' benchmark secret (run_peers.sh)
PLACES = (  # (label, regex searched in each frame, "Class.function (file:line)"); inclusive: any frame of a stack
    ("flow.accept (parse, plan, record_plan, executor, answer)", r"^accept \(tvbridge/alerts/flow\.py"),
    ("  executor run", r"^Executor\._run \("),
    ("  paper Book.place", r"^Book\.place \("),
    ("  parse_alert", r"^parse_alert \("),
    ("  make_plan", r"^make_plan \("),
    ("  record_plan", r"record_plan \(tvbridge/journal\.py"),
    ("  answer_in_time (deadline task, wait)", r"^answer_in_time \("),
    ("  check_records (and the halt file)", r"^check_records \("),
    ("  read_halt (any caller)", r"^read_halt \("),
    ("journal commit_group", r"^commit_group \("),
    ("dedupe guard (key, look-up)", r"^deduplicated \("),
    ("  dedupe_key", r"^dedupe_key \("),
    ("  find_by_dedupe_key", r"find_by_dedupe_key \("),
    ("  plugin guard + metrics wrapper (with the plugin's call)", r"^TimedBroker\._timed \("),
    ("structlog lines", r"\(structlog/"),
    ("  log redaction", r"^Redactor\.__call__ \("),
    ("order log append", r"append \(tvbridge/orderlog\.py"),
    ("metrics (prometheus_client)", r"\(prometheus_client/"),
    ("aiohttp finish_response", r"\.finish_response \("),
    ("  of which the transport's write (the send)", r"_send_headers_with_payload \("),
    ("json (any)", r"\(json/"),
    ("checkpointer threads", r"^Checkpointer\.run \("),
)
IDLE = re.compile(r"^(Event\.wait|Condition\.wait|EpollSelector\.select|Thread\._wait_for_tstate_lock|Thread\.join) ")
"""Leaf frames of a thread that waits: py-spy still samples some of them; left out of the shares."""


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id (`/proc/PID/task/TID/stat`)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu[task.name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return cpu


def thread_names(path: Path) -> dict[str, str]:
    """Thread id -> Python thread name, from py-spy's raw lines (`thread (TID): NAME;...`)."""
    names: dict[str, str] = {}
    for match in re.finditer(r"^thread \((\d+)\): ([^;]+);", path.read_text(), flags=re.MULTILINE):
        names[match.group(1)] = match.group(2)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    python = os.environ.get("BENCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    spy = shutil.which("py-spy", path=str(Path(python).parent)) or shutil.which("py-spy")
    if spy is None:
        print("bench/spy.py: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    peers = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    load = [os.environ.get("PEERS_PYTHON", "/tmp/peers-venv/bin/python"), str(peers / "load.py")]  # noqa: S108
    seconds, rate = os.environ.get("SPY_SECONDS", "20"), os.environ.get("SPY_RATE", "250")
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook"
    out = ROOT / "bench" / "results" / "spy-latest.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvbridge-spy-") as work:
        env = {
            **os.environ,
            **RAISED_LIMITS,
            **EVERY_HOUR,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(port),
            "ENABLE_DHAN": "false",
        }
        log = Path(work) / "server.out"
        with log.open("wb") as sink:
            server = subprocess.Popen([python, "-m", "tvbridge", "serve"], cwd=work, env=env, stdout=sink, stderr=sink)
        try:
            subprocess.run([*load, url, "-n", "0", "--wait-health", "30"], check=True)
            subprocess.run([*load, url, "-n", "2000", "-c", "8", "--secret", SECRET], check=True, capture_output=True)
            loader = subprocess.Popen(
                [*load, url, "-n", "1000000", "-c", "32", "--secret", SECRET, "--max-seconds", str(int(seconds) + 5)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)
            cpu_before = thread_cpu_s(server.pid)
            record = [spy, "record", "-r", rate, "-d", seconds, "--format", "raw", "--threads", "-o", str(out)]
            subprocess.run(
                [*record, "--pid", str(server.pid)],
                check=True,
                capture_output=True,
            )
            cpu_after = thread_cpu_s(server.pid)
            figures = json.loads(loader.communicate()[0].strip().splitlines()[-1])
            alerts = figures["rps"] * float(seconds)
            print(f"{figures['rps']} req/s at c=32 while sampled; CPU per alert by thread (us, over ~{alerts:.0f}):")
            names = thread_names(out)
            for tid, after in sorted(cpu_after.items(), key=lambda item: cpu_before.get(item[0], 0.0) - item[1]):
                print(f"  {names.get(tid, tid)}: {(after - cpu_before.get(tid, 0.0)) / alerts * 1e6:.0f}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    report(out)
    return 0


def report(path: Path) -> None:
    total = 0
    hits: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    rules = [(label, re.compile(rx)) for label, rx in PLACES]
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if IDLE.search(frames[-1]):
            continue
        total += count
        threads[frames[0].split(": ", 1)[-1]] += count
        for label, rule in rules:
            if any(rule.search(frame) for frame in frames):
                hits[label] += count
    print(f"{total} samples on CPU (waits left out)")
    print("| where (inclusive) | share of samples |")
    print("| --- | ---: |")
    for label, _ in PLACES:
        print(f"| {label} | {100 * hits[label] / max(total, 1):.1f}% |")
    for thread, count in threads.most_common(5):
        print(f"| thread {thread} | {100 * count / max(total, 1):.1f}% |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":  # `--report FILE`: a saved run again
        report(Path(sys.argv[2]))
    else:
        sys.exit(main())
