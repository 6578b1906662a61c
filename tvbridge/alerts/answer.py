"""Every webhook answer built in one place, from the alert's plan and its results (issue 22).

`alerts/flow.py` calls these and `deadline.py` sends them; the executor, crash recovery and the closed-market
scheduler build their bodies here too, so a leg's result reads the same wherever it was made. Pure: no I/O.

* `response_body`: the guide's success body, extended (`alert_id`, per-leg `account`, `warnings`): 200;
* `stale_body`: a stale alert, every leg `stale`: 422;
* `combined_body`: a plan with accounts that did not send now (queued, refused, AMO) beside those that did:
  200, or 202 `queued` when nothing ran;
* `deferred_body`: journaled but not finished within `server.response_deadline_s`: 202.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tvbridge.models import AlertStatus, LegStatus, summarize
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tvbridge.alerts.plan import Decision
    from tvbridge.models import LegResult


def response_body(
    alert_id: str, alert_type: str, status: str, results: Sequence[LegResult], warnings: Sequence[str]
) -> dict[str, Any]:
    """The guide's success body, extended with `alert_id`, per-leg `account` and `warnings`."""
    return {
        "status": status,
        "message": f"Processed {len(results)} order leg(s)",
        "alertType": alert_type,
        "alert_id": alert_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "results": [
            {
                "leg_number": r.leg_number,
                "symbol": r.symbol,
                "transaction": r.transaction,
                "quantity": r.quantity,
                "status": r.status.value,
                "message": r.message,
                "order_id": r.order_id,
                "account": r.account,
                "broker": r.broker,
                "client_order_id": r.client_order_id,
                "order_state": r.order_state,
                **({"bracket": [dict(part) for part in r.bracket]} if r.bracket else {}),
                **_target_fields(r),
            }
            for r in results
        ],
        "warnings": list(warnings),
    }


def _target_fields(result: LegResult) -> dict[str, Any]:
    """`contract`, `position_before` and `position_target`, on the legs that have them (strategy alerts)."""
    fields = {
        "contract": result.contract,
        "position_before": result.position_before,
        "position_target": result.position_target,
    }
    return {key: value for key, value in fields.items() if value is not None}


def stale_body(
    alert_id: str, alert_type: str, results: Sequence[LegResult], warnings: Sequence[str], message: str
) -> dict[str, Any]:
    """A stale alert (422): every leg `stale`, the reason as the message."""
    body = response_body(alert_id, alert_type, AlertStatus.STALE.value, results, warnings)
    body["message"] = message
    return body


def combined_body(
    alert_id: str,
    alert_type: str,
    results: Sequence[LegResult],
    queued: Sequence[Decision],
    warnings: Sequence[str],
) -> dict[str, Any]:
    """Accounts that sent now beside accounts queued or refused: the status of what ran (`partial` rather than
    `failed` while a queued account is still coming), `scheduled_at` and `queued` per account."""
    done = [r for r in results if r.status is not LegStatus.QUEUED]
    status = summarize(done).value if done else AlertStatus.QUEUED.value
    if queued and status == AlertStatus.FAILED.value:  # refused here, still coming there: not a failed alert
        status = AlertStatus.PARTIAL.value
    body = response_body(alert_id, alert_type, status, results, warnings)
    if queued:
        first = min(d.at for d in queued if d.at is not None)
        body["scheduled_at"] = first.astimezone(EXCHANGE_TZ).isoformat()
        body["queued"] = [
            {"account": d.account, "scheduled_at": d.at.astimezone(EXCHANGE_TZ).isoformat(), "reason": d.reason}
            for d in queued
            if d.at is not None
        ]
        if not done:
            body["message"] = f"Queued {len(results)} order leg(s): {queued[0].reason}"
    return body


def deferred_body(alert_id: str, alert_type: str, warnings: Sequence[str]) -> dict[str, Any]:
    """Journaled, still running after the deadline (202): the id to ask `GET /alerts/<id>` about."""
    return {
        "status": AlertStatus.ACCEPTED.value,
        "message": "accepted and journaled; still running: GET /alerts/{alert_id} for the outcome",
        "alertType": alert_type,
        "alert_id": alert_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "results": [],
        "warnings": list(warnings),
    }
