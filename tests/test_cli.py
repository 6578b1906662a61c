"""The `tvbridge` command as a user runs it: a real process, real signals, real files."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
from pathlib import Path

import pytest
from helpers import alert, leg
from server_process import ServerProcess, run_cli

GUIDE_SECRET = "guide-env-secret-0123456789"


def test_first_run_generates_a_secret_and_never_prints_it(tmp_path: Path) -> None:
    """No secret anywhere: one is generated (mode 0600), the console points at the file, not at the value."""
    server = ServerProcess(
        tmp_path, {"TVBRIDGE_ROUTING__ACCOUNTS": '["s"]', "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted"}
    ).start()
    secret_file = tmp_path / "webhook_secret.txt"
    secret = secret_file.read_text().strip()
    try:
        assert len(secret) >= 32
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        status, _, body = server.post("/webhook", json.dumps(alert(secret=secret)).encode())
        assert status == 200
        assert body["status"] == "success"
    finally:
        assert server.stop() == 0
    assert f"generated a strong webhook secret in {secret_file}" in server.stderr
    assert '"alertType": "multi_leg_order"' in server.stderr  # the template to paste
    everything = (
        server.output + (tmp_path / "webhook_server.log").read_text() + (tmp_path / "webhook_orders.csv").read_text()
    )
    assert secret not in everything


def test_guide_environment_sigterm_and_records(tmp_path: Path) -> None:
    """Started like the guide's server (env vars, empty dir): alerts work, SIGTERM exits 0, records are flushed."""
    env = {
        "WEBHOOK_SECRET": GUIDE_SECRET,
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": "0",
        "ENABLE_DHAN": "false",
        "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
        "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
    }
    server = ServerProcess(tmp_path, env).start()
    try:
        status, headers, body = server.post(
            "/webhook",
            json.dumps(alert(leg(symbol="TCS"), secret=GUIDE_SECRET)).encode(),
            {"Content-Type": "text/plain"},
        )
        assert status == 200
        assert headers["X-Request-ID"] == body["alert_id"]
        assert server.get("/health")[0] == 200
        assert server.get("/")[2] == {"service": "tvbridge", "version": "0.1.0", "status": "running"}
        assert server.post("/webhook", json.dumps(alert(secret="nope")).encode())[0] == 401
    finally:
        assert server.stop(signal.SIGTERM) == 0
    rows = (tmp_path / "webhook_orders.csv").read_text().splitlines()
    assert len(rows) == 2
    assert body["alert_id"] in rows[1]
    with sqlite3.connect(tmp_path / "tvbridge.sqlite3") as db:
        assert db.execute("SELECT status FROM alerts WHERE alert_id = ?", (body["alert_id"],)).fetchone() == (
            "success",
        )
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    log_lines = [json.loads(x) for x in (tmp_path / "webhook_server.log").read_text().splitlines()]
    assert {"server.started", "alert.done", "server.stopped"} <= {x["event"] for x in log_lines}
    assert [leg["status"] for x in log_lines if x["event"] == "alert.done" for leg in x["legs"]] == ["success"]
    assert GUIDE_SECRET not in server.output + (tmp_path / "webhook_server.log").read_text()


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    env = {
        "WEBHOOK_SECRET": GUIDE_SECRET,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
        "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
    }
    server = ServerProcess(tmp_path, env).start()
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.output


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[server]\nport = "eighty"\n')
    result = run_cli(tmp_path, {}, "serve")
    assert result.returncode == 2
    assert result.stderr == "tvbridge: config error: server.port: must be a whole number, got 'eighty'\n"
    result = run_cli(tmp_path, {"TVBRIDGE_CONFIG": str(tmp_path / "missing.toml")}, "check-config")
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_broker_plugin_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        {
            "WEBHOOK_SECRET": GUIDE_SECRET,
            "TVBRIDGE_ROUTING__ACCOUNTS": '["x"]',
            "TVBRIDGE_ACCOUNTS__X__BROKER": "nosuchbroker",
        },
        "serve",
    )
    assert result.returncode == 2
    assert "account 'x': no broker plugin named 'nosuchbroker' is installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    env = {
        "WEBHOOK_SECRET": GUIDE_SECRET,
        "DHAN_CLIENT_ID": "1100000001",
        "DHAN_ACCESS_TOKEN": "dhan-token-XYZ",
        "TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]',
    }
    result = run_cli(tmp_path, env, "check-config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["auth"]["secret"] == "********"
    assert shown["accounts"]["dhan"]["access_token"] == "********"
    assert shown["accounts"]["dhan"]["client_id"] == "1100000001"
    assert GUIDE_SECRET not in result.stdout + result.stderr
    assert "dhan-token-XYZ" not in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_boolean_key_ending_in_token_is_a_boolean_shown_unmasked(tmp_path: Path, value: str) -> None:
    """`metrics.require_token` ends like a secret's name but is a switch: from the environment it is read as
    true/false (it was kept as text and refused) and `check-config` shows it, not `********`."""
    env = {"WEBHOOK_SECRET": GUIDE_SECRET, "TVBRIDGE_METRICS__REQUIRE_TOKEN": value}
    result = run_cli(tmp_path, env, "check-config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["require_token"] is (value == "true")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TVBRIDGE_NOTIFY__URLS": '["this is not a url"]'}, "notify.urls: an entry is not a URL apprise knows"),
        (
            {"WEBHOOK_SECRET": "GTcl4", "TVBRIDGE_ACCOUNTS__SIM__LIVE": "true"},
            "auth.secret is a well-known default",
        ),
    ],
    ids=["notification url from the environment", "weak secret with a live account"],
)
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    """What stops `serve` stops `check-config` too, with the same line and exit code 2: a notification URL
    apprise does not know (here from the environment), a weak secret with a live account."""
    env = {
        "WEBHOOK_SECRET": GUIDE_SECRET,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["sim"]',
        "TVBRIDGE_ACCOUNTS__SIM__BROKER": "scripted",
        **env,
    }
    results = [run_cli(tmp_path, env, command) for command in ("check-config", "serve")]
    for result in results:
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert results[0].stderr == results[1].stderr


def test_secret_command_points_at_the_file(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {}, "secret")
    assert result.returncode == 0
    path = tmp_path / "webhook_secret.txt"
    assert f"The webhook secret is in {path}" in result.stdout
    old = path.read_text()
    assert old.strip() not in result.stdout
    rotated = run_cli(tmp_path, {}, "secret", "--rotate")
    assert rotated.returncode == 0
    assert path.read_text() != old


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {}, "--version")
    assert result.returncode == 0
    assert result.stdout == "tvbridge 0.1.0\n"


def test_weak_secret_refused_for_live_accounts(tmp_path: Path) -> None:
    """The guide's GTcl4 is refused the moment a live account is configured."""
    env = {"WEBHOOK_SECRET": "GTcl4", "DHAN_CLIENT_ID": "1", "DHAN_ACCESS_TOKEN": "t", "ENABLE_DHAN": "true"}
    result = run_cli(tmp_path, env, "serve")
    assert result.returncode == 2
    assert "auth.secret is a well-known default; live trading (dhan) needs a strong secret" in result.stderr


def test_a_second_server_on_the_same_sqlite_journal_refuses_to_start(tmp_path: Path) -> None:
    """Two servers on one SQLite journal would each recover the other's alerts in flight, and a resend landing
    on the second could be placed twice: the second one exits with one clear line, the first keeps serving,
    and the lock goes with the first process, even when it is killed."""
    env = {
        "WEBHOOK_SECRET": GUIDE_SECRET,
        "TVBRIDGE_ROUTING__ACCOUNTS": '["s"]',
        "TVBRIDGE_ACCOUNTS__S__BROKER": "scripted",
    }
    first = ServerProcess(tmp_path, env).start()
    try:
        second = run_cli(tmp_path, {**env, "TVBRIDGE_SERVER__PORT": "0"}, "serve")
        assert second.returncode == 1
        assert "another tvbridge server is using the journal" in second.stderr
        assert GUIDE_SECRET not in second.stdout + second.stderr
        status, _, body = first.post("/webhook", json.dumps(alert(leg(symbol="TCS"), secret=GUIDE_SECRET)).encode())
        assert (status, body["status"]) == (200, "success")
    finally:
        first.kill()
    after_kill = ServerProcess(tmp_path, env).start()  # kill -9 released the lock
    assert after_kill.stop() == 0
