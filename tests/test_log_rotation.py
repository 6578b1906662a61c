"""The log file survives logrotate: a real server process, its file moved away twice while alerts arrive.

logrotate's default is move-and-create, then `postrotate kill -HUP`. tvbridge notices a move by itself: before a
line, at most every `MOVE_CHECK_S` (0.1 s), it compares the path with its open file, so the lines written until
then still go to the moved file and the first line after the check creates the new one; SIGHUP reopens at once.
Either way no line may be lost or written twice: the JSON lines of all the files together are exactly the lines
written to stdout, each alert processed once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from helpers import SECRET, alert, leg
from ops_process import OpsServer

WAIT_S = 10.0


def post_alerts(server: OpsServer, count: int, start: int) -> list[str]:
    ids = []
    for n in range(start, start + count):
        status, headers, body = server.post_json("/webhook", alert(leg(quantity=str(n + 1))))
        assert status == 200, body
        ids.append(headers["X-Request-ID"])
    return ids


def post_until_created(server: OpsServer, path: Path, start: int) -> list[str]:
    """Alerts, one at a time, until the server has noticed the move by itself and created `path` again."""
    ids: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not created again within {WAIT_S} s of alerts"
        ids += post_alerts(server, 1, start + len(ids))
    return ids


def json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_event(path: Path, event: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and any(json.loads(line)["event"] == event for line in json_lines(path)):
            return
        time.sleep(0.02)
    raise AssertionError(f"{event} did not appear in {path} within {WAIT_S} s")


def test_moving_the_log_file_loses_and_repeats_no_line(tmp_path: Path) -> None:
    """A move without a signal (noticed by the server's own check) and a move followed by SIGHUP (reopened at
    once): the three files hold every line stdout got, once, and every alert's `alert.done` line once."""
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "TVBRIDGE_RATE_LIMIT__ENABLED": "false",
        "TVBRIDGE_DEDUPE__ENABLED": "false",
    }
    log = tmp_path / "webhook_server.log"
    server = OpsServer(tmp_path, env).start()
    try:
        ids = post_alerts(server, 15, 0)
        log.rename(tmp_path / "webhook_server.log.1")  # no signal: lines go to the moved file until the check
        ids += post_until_created(server, log, len(ids))
        ids += post_alerts(server, 15, len(ids))
        (tmp_path / "webhook_server.log.1").rename(tmp_path / "webhook_server.log.2")
        log.rename(tmp_path / "webhook_server.log.1")
        server.signal(signal.SIGHUP)
        wait_for_event(log, "log.reopened")
        ids += post_alerts(server, 15, len(ids))
    finally:
        assert server.stop() == 0, server.output()

    files = [tmp_path / "webhook_server.log.2", tmp_path / "webhook_server.log.1", log]
    written = [line for path in files for line in json_lines(path)]
    assert all(json_lines(path) for path in files)  # each file got lines
    assert len(written) == len(set(written)), "a line was written twice"
    stdout = server.stdout_lines()
    assert sorted(written) == sorted(stdout), "the files and stdout differ: a line was lost"
    events: list[dict[str, Any]] = [json.loads(line) for line in written]
    processed = [e["alert_id"] for e in events if e["event"] == "alert.done"]
    assert sorted(processed) == sorted(ids)
    assert events[-1]["event"] == "server.stopped"
    assert SECRET not in "\n".join(written)
