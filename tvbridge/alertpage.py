"""`GET /alerts/<id>` for a person: the same record as the JSON, as a readable page, when the browser asks for HTML.

API clients (`Accept: application/json`, `*/*`, or none) keep the JSON and the Bearer token, unchanged. A browser
(`Accept: text/html` preferred) gets this page, and, like `/status`, may log in with HTTP Basic (the admin token as
password), so the status page's links open with the login the browser already has. Refused alerts
(`tvbridge/refusal_journal.py`) are shown too: what was refused, and why, in the words the sender was answered with.
"""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web

from tvbridge.status import CSS, show_time


def prefers_html(accept: str) -> bool:
    """Whether `Accept` ranks text/html above application/json (a browser navigating, not a script)."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranks[kind.lower()] = max(quality, ranks.get(kind.lower(), 0.0))
    return ranks.get("text/html", 0.0) > max(ranks.get("application/json", 0.0), 0.0)


def _row(*values: object) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(v if v is not None else ''))}</td>" for v in values) + "</tr>"


def render_alert(record: dict[str, Any]) -> str:
    alert_id = html.escape(str(record["alert_id"]))
    status = str(record["status"])
    outcome = f"refused {record['http_status']}" if status == "refused" else status
    reason = record.get("reason") or ((record.get("response") or {}).get("message") if status != "success" else "")
    legs = "".join(
        _row(
            leg["account"],
            leg["leg_number"],
            (leg.get("result") or {}).get("transaction", ""),
            (leg.get("result") or {}).get("quantity", ""),
            (leg.get("result") or {}).get("symbol", ""),
            leg["state"],
            leg.get("order_id"),
            leg.get("order_state"),
            leg.get("filled_quantity"),
            leg.get("average_price"),
            leg.get("order_message") or leg.get("message"),
        )
        for leg in record.get("legs", [])
    )
    errors = "".join(f"<li>{html.escape(str(e))}</li>" for e in record.get("errors") or [])
    payload = html.escape(json.dumps(record.get("payload"), indent=2, default=str))
    response = html.escape(json.dumps(record.get("response"), indent=2, default=str))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>alert {alert_id}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light'
        f' dark"><style>{CSS}</style></head><body>'
        f'<p><a href="/status">← status</a></p><h1>Alert <code>{alert_id}</code></h1>'
        f'<div class="panel"><p>Outcome: <strong id="outcome">{html.escape(outcome)}</strong>'
        f" · received {show_time(str(record['received_at']))} IST"
        f" · type {html.escape(str(record.get('alert_type') or ''))}</p>"
        + (f'<p id="reason">{html.escape(str(reason))}</p>' if reason else "")
        + (f'<ul id="errors">{errors}</ul>' if errors else "")
        + "</div>"
        + (
            '<h2>Legs</h2><div class="wrap"><table><thead><tr><th>account</th><th>leg</th><th>side</th><th>qty</th>'
            "<th>symbol</th><th>state</th><th>order id</th><th>order state</th><th>filled</th><th>avg price</th>"
            f"<th>message</th></tr></thead><tbody>{legs}</tbody></table></div>"
            if legs
            else ""
        )
        + f"<h2>What was sent</h2><pre>{payload}</pre>"
        + (f"<details><summary>The answer given</summary><pre>{response}</pre></details>" if response != "null" else "")
        + "</body></html>"
    )


def alert_page(record: dict[str, Any]) -> web.Response:
    return web.Response(
        text=render_alert(record),
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Referrer-Policy": "no-referrer",
        },
    )
