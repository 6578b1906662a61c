"""The JSON log lines a collector ingests: one object per line, ISO UTC timestamps, the alert id bound; the same
lines on stdout; libraries' lines among them; the file followed through logrotate's moves."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
from helpers import SECRET, ClientFactory, alert, with_accounts
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.config import Config, SessionsConfig
from tvbridge.logsetup import configure_logging, reopen_log_files, reset_logging
from tvbridge.secretstore import resolve_credentials


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stdout() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def log_file(tmp_path: Path, stdout: io.StringIO) -> Iterator[Path]:
    """Real logging configuration for one test (JSON to the file and to `stdout`), undone afterwards."""
    path = tmp_path / "webhook_server.log"
    configure_logging(level="info", fmt="json", file=path, secrets=[SECRET], stream=stdout, cache=False)
    yield path
    reset_logging()


def fail(message: str) -> None:
    """A bug whose frame holds the secret (in `message`)."""
    raise RuntimeError(message)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_line_of_a_request_is_json_with_its_alert_id(
    log_file: Path, make_client: ClientFactory, config: Config
) -> None:
    client = await make_client(with_accounts(config, {"s": {"broker": "scripted"}}))
    response = await client.post("/webhook", json=alert())
    alert_id = response.headers["X-Request-ID"]
    request_lines = [line for line in lines(log_file) if line.get("alert_id") == alert_id]
    assert [line["event"] for line in request_lines] == ["alert.done"]  # the access line is at debug
    for line in request_lines:
        assert line["level"] == "info"
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]  # checked just above
    (done,) = request_lines[0]["legs"]
    assert (done["leg"], done["account"], done["broker"], done["status"]) == (1, "s", "scripted", "success")
    assert isinstance(done["latency_ms"], float)


async def test_alert_done_carries_the_access_lines_facts_and_other_requests_keep_it(
    log_file: Path, make_client: ClientFactory, config: Config
) -> None:
    """One info line per placed alert: `alert.done` says what `http.request` said (HTTP status, duration,
    source, method, path); every other request, a refusal or a health check, keeps its `http.request`."""
    client = await make_client(with_accounts(config, {"s": {"broker": "scripted"}}))
    response = await client.post("/webhook", json=alert())
    alert_id = response.headers["X-Request-ID"]
    refused = await client.post("/webhook", json=alert(secret="wrong-secret-0123456789"))
    health = await client.get("/health")
    assert (response.status, refused.status, health.status) == (200, 401, 200)
    every = lines(log_file)
    [done] = [line for line in every if line.get("alert_id") == alert_id]
    assert done["event"] == "alert.done"
    assert (done["http_status"], done["method"], done["path"], done["source"]) == (200, "POST", "/webhook", "127.0.0.1")
    assert done["request_ms"] >= done["since_arrival_ms"] > 0
    access = {line["alert_id"]: line for line in every if line["event"] == "http.request"}
    assert alert_id not in access
    assert access[refused.headers["X-Request-ID"]]["status"] == 401
    assert access[health.headers["X-Request-ID"]]["status"] == 200


async def test_a_queued_alert_writes_one_info_line_with_the_access_lines_facts(
    log_file: Path, aiohttp_client: Any, converter: Any, config: Config
) -> None:
    """An alert queued at a closed market (202) writes one info line, `alert.queued` with the HTTP status,
    duration, source, method and path; its `http.request` is at debug, as for a placed alert."""
    sunday = datetime.fromisoformat("2026-11-29T10:00:00+05:30")
    config = attrs.evolve(with_accounts(config, {"s": {"broker": "scripted"}}), sessions=SessionsConfig())
    client = await aiohttp_client(create_app(config, converter, resolve_credentials(config), clock=lambda: sunday))
    response = await client.post("/webhook", json=alert())
    assert response.status == 202
    alert_id = response.headers["X-Request-ID"]
    [queued] = [line for line in lines(log_file) if line.get("alert_id") == alert_id]
    assert (queued["event"], queued["level"], queued["account"]) == ("alert.queued", "info", "s")
    assert queued["scheduled_at"] == "2026-11-30T09:15:00+05:30"
    assert (queued["http_status"], queued["method"], queued["path"], queued["source"]) == (
        202,
        "POST",
        "/webhook",
        "127.0.0.1",
    )
    assert queued["request_ms"] > 0


def test_secrets_are_redacted_by_key_and_by_value(log_file: Path) -> None:
    log = structlog.get_logger()
    log.warning("test.event", secret="abc", access_token="tok", note=f"the secret is {SECRET}", nested={"token": "x"})
    (line,) = [x for x in lines(log_file) if x["event"] == "test.event"]
    assert line["secret"] == "[redacted]"
    assert line["access_token"] == "[redacted]"
    assert line["nested"] == {"token": "[redacted]"}
    assert line["note"] == "the secret is [redacted]"
    assert SECRET not in log_file.read_text()


def test_secrets_inside_nested_values_are_redacted(log_file: Path) -> None:
    """A line with nested values (`alert.done` and its legs) is cleaned at any depth, by key and by value; a line
    with nothing to clean is written as it came."""
    log = structlog.get_logger()
    log.info("test.value", legs=[{"leg": 1, "message": "filled"}, {"leg": 2, "message": f"broker said {SECRET}"}])
    log.info("test.key", legs=[{"leg": 1, "detail": {"access_token": "tok"}}])
    log.info("test.tuple", pair=("a", f"x{SECRET}"))
    log.info("test.clean", legs=[{"leg": 1, "message": "filled", "latency_ms": 0.4}], warnings=None)
    every = {x["event"]: x for x in lines(log_file)}
    assert every["test.value"]["legs"] == [
        {"leg": 1, "message": "filled"},
        {"leg": 2, "message": "broker said [redacted]"},
    ]
    assert every["test.key"]["legs"] == [{"leg": 1, "detail": {"access_token": "[redacted]"}}]
    assert every["test.tuple"]["pair"] == ["a", "x[redacted]"]
    assert every["test.clean"]["legs"] == [{"leg": 1, "message": "filled", "latency_ms": 0.4}]
    assert SECRET not in log_file.read_text()


def test_console_format_for_a_terminal_json_otherwise(tmp_path: Path) -> None:
    try:
        tty = Tty()
        configure_logging(level="info", fmt="auto", file=None, stream=tty, cache=False)
        structlog.get_logger().info("server.started", port=1)
        assert not tty.getvalue().startswith("{")
        assert "server.started" in tty.getvalue()
        pipe = io.StringIO()
        configure_logging(level="info", fmt="auto", file=None, stream=pipe, cache=False)
        structlog.get_logger().info("server.started", port=1)
        assert json.loads(pipe.getvalue())["event"] == "server.started"
    finally:
        reset_logging()


async def test_a_traceback_never_carries_a_secret(log_file: Path, aiohttp_client: Any) -> None:
    """A bug whose frame holds the secret logs its traceback without frame locals, and redacted."""
    from aiohttp import web  # noqa: PLC0415 - only here

    from tvbridge.middlewares.errors import errors  # noqa: PLC0415 - only here
    from tvbridge.middlewares.request_id import request_id  # noqa: PLC0415 - only here

    async def broken(_: web.Request) -> web.Response:
        expected = SECRET
        raise RuntimeError("boom " + expected[:0])

    app = web.Application(middlewares=[request_id(), errors()])
    app.router.add_post("/x", broken)
    client = await aiohttp_client(app)
    assert (await client.post("/x")).status == 500
    (failed,) = [x for x in lines(log_file) if x["event"] == "request.failed"]
    assert failed["exception"][0]["exc_type"] == "RuntimeError"
    assert SECRET not in log_file.read_text()


def test_plugin_secret_keys_are_redacted_by_name(log_file: Path) -> None:
    """Keys a plugin may use for secrets (client_secret, refresh_token, api_key) are redacted too."""
    structlog.get_logger().info("test.keys", client_secret="a", refresh_token="b", api_key="c", dedupe_key="d")
    (line,) = [x for x in lines(log_file) if x["event"] == "test.keys"]
    assert [line[k] for k in ("client_secret", "refresh_token", "api_key")] == ["[redacted]"] * 3
    assert line["dedupe_key"] == "d"


def test_stdout_gets_the_same_json_lines_as_the_file(log_file: Path, stdout: io.StringIO) -> None:
    """Both outputs take JSON: each line is the same text in the file and on stdout, there as soon as logged."""
    log = structlog.get_logger()
    log.info("test.first", n=1)
    log.warning("test.second", n=2)
    assert log_file.read_text().splitlines() == stdout.getvalue().splitlines()
    assert [line["event"] for line in lines(log_file)] == ["test.first", "test.second"]


def test_a_library_line_is_a_redacted_json_line(log_file: Path, stdout: io.StringIO) -> None:
    """A library logging through the standard library (dhanhq, aiohttp) gets the events' JSON line in the file
    and on stdout: level, UTC timestamp, its message as `event`, the traceback without locals, redacted."""
    library = logging.getLogger("dhanhq")
    library.debug("below the configured level")
    library.warning("token %s refused", SECRET)
    try:
        fail(f"bad token {SECRET}")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")

    warned, failed = lines(log_file)
    assert (warned["event"], warned["level"]) == ("token [redacted] refused", "warning")
    assert datetime.fromisoformat(warned["timestamp"]).utcoffset() is not None
    assert (failed["event"], failed["level"]) == ("Error handling request", "error")
    (exception,) = failed["exception"]
    assert (exception["exc_type"], exception["exc_value"]) == ("RuntimeError", "bad token [redacted]")
    assert all("locals" not in frame for frame in exception["frames"])
    assert SECRET not in log_file.read_text()
    assert stdout.getvalue() == log_file.read_text()


def test_a_move_without_a_signal_goes_on_in_a_new_file(log_file: Path) -> None:
    """logrotate moved the file and sent no signal: lines go on in the moved file until the next check (at most
    `MOVE_CHECK_S` later), then in a new file at the old path; none is lost or written twice."""
    log = structlog.get_logger()
    log.info("test.line", n=0)
    moved = log_file.with_name("webhook_server.log.1")
    log_file.rename(moved)
    n = 0
    deadline = time.monotonic() + 10
    while not log_file.exists():
        assert time.monotonic() < deadline, "the move was not noticed"
        n += 1
        log.info("test.line", n=n)
    log.info("test.line", n=n + 1)

    old, new = [line["n"] for line in lines(moved)], [line["n"] for line in lines(log_file)]
    assert old + new == list(range(n + 2))
    assert new[-2:] == [n, n + 1]  # the line that noticed the move, and the next


def test_sighup_reopens_the_moved_file_at_once(log_file: Path) -> None:
    """SIGHUP after logrotate's move: the next line is in the new file; a file still in place stays as it is."""
    log = structlog.get_logger()
    log.info("test.before")
    assert reopen_log_files() == [str(log_file)]  # not moved: the same file goes on
    log.info("test.still")
    moved = log_file.with_name("webhook_server.log.1")
    log_file.rename(moved)
    assert reopen_log_files() == [str(log_file)]
    assert log_file.exists()
    log.info("test.after")
    assert [line["event"] for line in lines(moved)] == ["test.before", "test.still"]
    assert [line["event"] for line in lines(log_file)] == ["test.after"]


def open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        try:
            found.add(str(fd.readlink()))
        except OSError:  # the descriptor listing the directory itself is gone by now
            continue
    return found


def test_configuring_again_and_resetting_close_the_log_files(tmp_path: Path) -> None:
    """Tests configure logging several times in one process: each time the previous file is closed, and
    `reset_logging()` closes the last one."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    try:
        configure_logging(level="info", fmt="json", file=first, stream=io.StringIO(), cache=False)
        structlog.get_logger().info("test.first")
        assert str(first) in open_files()
        configure_logging(level="info", fmt="json", file=second, stream=io.StringIO(), cache=False)
        structlog.get_logger().info("test.second")
        assert str(first) not in open_files()
        assert [line["event"] for line in lines(second)] == ["test.second"]
    finally:
        reset_logging()
    assert str(second) not in open_files()
    assert logging.getLogger().handlers == []


def test_a_terminal_gets_console_text_and_the_file_json(tmp_path: Path) -> None:
    """stdout on a terminal: the console format there, with a plain-text traceback; the file still gets the JSON
    line with the traceback as frames. Both redacted."""
    tty, path = Tty(), tmp_path / "webhook_server.log"
    try:
        configure_logging(level="info", fmt="auto", file=path, secrets=[SECRET], stream=tty, cache=False)
        try:
            fail(f"boom {SECRET}")
        except RuntimeError:
            structlog.get_logger().exception("test.failed", note=SECRET)
        logging.getLogger("asyncio").error("library line")
    finally:
        reset_logging()
    failed, library = lines(path)
    assert (failed["event"], failed["note"], failed["level"]) == ("test.failed", "[redacted]", "error")
    assert failed["exception"][0]["exc_value"] == "boom [redacted]"
    assert library["event"] == "library line"
    console = tty.getvalue()
    assert not console.startswith("{")
    assert "test.failed" in console
    assert "RuntimeError: boom [redacted]" in console
    assert "library line" in console
    assert SECRET not in console
    assert SECRET not in path.read_text()


def test_secrets_in_lists_and_tuples_are_redacted(log_file: Path) -> None:
    """A configured secret inside nested lists, tuples and dicts is replaced; tuples are written as lists."""
    structlog.get_logger().info("test.nested", items=[{"note": f"x{SECRET}x"}, (SECRET, 1)], by_id={1: SECRET})
    (line,) = lines(log_file)
    assert line["items"] == [{"note": "x[redacted]x"}, ["[redacted]", 1]]
    assert line["by_id"] == {"1": "[redacted]"}


def test_a_value_json_cannot_hold_does_not_fail_the_caller(log_file: Path) -> None:
    """A dict with tuple keys cannot be JSON: the call still returns and the line is written, that value as
    its repr."""
    structlog.get_logger().info("test.odd", table={(1, 2): "x"}, n=1)
    (line,) = lines(log_file)
    assert (line["event"], line["table"], line["n"]) == ("test.odd", "{(1, 2): 'x'}", 1)


def test_capture_logs_still_captures_with_logging_configured(log_file: Path) -> None:
    """structlog's `capture_logs` (used by many tests) sees the events, with the real configuration in place."""
    with capture_logs() as events:
        structlog.get_logger().info("test.captured", n=1)
    assert events == [{"event": "test.captured", "n": 1, "log_level": "info"}]
    structlog.get_logger().info("test.written")
    assert [line["event"] for line in lines(log_file)] == ["test.written"]


def test_a_closed_stdout_costs_neither_the_file_nor_another_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout closed under the logger: the line still reaches the log file, the failure is said on stderr, the
    call returns, and a file opened since (which may get the closed descriptor's number) gets nothing."""
    path, stdout = tmp_path / "webhook_server.log", (tmp_path / "stdout.log").open("w")
    try:
        configure_logging(level="info", fmt="json", file=path, stream=stdout, cache=False)
        structlog.get_logger().info("test.before")
        stdout.close()
        with (tmp_path / "other.txt").open("w") as other:
            other.write("")
            structlog.get_logger().info("test.after")
    finally:
        reset_logging()
    assert (tmp_path / "other.txt").read_text() == ""
    assert [line["event"] for line in lines(path)] == ["test.before", "test.after"]
    assert [json.loads(line)["event"] for line in (tmp_path / "stdout.log").read_text().splitlines()] == ["test.before"]
    assert "could not be written to stdout" in capsys.readouterr().err
