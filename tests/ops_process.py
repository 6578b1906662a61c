"""A `python -m tvbridge serve` subprocess for the operations tests, with its stdout in a file.

stdout goes to a file (a pipe could fill up and block the server, and a file keeps every line for the test to
compare with the log file). The port is read from the `server.started` line; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

import attrs

from tvbridge.config import Config

START_TIMEOUT_S = 30.0
QUIET_SESSIONS = {"TVBRIDGE_SESSIONS__ENABLED": "false"} if "sessions" in attrs.fields_dict(Config) else {}
"""Exchange sessions off where this build has them: a server under test places alerts at any hour."""
STOP_TIMEOUT_S = 30.0


class OpsServer:
    def __init__(self, data_dir: Path, env: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TVBRIDGE_", "WEBHOOK_"))},
            "TVBRIDGE_SERVER__HOST": "127.0.0.1",
            "TVBRIDGE_SERVER__PORT": "0",
            "TVBRIDGE_SERVER__DATA_DIR": str(data_dir),
            "TVBRIDGE_LOGGING__FORMAT": "json",
            **QUIET_SESSIONS,
            **env,
        }
        self.stdout = data_dir / "server.stdout"
        self.stderr = data_dir / "server.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpsServer:
        """Start (again: stdout is appended to, and only a new `server.started` line counts)."""
        before = sum(1 for e in self.events() if e.get("event") == "server.started")
        with self.stdout.open("ab") as out, self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tvbridge", "serve"], cwd=self.data_dir, env=self.env, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            started = [e for e in self.events() if e.get("event") == "server.started"]
            if len(started) > before:
                self.port = int(started[-1]["port"])
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server did not start: {self.output()}")

    def stdout_lines(self) -> list[str]:
        if not self.stdout.exists():
            return []
        return [line for line in self.stdout.read_text(encoding="utf-8").splitlines() if line.startswith("{")]

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stdout_lines():
            try:
                found.append(json.loads(line))
            except ValueError:  # a line still being written
                continue
        return found

    def output(self) -> str:
        err = self.stderr.read_text(encoding="utf-8") if self.stderr.exists() else ""
        return "\n".join(self.stdout_lines()) + "\n" + err

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, headers=dict(headers or {}), method=method)  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - loopback only
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def post_json(self, path: str, payload: object) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        return status, headers, json.loads(body or b"null")
