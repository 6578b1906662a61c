"""docs/logging.md is the contract a collector's parser is written against: it must list every event the code logs.

The code is read with `ast`: every `log.<level>("noun.verb", field=...)` call (also a conditional name such as
`"leg.done" if ok else "leg.failed"`) is an event. Each must be in the doc's table, at a level the doc names,
with every field it passes documented; and the doc lists no event that the code no longer logs.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("tvbridge", "brokers", "plugins")
DOC = REPO / "docs" / "logging.md"
LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error", "exception": "error"}
LEVELS |= {"critical": "critical", "msg": "info"}
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
LOGGER_NAMES = re.compile(r"(^|\.|_)(log|logger)$")


@attrs.frozen
class Call:
    event: str
    level: str
    fields: frozenset[str]
    where: str


def _names(node: ast.expr) -> list[str] | None:
    """The event names an argument can take: a string, or either side of a conditional; None if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _names(node.body), _names(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def _fields(call: ast.Call) -> set[str]:
    found = {kw.arg for kw in call.keywords if kw.arg is not None}
    for kw in call.keywords:
        if kw.arg is None:  # **{...}: the literal keys, wherever they are inside
            for node in ast.walk(kw.value):
                if isinstance(node, ast.Dict):
                    found |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return found


def logged_calls() -> tuple[list[Call], list[str]]:
    """Every log call in the source, and the places whose event name is not a literal (those are errors)."""
    calls: list[Call] = []
    dynamic: list[str] = []
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            if ".venv" in path.parts or "tests" in path.relative_to(REPO).parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr not in LEVELS or not LOGGER_NAMES.search(ast.unparse(node.func.value)):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                names = _names(node.args[0]) if node.args else None
                if names is None:
                    dynamic.append(where)
                    continue
                level = LEVELS[node.func.attr]
                calls.extend(Call(name, level, frozenset(_fields(node)), where) for name in names)
    return calls, dynamic


@attrs.frozen
class Documented:
    levels: frozenset[str]
    fields: frozenset[str]


def documented() -> tuple[dict[str, Documented], frozenset[str]]:
    """The doc's event table (`| `event` | level(s) | `field`, ... | meaning |`) and its common fields."""
    text = DOC.read_text(encoding="utf-8")
    common_section = text.split("## Fields on every line", 1)[1].split("\n## ", 1)[0]
    common = frozenset(re.findall(r"^\| `([a-z_]+)` \|", common_section, flags=re.MULTILINE))
    events: dict[str, Documented] = {}
    for row in re.findall(r"^\| `([a-z0-9_.]+)` \|([^|]*)\|([^|]*)\|", text, flags=re.MULTILINE):
        name, levels, fields = row
        if "." not in name:
            continue
        events[name] = Documented(
            levels=frozenset(level.strip() for level in levels.split(",")),
            fields=frozenset(re.findall(r"`([a-z_]+)`", fields)),
        )
    return events, common


def test_every_event_name_is_a_literal_noun_verb() -> None:
    """A collector can only rely on names it can find: each log call names its event with a literal `noun.verb`."""
    calls, dynamic = logged_calls()
    assert not dynamic, f"log calls whose event name is not a string literal: {dynamic}"
    bad = sorted({f"{c.event} ({c.where})" for c in calls if not EVENT_NAME.match(c.event)})
    assert not bad, f"event names that are not noun.verb: {bad}"
    assert len({c.event for c in calls}) >= 20  # the scan found the code's events, not nothing


def test_every_logged_event_is_documented_with_its_level_and_fields() -> None:
    """An event the code logs but docs/logging.md does not list (or lists at another level, or without one of
    its fields) fails, naming the place in the code."""
    calls, _ = logged_calls()
    events, common = documented()
    problems: list[str] = []
    for call in calls:
        doc = events.get(call.event)
        if doc is None:
            problems.append(f"{call.where}: event {call.event!r} is not in docs/logging.md")
            continue
        if call.level not in doc.levels:
            problems.append(f"{call.where}: {call.event} is logged at {call.level}, the doc says {sorted(doc.levels)}")
        missing = call.fields - doc.fields - common
        if missing:
            problems.append(f"{call.where}: {call.event} fields {sorted(missing)} are not documented")
    assert not problems, "\n".join(problems)


def test_the_doc_lists_no_event_the_code_never_logs() -> None:
    """A stale row misleads whoever writes an alert rule for it: every documented event is still logged."""
    calls, _ = logged_calls()
    events, _ = documented()
    logged: dict[str, set[str]] = defaultdict(set)
    for call in calls:
        logged[call.event].add(call.where)
    stale = sorted(set(events) - set(logged))
    assert not stale, f"documented but never logged: {stale}"
