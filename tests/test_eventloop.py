"""`server.event_loop`: `tvbridge serve` runs on uvloop when it is installed (less CPU per alert, issue 22), on
asyncio's own loop when asked or when uvloop is missing, and refuses to start if uvloop is demanded but missing."""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest
from helpers import alert, leg
from server_process import ServerProcess, run_cli

from tvbridge.cli import main
from tvbridge.errors import ConfigError
from tvbridge.eventloop import loop_factory

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "event-loop-secret-0123456789"
ENV = {
    "WEBHOOK_SECRET": SECRET,
    "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
    "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
}


def started_line(server: ServerProcess) -> dict[str, object]:
    lines = [json.loads(line) for line in server.stdout_lines if line.startswith("{")]
    [started] = [line for line in lines if line.get("event") == "server.started"]
    assert isinstance(started, dict)
    return started


@pytest.mark.parametrize(("choice", "expected"), [(None, "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_serve_runs_on_the_chosen_loop_and_places_alerts(tmp_path: Path, choice: str | None, expected: str) -> None:
    """The default is uvloop (installed with tvbridge here); either loop serves an alert, answers 200 with it
    placed, and stops cleanly on SIGTERM."""
    env = ENV if choice is None else {**ENV, "TVBRIDGE_SERVER__EVENT_LOOP": choice}
    server = ServerProcess(tmp_path, env).start()
    try:
        status, _, body = server.post("/webhook", json.dumps(alert(leg(symbol="TCS"), secret=SECRET)).encode())
        assert status == 200
        assert [r["status"] for r in body["results"]] == ["success"]
        assert started_line(server)["event_loop"] == expected
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.output


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop missing (Windows, or not installed): `auto` takes asyncio's loop; `uvloop` is a config error
    naming the key, not a silent fallback."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert loop_factory("auto") is None
    assert loop_factory("asyncio") is None
    with pytest.raises(ConfigError, match=r'server\.event_loop = "uvloop" but uvloop is not installed'):
        loop_factory("uvloop")


def test_a_bad_event_loop_value_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {**ENV, "TVBRIDGE_SERVER__EVENT_LOOP": "trio"}, "serve")
    assert result.returncode == 2
    assert "server.event_loop" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_a_demanded_uvloop_that_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` answers what `serve` would: exit 2 naming the key, not "config ok"."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.chdir(tmp_path)
    for name, value in {**ENV, "TVBRIDGE_SERVER__EVENT_LOOP": "uvloop"}.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert 'server.event_loop = "uvloop" but uvloop is not installed' in err
    assert "config ok" not in err
