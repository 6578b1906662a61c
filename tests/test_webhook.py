"""POST /webhook through the real server: status codes, bodies, the orders a broker got, the order log."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers import SECRET, ClientFactory, alert, leg, refusing_writes, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.config import AlertsConfig, Config, RiskConfig
from tvbridge.keys import JOURNAL
from tvbridge.orderlog import COLUMNS, GUIDE_COLUMNS


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def orders_received(config: Config, account: str = "s") -> list[dict[str, Any]]:
    path = config.data_path(f"scripted-{account}.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def order_log(config: Config) -> list[dict[str, str]]:
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
async def test_alert_is_placed_whatever_the_content_type(
    make_client: ClientFactory, config: Config, content_type: str | None
) -> None:
    """TradingView sends text/plain or application/json; curl may send none. All three work."""
    config = scripted(config)
    client = await make_client(config)
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/webhook", data=json.dumps(alert()).encode(), headers=headers)
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "success"
    assert body["message"] == "Processed 1 order leg(s)"
    assert body["alertType"] == "multi_leg_order"
    assert body["alert_id"] == response.headers["X-Request-ID"]
    (result,) = body["results"]
    assert result | {"order_id": None} == {
        "leg_number": 1,
        "symbol": "RELIANCE",
        "transaction": "B",
        "quantity": "10",
        "status": "success",
        "message": "filled",
        "order_id": None,
        "account": "s",
        "broker": "scripted",
        "client_order_id": f"{body['alert_id']}-1",
        "order_state": "filled",
    }
    assert orders_received(config) == [
        {
            "client_order_id": f"{body['alert_id']}-1",
            "order_id": result["order_id"],
            "symbol": "RELIANCE",
            "side": "B",
            "quantity": 10,
            "exchange": "NSE",
            "instrument": "EQ",
            "product": "C",
        }
    ]


async def test_order_log_has_the_guides_columns_first(make_client: ClientFactory, config: Config) -> None:
    """webhook_orders.csv: the guide's twelve columns in its order, then ours; one row per leg."""
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="3")))
    alert_id = (await response.json())["alert_id"]
    header = config.data_path("webhook_orders.csv").read_text().splitlines()[0].split(",")
    assert header[:12] == list(GUIDE_COLUMNS)
    assert header == list(COLUMNS)
    (row,) = order_log(config)
    assert row["alert_type"] == "multi_leg_order"
    assert (row["symbol"], row["exchange"], row["transaction"], row["quantity"]) == ("INFY", "NSE", "B", "3")
    assert (row["order_type"], row["product_type"], row["price"], row["status"]) == ("MKT", "C", "0", "success")
    assert row["alert_id"] == alert_id
    assert row["leg_number"] == "1"
    assert row["account"] == "s"
    assert datetime.fromisoformat(row["timestamp"]).tzinfo is not None


async def test_order_log_cells_cannot_run_as_formulas(make_client: ClientFactory, config: Config) -> None:
    """A symbol like =HYPERLINK(...) is written as text, not as a spreadsheet formula."""
    config = scripted(config, reject_symbols=["=HYPERLINK(1)"])
    client = await make_client(config)
    await client.post("/webhook", json=alert(leg(symbol="=HYPERLINK(1)")))
    (row,) = order_log(config)
    assert row["symbol"] == "'=HYPERLINK(1)"
    assert row["status"] == "failed"
    assert not any(value.startswith(("=", "+", "-", "@")) for value in row.values())


async def test_failed_leg_skips_the_later_legs(make_client: ClientFactory, config: Config) -> None:
    """A half-placed bracket is worse than none: after a failed leg, the later legs are not sent."""
    config = scripted(config, reject_symbols=["BAD"])
    client = await make_client(config)
    legs = [leg(symbol="GOOD", sort_order="1"), leg(symbol="BAD", sort_order="2"), leg(symbol="LATER", sort_order="3")]
    response = await client.post("/webhook", json=alert(*legs))
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "partial"
    assert [(r["symbol"], r["status"]) for r in body["results"]] == [
        ("GOOD", "success"),
        ("BAD", "failed"),
        ("LATER", "skipped"),
    ]
    assert body["results"][1]["message"] == "BAD is not tradeable here"
    assert body["results"][2]["message"] == "skipped: leg 2 failed"
    assert [o["symbol"] for o in orders_received(config)] == ["GOOD"]
    assert [row["status"] for row in order_log(config)] == ["success", "failed", "skipped"]
    # the refused order's client order id, as the broker was asked under it (what an operator looks up)
    assert body["results"][1]["client_order_id"] == order_log(config)[1]["client_order_id"] == f"{body['alert_id']}-2"


async def test_on_leg_failure_continue_runs_the_rest(make_client: ClientFactory, config: Config) -> None:
    config = attrs.evolve(scripted(config, reject_symbols=["BAD"]), alerts=AlertsConfig(on_leg_failure="continue"))
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="BAD"), leg(symbol="LATER", sort_order="2")))
    body = await response.json()
    assert [(r["symbol"], r["status"]) for r in body["results"]] == [("BAD", "failed"), ("LATER", "success")]
    assert [o["symbol"] for o in orders_received(config)] == ["LATER"]


async def test_all_legs_failing_is_status_failed(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config, reject_symbols=["BAD"])
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(symbol="BAD")))).json()
    assert body["status"] == "failed"


async def test_unsupported_order_type_fails_before_sending(make_client: ClientFactory, config: Config) -> None:
    """A leg outside the broker's declared capabilities is refused with a message; nothing is sent."""
    config = scripted(config, order_types=["MKT"])
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(orderType="LMT", price="100")))).json()
    assert body["results"][0]["status"] == "failed"
    assert body["results"][0]["message"] == "not sent: orderType LMT is not supported by this broker (supported: MKT)"
    assert orders_received(config) == []


async def test_unknown_outcome_is_resolved_by_lookup_not_resent(make_client: ClientFactory, config: Config) -> None:
    """The broker took the order but the answer was lost: found by client order id, placed once."""
    config = scripted(config, lose_answer_symbols=["FLAKY"])
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(symbol="FLAKY")))).json()
    assert body["status"] == "success"
    assert body["results"][0]["order_id"] == "S00001"
    assert len(orders_received(config)) == 1


async def test_stale_alert_is_refused_and_nothing_is_placed(make_client: ClientFactory, config: Config) -> None:
    """meta.timenow older than alerts.max_age_s: 422, status stale, no order, a row in the order log."""
    config = scripted(config)
    client = await make_client(config)
    old = (datetime.now(UTC) - timedelta(seconds=config.alerts.max_age_s + 60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = await client.post("/webhook", json=alert(leg(meta={"interval": "1D", "time": old, "timenow": old})))
    body = await response.json()
    assert response.status == 422
    assert body["status"] == "stale"
    assert body["alert_id"] == response.headers["X-Request-ID"]
    assert body["message"].startswith("alert is stale: meta.timenow is ")
    assert orders_received(config) == []
    assert [row["status"] for row in order_log(config)] == ["stale"]


async def test_a_stale_meta_at_the_root_is_refused_like_a_legs(make_client: ClientFactory, config: Config) -> None:
    """A `meta` at the root of the alert (not in a leg) is honoured: its old `timenow` makes the alert stale
    (422, nothing placed), it is not reported as an unknown key, and its own unknown keys are."""
    config = scripted(config)
    client = await make_client(config)
    old = (datetime.now(UTC) - timedelta(seconds=config.alerts.max_age_s + 60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = await client.post("/webhook", json=alert(leg(), meta={"timenow": old, "intervl": "1D"}))
    body = await response.json()
    assert response.status == 422
    assert body["status"] == "stale"
    assert body["message"].startswith("alert is stale: meta.timenow is ")
    assert body["warnings"] == ["meta.intervl: unknown key, ignored (did you mean interval?)"]
    assert orders_received(config) == []
    fresh = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = await client.post("/webhook", json=alert(leg(symbol="INFY"), meta={"timenow": fresh}))
    body = await response.json()
    assert (response.status, body["status"], body["warnings"]) == (200, "success", [])


@pytest.mark.parametrize("stale", [False, True], ids=["placed", "stale"])
async def test_an_order_log_the_disk_refuses_costs_no_answer(
    make_client: ClientFactory, config: Config, *, stale: bool
) -> None:
    """The CSV cannot be written (a full disk): the alert is still answered as it would be (200 placed, 422
    stale), not 500, and the failure is an `order_log.write_failed` line with the alert's id."""
    config = scripted(config)
    client = await make_client(config)
    old = (datetime.now(UTC) - timedelta(seconds=config.alerts.max_age_s + 60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = alert(leg(meta={"interval": "1D", "time": old, "timenow": old})) if stale else alert(leg())
    with refusing_writes(config.data_path(config.order_log.file)), capture_logs() as logs:
        response = await client.post("/webhook", json=raw)
        body = await response.json()
    assert (response.status, body["status"]) == ((422, "stale") if stale else (200, "success"))
    assert len(orders_received(config)) == (0 if stale else 1)
    failed = [line for line in logs if line["event"] == "order_log.write_failed"]
    assert [line["alert_id"] for line in failed] == [body["alert_id"]]
    assert order_log(config) == []


async def test_alert_without_meta_has_no_age_check(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    raw = alert(leg())
    del raw["order_legs"][0]["meta"]
    response = await client.post("/webhook", json=raw)
    assert response.status == 200


async def test_unknown_keys_come_back_as_warnings(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(triggerprice="5")))).json()
    assert body["status"] == "success"
    assert body["warnings"] == ["order_legs[0].triggerprice: unknown key, ignored (did you mean triggerPrice?)"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"not json", 400, "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1]", 400, "body must be a JSON object (the alert), got a list"),
        (b"3", 400, "body must be a JSON object (the alert), got 3"),
        (json.dumps(alert(secret="wrong")).encode(), 401, "Invalid webhook secret"),
        (json.dumps({"alertType": "single_order"}).encode(), 401, "Invalid webhook secret: the alert has no secret"),
        (json.dumps({**alert(), "secret": 12345}).encode(), 401, "Invalid webhook secret"),
    ],
)
async def test_refusals(make_client: ClientFactory, config: Config, payload: bytes, status: int, message: str) -> None:
    """Each refusal: its status, the guide's message, the alert id in body and header, nothing placed."""
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", data=payload, headers={"Content-Type": "text/plain"})
    body = await response.json()
    assert response.status == status
    assert body == {"status": "error", "message": message, "alert_id": response.headers["X-Request-ID"]}
    assert orders_received(config) == []


async def test_invalid_alert_lists_every_problem(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(quantity="ten", orderType="SL-M", symbol="{{ticker}}")))
    body = await response.json()
    assert response.status == 422
    assert body["message"] == "Payload validation error"
    assert body["errors"] == [
        "order_legs[0].quantity: must be a whole number, got 'ten'",
        "order_legs[0].symbol: unreplaced TradingView placeholder {{ticker}}: TradingView did not fill it in",
    ]


async def test_body_over_the_limit_is_413(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    big = json.dumps(alert(leg(symbol="X" * config.limits.max_body_bytes))).encode()
    response = await client.post("/webhook", data=big)
    assert response.status == 413
    assert (await response.json())["message"].startswith("body too large")


async def test_secret_never_appears_in_responses_or_logs(make_client: ClientFactory, config: Config) -> None:
    """Accepted or refused, the secret is in no answer and no log event."""
    config = scripted(config)
    client = await make_client(config)
    with capture_logs() as events:
        answers = [
            await (await client.post("/webhook", json=alert())).text(),
            await (await client.post("/webhook", json=alert(secret=SECRET + "x"))).text(),
            await (await client.post("/webhook", json=alert(leg(quantity="x")))).text(),
        ]
    assert events
    assert SECRET not in "".join(answers)
    assert SECRET not in repr(events)
    assert SECRET not in Path(config.data_path("webhook_orders.csv")).read_text()


async def test_cancel_order_alert(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    raw = alert({"symbol": "INFY", "transactionType": "S"}, alert_type="cancel_order")
    body = await (await client.post("/webhook", json=raw)).json()
    assert body["status"] == "success"
    assert body["results"][0]["message"] == "cancelled 0 order(s)"


async def test_a_lone_surrogate_as_secret_is_a_wrong_secret(make_client: ClientFactory, config: Config) -> None:
    """A secret that cannot be encoded is refused like any wrong secret: 401, never 500."""
    client = await make_client(scripted(config))
    body = b'{"secret": "\\ud800", "alertType": "single_order", "order_legs": []}'
    response = await client.post("/webhook", data=body)
    assert response.status == 401


LONE = "LONE-SURROGATE"


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (lambda a: a["order_legs"][0].update(symbol=LONE), "order_legs[0].symbol"),
        (lambda a: a.update(id=LONE), "id"),
        (lambda a: a.update({LONE: 1}), "alert: a key"),
        (lambda a: a["order_legs"][0].update({LONE: "x"}), "order_legs[0]: a key"),
        (lambda a: a["order_legs"][0].update(meta={"interval": LONE}), "order_legs[0].meta.interval"),
        (lambda a: a.update(note=[LONE]), "note[0]"),
        (lambda a: a["order_legs"][0].update(exchange=LONE), "order_legs[0].exchange"),
        (lambda a: a.update(alertType=LONE), "alertType"),
    ],
    ids=["symbol", "id", "root key", "leg key", "meta", "unknown value", "exchange", "alertType"],
)
@pytest.mark.parametrize("spelling", [b'"\\ud800"', b'"\xed\xa0\x80"'], ids=["escaped", "utf-8 bytes"])
async def test_text_that_cannot_be_encoded_is_a_422(
    make_client: ClientFactory, config: Config, where: Any, path: str, spelling: bytes
) -> None:
    """A lone surrogate (JSON `"\\ud800"`, or its UTF-8 bytes, which Python's JSON decoder lets through) anywhere
    in an authenticated alert is a 422 naming where, never a 500 or an `unknown` leg: nothing is sent, nothing
    journaled, and the next alert is served."""
    config = scripted(config)
    client = await make_client(config)
    raw = alert(leg())
    where(raw)
    body = json.dumps(raw).encode().replace(f'"{LONE}"'.encode(), spelling)
    response = await client.post("/webhook", data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 422
    assert any(line.startswith(path) and "cannot be encoded" in line for line in answer["errors"]), answer
    assert orders_received(config) == []
    assert await client.app[JOURNAL].get_alert(answer["alert_id"]) is None
    response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert response.status == 200


async def test_admin_token_with_undecodable_bytes_is_refused(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(scripted(config))
    response = await client.get("/alerts/x", headers={"Authorization": "Bearer \udcff\udcfe"})
    assert response.status == 401


async def test_a_leg_the_risk_limits_refuse_keeps_its_client_order_id(
    make_client: ClientFactory, config: Config
) -> None:
    """A leg over `max_qty_per_order`, refused before it is sent: failed with the limit's reason, under its own
    client order id in the answer, the journal and the order log, and nothing reaches the broker."""
    config = attrs.evolve(scripted(config), risk=RiskConfig(max_qty_per_order=5))
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(quantity="10")))).json()
    [result] = body["results"]
    client_id = f"{body['alert_id']}-1"
    assert (result["status"], result["client_order_id"]) == ("failed", client_id)
    assert result["message"].startswith("risk: "), result["message"]
    assert [(row["status"], row["client_order_id"]) for row in order_log(config)] == [("failed", client_id)]
    assert orders_received(config) == []


async def test_a_leg_the_broker_cannot_take_is_refused_under_its_own_ids(
    make_client: ClientFactory, config: Config
) -> None:
    """An EXIT_ALL on a broker without the `positions` capability, after a plain order: refused before sending,
    with its account, leg number and client order id in the answer and the order log row."""
    client = await make_client(scripted(config))
    exit_all = {**leg(sort_order="2"), "manage_position": "EXIT_ALL"}
    exit_all.pop("quantity")
    body = await (await client.post("/webhook", json=alert(leg(symbol="INFY"), exit_all))).json()
    refused = body["results"][1]
    client_id = f"{body['alert_id']}-2"
    assert (refused["account"], refused["leg_number"], refused["status"], refused["client_order_id"]) == (
        "s",
        2,
        "failed",
        client_id,
    )
    assert refused["message"].startswith("not sent: manage_position EXIT_ALL needs the broker capability")
    row = order_log(config)[1]
    assert (row["account"], row["leg_number"], row["client_order_id"]) == ("s", "2", client_id)
    assert [o["symbol"] for o in orders_received(config)] == ["INFY"]


async def test_alert_done_names_each_leg_and_why_a_failed_one_failed(
    make_client: ClientFactory, config: Config
) -> None:
    """The alert's one info line, `alert.done`: the alert's type, status, warnings and times, and every leg: its
    number, account, broker, status, order id and time; the message only for a leg that did not go (a placed
    leg's message is the broker's chatter)."""
    config = attrs.evolve(scripted(config, reject_symbols=["BAD"]), alerts=AlertsConfig(on_leg_failure="continue"))
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        body = await (
            await client.post(
                "/webhook", json=alert(leg(symbol="GOOD"), leg(symbol="BAD", sort_order="2"), comment="unknown key")
            )
        ).json()
    [done] = [e for e in events if e["event"] == "alert.done"]
    assert done["alert_id"] == body["alert_id"]
    assert (done["alert_type"], done["status"]) == ("multi_leg_order", "partial")
    assert done["warnings"] == ["comment: unknown key, ignored"] == body["warnings"]
    for timing in ("latency_ms", "since_arrival_ms"):  # milliseconds to the microsecond
        assert isinstance(done[timing], float), done
        assert done[timing] == round(done[timing], 3)
    legs = done["legs"]
    assert all(isinstance(line.pop("latency_ms"), float) for line in legs), legs
    assert legs == [
        {"leg": 1, "account": "s", "broker": "scripted", "status": "success", "order_id": "S00001"},
        {
            "leg": 2,
            "account": "s",
            "broker": "scripted",
            "status": "failed",
            "order_id": None,
            "message": "BAD is not tradeable here",
        },
    ]


async def test_a_plugin_bug_after_placing_is_resolved_not_lost(make_client: ClientFactory, config: Config) -> None:
    """A plugin that places the order and then answers garbage: the order is found by client order id, the
    alert is answered 200 and finished in the journal, and nothing is placed twice."""
    config = scripted(config, bad_answer_symbols=["ODD"])
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(leg(symbol="ODD")))
    body = await response.json()
    [line] = [e for e in events if e["event"] == "broker.unexpected_error"]  # the bug logged with its traceback
    assert {k: line.get(k) for k in ("log_level", "alert_id", "leg", "account", "exc_info")} == {
        "log_level": "error",
        "alert_id": body["alert_id"],
        "leg": 1,
        "account": "s",
        "exc_info": True,
    }
    [found] = [e for e in events if e["event"] == "leg.resolved_by_lookup"]
    assert {k: found.get(k) for k in ("log_level", "alert_id", "leg", "account", "order_id", "status")} == {
        "log_level": "warning",
        "alert_id": body["alert_id"],
        "leg": 1,
        "account": "s",
        "order_id": "S00001",
        "status": "success",
    }
    assert response.status == 200
    assert body["status"] == "success"
    assert body["results"][0]["order_id"] == "S00001"
    assert body["results"][0]["message"] == (  # the plugin named as the culprit, and how the order was found
        "filled (found by lookup after: the 'scripted' broker plugin raised AttributeError:"
        " 'dict' object has no attribute 'state')"
    )
    assert len(orders_received(config)) == 1
    assert [row["status"] for row in order_log(config)] == ["success"]


async def test_alert_from_the_future_is_refused_as_stale(make_client: ClientFactory, config: Config) -> None:
    """A future meta.timenow has a negative age and passed the age check forever: more than 60 s ahead is
    refused like a stale alert (422, status stale, on record), with a message about the clock."""
    config = scripted(config)
    client = await make_client(config)
    ahead = (datetime.now(UTC) + timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%SZ")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    legs = [leg(meta={"timenow": now}), leg(symbol="INFY", sort_order="2", meta={"timenow": ahead})]
    response = await client.post("/webhook", json=alert(*legs))
    body = await response.json()
    assert response.status == 422
    assert body["status"] == "stale"
    assert body["message"].startswith("alert is stale: meta.timenow is ")
    assert body["message"].endswith(
        " s ahead of this server's clock, the limit is 60 s; check the clock of the server and of the alert's sender"
    )
    assert orders_received(config) == []
    assert [row["status"] for row in order_log(config)] == ["stale", "stale"]


async def test_small_clock_skew_ahead_is_accepted(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    ahead = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = await client.post("/webhook", json=alert(leg(meta={"timenow": ahead})))
    assert response.status == 200


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (alert(leg(meta="string")), ["order_legs[0].meta: must be a JSON object, got 'string'"]),
        (alert(leg(meta=[])), ["order_legs[0].meta: must be a JSON object, got a list"]),
        (alert(*[leg()] * 51), ["order_legs: at most 50 legs in one alert, got 51"]),
        (alert(leg(quantity="1e3000000")), ["order_legs[0].quantity: must be a whole number, got '1e3000000'"]),
        (alert(leg(symbol=1e20)), ["order_legs[0].symbol: must be a string, got 1e+20"]),
    ],
)
async def test_refused_alerts_name_the_field(
    make_client: ClientFactory, config: Config, raw: dict[str, Any], errors: list[str]
) -> None:
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=raw)
    body = await response.json()
    assert response.status == 422
    assert body["errors"] == errors
    assert orders_received(config) == []


async def test_many_problems_answer_at_most_51_lines(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(*[{"meta": {}}] * 50))
    body = await response.json()
    assert response.status == 422
    assert len(body["errors"]) == 51
    assert body["errors"][-1] == "... and 300 more problem(s) not shown: fix these first"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            json.dumps(alert())
            .replace('"transactionType": "B"', '"transactionType": "B", "transactionType": "S"')
            .encode(),
            "body has the key 'transactionType' twice in one object: send each key once",
        ),
        (b"[" * 3000, "body is not JSON: it is nested too deeply"),
    ],
)
async def test_duplicate_keys_and_deep_nesting_are_400(
    make_client: ClientFactory, config: Config, payload: bytes, message: str
) -> None:
    """A repeated key silently won (B, then S: a sell); deep nesting was a RecursionError and a 500."""
    config = scripted(config)
    client = await make_client(config)
    response = await client.post("/webhook", data=payload)
    body = await response.json()
    assert response.status == 400
    assert body["message"] == message
    assert orders_received(config) == []
