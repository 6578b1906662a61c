"""Two or more tvbridge commits against each other, alternated in one run, with the durable floor beside them.

`bench/run.py` measures one checkout against the peers; this compares commits (A B C A B C ..., the durable
floor once per round), so a change is judged by the ratio within one run on this shared machine, not by
figures from runs an hour apart. Each commit is exported with `git archive` (no worktree is touched) and
installed into a venv of its own under `BENCH_AB_DIR` (default /tmp/tvbridge-ab), reused while the commit is.

    python3 bench/ab.py 37831f3 3bb6040^1 3bb6040^2      # refs or commits of this repository
    AB_ROUNDS=4 PEERS_N=10000 python3 bench/ab.py HEAD main
    AB_ENV_B='TVBRIDGE_X=1' python3 bench/ab.py HEAD HEAD  # one commit twice, the second with extra env

Prints one table (medians over the rounds: req/s at c=32, each req/s over the floor's of the same round, the
server's CPU time per alert at c=32 (all its threads; the steadiest figure when other work shares the cores),
p50/p99 at c=1) and writes every raw line to bench/results/ab-latest.json. Never run from the tests.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from run import EVERY_HOUR, RAISED_LIMITS  # noqa: E402 - the same tvbridge set-up as run.py

WORK = Path(os.environ.get("BENCH_AB_DIR", "/tmp/tvbridge-ab"))  # noqa: S108 - throwaway, overridable


def install(ref: str) -> Path:
    """A venv with `ref` installed (the source exported with `git archive`); returns its python."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    home = WORK / sha[:12]
    python = home / "venv" / "bin" / "python"
    if (home / ".installed").exists():
        return python
    src = home / "src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    subprocess.run(
        [str(home / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(src)], check=True
    )
    (home / ".installed").write_text(sha + "\n")
    return python


def one(peer: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """One round of one peer through run_peers.sh: its latency and throughput lines."""
    peers = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers")).resolve()
    done = subprocess.run(
        ["bash", str(peers / "run_peers.sh")],
        env={**os.environ, **env, "PEERS_ONLY": peer, "PEERS_ROUNDS": "1"},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(refs: list[str]) -> int:
    if not refs:
        print(__doc__, file=sys.stderr)
        return 2
    pythons = {ref: install(ref) for ref in refs}
    rounds = int(os.environ.get("AB_ROUNDS", "2"))
    synchronous = os.environ.get("BENCH_JOURNAL_SYNC", "normal")
    base = {**RAISED_LIMITS, **EVERY_HOUR, "TVBRIDGE_JOURNAL__SYNCHRONOUS": synchronous}
    rows: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        rows.extend({**row, "who": "floor_durable", "ab_round": round_} for row in one("floor_durable", {}))
        for n, ref in enumerate(refs):
            extra = dict(item.split("=", 1) for item in shlex.split(os.environ.get(f"AB_ENV_{chr(ord('A') + n)}", "")))
            env = {**base, **extra, "TVBRIDGE_CMD": f"{shlex.quote(str(pythons[ref]))} -m tvbridge serve"}
            who = f"{chr(ord('A') + n)} {ref}"
            rows.extend({**row, "who": who, "ab_round": round_} for row in one("tvbridge", env))
            print(f"ab: round {round_} {ref} done", file=sys.stderr)
    floor = {r["ab_round"]: r["rps"] for r in rows if r["who"] == "floor_durable" and r.get("mode") == "throughput"}
    print("| who | req/s c=32 | / durable floor | server CPU us/alert c=32 | p50 ms c=1 | p99 ms c=1 | p99 ms c=32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for who in dict.fromkeys(r["who"] for r in rows):
        tput = [r for r in rows if r["who"] == who and r.get("mode") == "throughput"]
        lat = [r for r in rows if r["who"] == who and r.get("mode") == "latency"]
        ratio = statistics.median(r["rps"] / floor[r["ab_round"]] for r in tput)
        cpu = statistics.median(r["server_cpu_pct"] / 100 / r["rps"] * 1e6 for r in tput if r.get("server_cpu_pct"))
        print(
            f"| {who} | {statistics.median(r['rps'] for r in tput):.0f} | {ratio:.3f} | {cpu:.0f} |"
            f" {statistics.median(r['p50_ms'] for r in lat):.3f} | {statistics.median(r['p99_ms'] for r in lat):.2f} |"
            f" {statistics.median(r['p99_ms'] for r in tput):.1f} |"
        )
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "ab-latest.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
