"""Running `python -m tvbridge serve` as a real subprocess for tests: start, find the port, stop with a signal.

The port is read from the `server.started` JSON line on stdout (the server binds port 0). Every wait is
bounded; a server that does not come up within the limit fails the test with what it printed.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import IO, Any

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


class ServerProcess:
    def __init__(
        self, cwd: Path, env: dict[str, str], args: list[str] | None = None, *, descriptor_limit: int | None = None
    ) -> None:
        """`descriptor_limit`: the server's RLIMIT_NOFILE soft limit (as `LimitNOFILE` or `ulimit -n` would set)."""
        self.cwd = cwd
        self.descriptor_limit = descriptor_limit
        self.env = {
            **os.environ,
            "TVBRIDGE_LOGGING__FORMAT": "json",
            "TVBRIDGE_SERVER__PORT": "0",
            "TVBRIDGE_SERVER__HOST": "127.0.0.1",
            # the machine's clock decides here: without this, a run at night would queue instead of place
            "TVBRIDGE_SESSIONS__ENABLED": "false",
            **env,
        }
        self.args = args or ["serve"]
        self.stdout_lines: list[str] = []
        self.stderr = ""
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._started = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tvbridge", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self._limit_descriptors if self.descriptor_limit else None,  # noqa: PLW1509 - before exec
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        if not self._started.wait(START_TIMEOUT_S):
            self.kill()
            msg = f"server did not start within {START_TIMEOUT_S} s: {self.stdout_lines} {self.stderr}"
            raise AssertionError(msg)
        return self

    def _limit_descriptors(self) -> None:
        assert self.descriptor_limit is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.descriptor_limit, hard))

    def _read_stderr(self, stream: IO[str]) -> None:
        self.stderr += stream.read()

    def _read_stdout(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.stdout_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "server.started":
                self.port = int(event["port"])
                self._started.set()
        self._started.set()  # stdout closed: the process ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method="POST")  # noqa: S310 - loopback
        return _send(request)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        request = urllib.request.Request(self.url + path, headers=headers or {})  # noqa: S310 - loopback
        return _send(request)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self._proc is not None
        self._proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        assert self._proc is not None
        # stdout is the reader thread's alone: communicate() would race it for the last lines (and drop them)
        assert self._proc.stderr is not None
        stderr = threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True)
        stderr.start()
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=STOP_TIMEOUT_S)
            raise
        finally:
            stderr.join(timeout=STOP_TIMEOUT_S)
            if self._reader is not None:
                self._reader.join(timeout=STOP_TIMEOUT_S)
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
        return self._proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self.wait()

    @property
    def output(self) -> str:
        return "".join(self.stdout_lines) + self.stderr

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stdout_lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found


def _send(request: urllib.request.Request) -> tuple[int, dict[str, Any], Any]:
    import urllib.error  # noqa: PLC0415 - only here

    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tvbridge", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
